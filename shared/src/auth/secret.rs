//! The token signing key from AWS Secrets Manager (`TOKEN_SIGNING_KEY_SECRET`: the secret's ARN
//! or name), read once per cold start, so the key never sits in the functions' configuration.

use crate::config::{AuthMode, Config, ConfigError, MIN_SIGNING_KEY_BYTES};

/// A Secrets Manager secret that cannot be read or used (its id, never its value, in the message).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading {secret_id} from Secrets Manager failed")]
    Read {
        secret_id: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0}")]
    Unusable(String),
}

pub async fn client_from_env() -> aws_sdk_secretsmanager::Client {
    let shared = crate::aws::shared_config().await;
    aws_sdk_secretsmanager::Client::new(&shared)
}

/// A secret's string value.
pub async fn fetch_secret_string(
    client: &aws_sdk_secretsmanager::Client,
    secret_id: &str,
) -> Result<String, SecretError> {
    let out = client
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|e| SecretError::Read {
            secret_id: secret_id.to_string(),
            source: Box::new(e),
        })?;
    out.secret_string()
        .map(str::to_string)
        .ok_or_else(|| SecretError::Unusable(format!("secret {secret_id} has no string value")))
}

/// The secret's string value as the signing key (at least 32 bytes).
pub async fn fetch_signing_key(
    client: &aws_sdk_secretsmanager::Client,
    secret_id: &str,
) -> Result<Vec<u8>, SecretError> {
    let key = fetch_secret_string(client, secret_id)
        .await?
        .trim()
        .as_bytes()
        .to_vec();
    if key.len() < MIN_SIGNING_KEY_BYTES {
        return Err(SecretError::Unusable(format!(
            "secret {secret_id} is shorter than {MIN_SIGNING_KEY_BYTES} bytes"
        )));
    }
    Ok(key)
}

/// Fills in the signing key of a SMART configuration that names a secret instead of a key.
/// With neither, authorization cannot work: an error names both variables.
pub async fn resolve_signing_key(
    config: &mut Config,
    client: Option<&aws_sdk_secretsmanager::Client>,
) -> Result<(), ConfigError> {
    if config.auth != (AuthMode::Smart { signing_key: None }) {
        return Ok(());
    }
    let Some(secret) = config.token_signing_key_secret.clone() else {
        return Err(ConfigError::Missing {
            name: "TOKEN_SIGNING_KEY (or TOKEN_SIGNING_KEY_SECRET)",
        });
    };
    let own;
    let client = match client {
        Some(c) => c,
        None => {
            own = client_from_env().await;
            &own
        }
    };
    let key = fetch_signing_key(client, &secret)
        .await
        .map_err(|e| ConfigError::Invalid {
            name: "TOKEN_SIGNING_KEY_SECRET",
            value: secret.clone(),
            reason: crate::error_chain(&e),
        })?;
    config.auth = AuthMode::Smart {
        signing_key: Some(key),
    };
    Ok(())
}
