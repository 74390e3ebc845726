//! The token signing key read from Secrets Manager at cold start (TOKEN_SIGNING_KEY_SECRET),
//! against the moto server scripts/test.sh starts (it speaks the Secrets Manager API too).

use integration_tests::{aws_config, new_secret};
use shared::auth::secret::resolve_signing_key;
use shared::config::AuthMode;
use shared::Config;

async fn secrets() -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&aws_config().await)
}

fn config(pairs: &[(&str, &str)]) -> Config {
    integration_tests::lookup("postgres://unused", &[], pairs)
}

#[tokio::test]
async fn the_signing_key_comes_from_the_named_secret() {
    let client = secrets().await;
    let key = "k".repeat(40);
    let arn = new_secret(&client, &key).await;
    let mut c = config(&[("TOKEN_SIGNING_KEY_SECRET", &arn)]);
    resolve_signing_key(&mut c, Some(&client))
        .await
        .expect("resolved");
    assert_eq!(
        c.auth,
        AuthMode::Smart {
            signing_key: Some(key.into_bytes())
        }
    );
}

#[tokio::test]
async fn a_missing_short_or_unknown_secret_stops_the_function_from_starting() {
    let client = secrets().await;
    // Neither a key nor a secret: the error names both variables.
    let mut c = config(&[]);
    let e = resolve_signing_key(&mut c, Some(&client))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("TOKEN_SIGNING_KEY_SECRET"), "{e}");

    let short = new_secret(&client, "too-short").await;
    let mut c = config(&[("TOKEN_SIGNING_KEY_SECRET", &short)]);
    let e = resolve_signing_key(&mut c, Some(&client))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("shorter than 32 bytes"), "{e}");
    assert!(
        !e.to_string().contains("too-short"),
        "the value is never printed: {e}"
    );

    let mut c = config(&[("TOKEN_SIGNING_KEY_SECRET", "no-such-secret")]);
    assert!(resolve_signing_key(&mut c, Some(&client)).await.is_err());

    // A key given directly wins, and AUTH=off needs none.
    let mut c = config(&[
        ("TOKEN_SIGNING_KEY", &"d".repeat(32)),
        ("TOKEN_SIGNING_KEY_SECRET", "no-such-secret"),
    ]);
    resolve_signing_key(&mut c, Some(&client))
        .await
        .expect("direct key");
    let mut c = config(&[("AUTH", "off")]);
    resolve_signing_key(&mut c, Some(&client))
        .await
        .expect("auth off");
}
