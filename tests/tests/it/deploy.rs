//! The deploy-time parts of the stack: the database credentials read from Secrets Manager at
//! cold start (DATABASE_SECRET, against moto), and the migrations custom resource answering
//! CloudFormation's requests on a real HTTP response URL with a real database.

use std::sync::{Arc, Mutex};

use integration_tests::{aws_config, new_secret, TestDb};
use serde_json::{json, Value};
use shared::Config;

async fn secrets() -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&aws_config().await)
}

fn config(url: &str, secret: Option<&str>) -> Config {
    let secret: Vec<(&str, &str)> = secret.map(|s| ("DATABASE_SECRET", s)).into_iter().collect();
    integration_tests::lookup(url, &[], &secret)
}

#[tokio::test]
async fn database_credentials_come_from_the_secret_and_connect() {
    let db = TestDb::new().await;
    let client = secrets().await;
    // The JSON RDS keeps for a managed password (host and port are ignored: the URL says where).
    let arn = new_secret(
        &client,
        r#"{"username":"postgres","password":"p@ss:w/rd","engine":"postgres","host":"elsewhere","port":1}"#,
    )
    .await;
    // The stack's DATABASE_URL: no user, no password.
    let address = db.url.replacen("postgres://postgres@", "postgres://", 1);
    let mut c = config(&address, Some(&arn));
    shared::db::credentials::resolve(&mut c, Some(&client))
        .await
        .expect("resolve");
    assert!(
        c.database_url
            .starts_with("postgres://postgres:p%40ss%3Aw%2Frd@127.0.0.1"),
        "{}",
        c.database_url
    );
    // Its Debug (and so any log of it) shows no password.
    assert!(!format!("{c:?}").contains("p%40ss"));
    let pool = shared::db::pool(&c.database_url, 1).expect("pool");
    let user: String = pool
        .get()
        .await
        .expect("connect with the secret's user")
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(user, "postgres");

    // A secret that is not the credentials JSON refuses the cold start, naming the variable.
    let bad = new_secret(&client, "just-a-password").await;
    let err = shared::db::credentials::resolve(&mut config(&address, Some(&bad)), Some(&client))
        .await
        .expect_err("not credentials");
    assert!(err.to_string().contains("DATABASE_SECRET"), "{err}");
    assert!(!err.to_string().contains("just-a-password"), "{err}");
}

/// A response URL: records each PUT body (CloudFormation's presigned S3 URL in AWS).
async fn response_url() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/cfn-response",
        axum::routing::put(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    // Signed without a content type: none may be sent.
                    let content_type = headers
                        .get("content-type")
                        .map(|v| v.to_str().unwrap_or("?").to_string())
                        .unwrap_or_default();
                    assert_eq!(content_type, "");
                    sink.lock()
                        .expect("lock")
                        .push(serde_json::from_slice(&body).expect("json"));
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/cfn-response"), received)
}

fn request(kind: &str, url: &str) -> Value {
    json!({
        "RequestType": kind,
        "ResponseURL": url,
        "StackId": "arn:aws:cloudformation:eu-west-1:123456789012:stack/fhir/1",
        "RequestId": format!("req-{kind}"),
        "ResourceType": "Custom::DatabaseMigrations",
        "LogicalResourceId": "DatabaseMigrations",
        "ResourceProperties": {"ServiceToken": "arn:…", "SchemaVersion": "x"}
    })
}

#[tokio::test]
async fn the_migrations_resource_migrates_on_create_and_update_and_fails_the_deploy_on_error() {
    let db = TestDb::empty().await;
    let (url, received) = response_url().await;
    let all: Vec<&str> = shared::db::MIGRATIONS.iter().map(|(n, _)| *n).collect();

    let sent =
        shared::migrate_resource::handle_with(request("Create", &url), Ok(config(&db.url, None)))
            .await
            .expect("create");
    assert_eq!(sent["Status"], "SUCCESS", "{sent}");
    assert_eq!(sent["Data"]["Applied"], all.join(","));
    assert_eq!(sent["PhysicalResourceId"], "database-migrations");
    assert_eq!(sent["RequestId"], "req-Create");
    assert_eq!(sent["LogicalResourceId"], "DatabaseMigrations");
    assert!(shared::db::pending_migrations(&db.pool)
        .await
        .expect("pending")
        .is_empty());

    // An update with nothing new applies nothing and keeps the physical id.
    let mut update = request("Update", &url);
    update["PhysicalResourceId"] = json!("database-migrations");
    let sent = shared::migrate_resource::handle_with(update, Ok(config(&db.url, None)))
        .await
        .expect("update");
    assert_eq!(sent["Status"], "SUCCESS");
    assert_eq!(sent["Data"]["Applied"], "");

    // A database that cannot be reached fails the deploy (CloudFormation rolls it back).
    let sent = shared::migrate_resource::handle_with(
        request("Update", &url),
        Ok(config("postgres://postgres@127.0.0.1:1/none", None)),
    )
    .await
    .expect("update");
    assert_eq!(sent["Status"], "FAILED");
    assert!(sent["Reason"]
        .as_str()
        .expect("reason")
        .starts_with("migrations failed"));

    // Deleting the stack leaves the database alone, even without a configuration.
    let sent = shared::migrate_resource::handle_with(
        request("Delete", &url),
        Err(shared::config::ConfigError::Missing {
            name: "DATABASE_URL",
        }),
    )
    .await
    .expect("delete");
    assert_eq!(sent["Status"], "SUCCESS");

    // CloudFormation received each response, as sent.
    let got = received.lock().expect("lock").clone();
    assert_eq!(got.len(), 4);
    assert_eq!(
        got.iter()
            .map(|r| r["Status"].as_str().unwrap_or(""))
            .collect::<Vec<_>>(),
        ["SUCCESS", "SUCCESS", "FAILED", "SUCCESS"]
    );
}
