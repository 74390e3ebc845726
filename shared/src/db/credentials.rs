//! The database user name and password from AWS Secrets Manager (`DATABASE_SECRET`: the secret's
//! ARN or name), read once per cold start like the token signing key, so that no password sits in
//! a function's configuration. DATABASE_URL then names only the user-less or password-less
//! address (`postgres://host:5432/fhir?sslmode=require`); the secret is the JSON Amazon RDS keeps
//! for a managed master password or a rotated user (`{"username": …, "password": …}`; other
//! members such as `host` are ignored: the URL says where to connect, for example an RDS Proxy).

use serde::Deserialize;

use crate::config::{Config, ConfigError};

/// A database secret or URL the credentials cannot be put into.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CredentialsError(pub String);

#[derive(Deserialize)]
struct DbSecret {
    username: String,
    password: String,
}

/// `url` with its user name and password replaced (percent-encoded as URLs require).
pub fn with_credentials(
    url: &str,
    username: &str,
    password: &str,
) -> Result<String, CredentialsError> {
    let mut parsed =
        url::Url::parse(url).map_err(|e| CredentialsError(format!("DATABASE_URL: {e}")))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") || !parsed.has_host() {
        return Err(CredentialsError(
            "DATABASE_URL must be a postgres://host/… URL to take credentials from a secret".into(),
        ));
    }
    parsed
        .set_username(username)
        .and_then(|()| parsed.set_password(Some(password)))
        .map_err(|()| CredentialsError("DATABASE_URL cannot hold credentials".to_string()))?;
    Ok(parsed.to_string())
}

/// The user name and password in a secret's JSON string.
pub fn parse_secret(text: &str) -> Result<(String, String), CredentialsError> {
    let s: DbSecret = serde_json::from_str(text).map_err(|e| {
        CredentialsError(format!("not a JSON object with username and password: {e}"))
    })?;
    if s.username.is_empty() || s.password.is_empty() {
        return Err(CredentialsError(
            "username and password must not be empty".into(),
        ));
    }
    Ok((s.username, s.password))
}

/// Puts the credentials of DATABASE_SECRET, when set, into the configuration's database URL
/// (`client`: a Secrets Manager client; None: one from the environment).
pub async fn resolve(
    config: &mut Config,
    client: Option<&aws_sdk_secretsmanager::Client>,
) -> Result<(), ConfigError> {
    let Some(secret) = config.database_secret.clone() else {
        return Ok(());
    };
    let invalid = |reason: String| ConfigError::Invalid {
        name: "DATABASE_SECRET",
        value: secret.clone(),
        reason,
    };
    let own;
    let client = match client {
        Some(c) => c,
        None => {
            own = crate::auth::secret::client_from_env().await;
            &own
        }
    };
    let text = crate::auth::secret::fetch_secret_string(client, &secret)
        .await
        .map_err(|e| invalid(crate::error_chain(&e)))?;
    let (username, password) = parse_secret(&text).map_err(|e| invalid(e.0))?;
    config.database_url =
        with_credentials(&config.database_url, &username, &password).map_err(|e| invalid(e.0))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_into_the_url_encoded() {
        assert_eq!(
            with_credentials(
                "postgres://db.example:5432/fhir?sslmode=require",
                "exporter",
                "p@ss:w/rd"
            )
            .unwrap(),
            "postgres://exporter:p%40ss%3Aw%2Frd@db.example:5432/fhir?sslmode=require"
        );
        // A user in the URL is replaced by the secret's.
        assert_eq!(
            with_credentials("postgresql://old@h/db", "u", "p").unwrap(),
            "postgresql://u:p@h/db"
        );
        assert!(with_credentials("host=h dbname=db", "u", "p").is_err());
    }

    #[test]
    fn the_secret_is_the_json_rds_keeps() {
        let rds = r#"{"username":"postgres","password":"s3cr3t","engine":"postgres","host":"x","port":5432}"#;
        assert_eq!(
            parse_secret(rds).unwrap(),
            ("postgres".into(), "s3cr3t".into())
        );
        assert!(parse_secret(r#"{"username":"u"}"#).is_err());
        assert!(parse_secret("s3cr3t").is_err());
    }
}
