//! SMART Backend Services authorization: the token endpoint (`token`), client JWKS (`jwks`),
//! scopes (`scopes`), and the bearer tokens every kick-off, status and file request carries.
//!
//! Access tokens are short-lived JWTs (HS256) signed with the server key from configuration
//! (`TOKEN_SIGNING_KEY`; a Secrets Manager secret in AWS): issuer and audience are the FHIR base
//! URL, subject the client id, `scope` the granted scopes.

pub mod jwks;
pub mod keys;
pub mod scopes;
pub mod secret;
pub mod token;

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthMode, Config};
use crate::db::{DbError, Pool};
use jwks::JwksError;
pub use scopes::TypeSet;

/// The token endpoint, below the FHIR base.
pub const TOKEN_PATH: &str = "/auth/token";
/// Longest bearer token accepted (ours are a few hundred bytes).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a request is not let in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No Authorization header (401 with a bare challenge).
    #[error(
        "a bearer token is required (SMART Backend Services; see .well-known/smart-configuration)"
    )]
    Missing,
    /// A token that is not one of ours, expired, for another server, or of a removed client
    /// (401 `invalid_token`).
    #[error("{0}")]
    InvalidToken(String),
    /// Authorization is on without a key: nobody is let in (500).
    #[error("authorization is on but no TOKEN_SIGNING_KEY is configured")]
    NoSigningKey,
    #[error(transparent)]
    Db(#[from] DbError),
}

#[derive(Debug, Serialize, Deserialize)]
struct AccessClaims {
    iss: String,
    sub: String,
    aud: String,
    exp: i64,
    iat: i64,
    jti: String,
    scope: String,
}

/// Who a request comes from, and what it may export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub client_id: String,
    pub types: TypeSet,
}

/// Signs an access token for `client_id` with the granted `scope`, valid `ttl` at `base`.
pub fn issue_access_token(
    key: &[u8],
    base: &str,
    client_id: &str,
    scope: &str,
    ttl: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = chrono::Utc::now().timestamp();
    let claims = AccessClaims {
        iss: base.to_string(),
        sub: client_id.to_string(),
        aud: base.to_string(),
        exp: now + ttl.as_secs() as i64,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        scope: scope.to_string(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key),
    )
}

/// Checks an access token: our signature (HS256 only), not expired, issued for `base`.
pub fn verify_access_token(key: &[u8], base: &str, token: &str) -> Result<Principal, AuthError> {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = 5;
    v.set_audience(&[base]);
    v.set_issuer(&[base]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<AccessClaims>(token, &DecodingKey::from_secret(key), &v)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                "the access token has expired".to_string()
            }
            jsonwebtoken::errors::ErrorKind::InvalidAudience
            | jsonwebtoken::errors::ErrorKind::InvalidIssuer => {
                "the access token was issued for another server".to_string()
            }
            _ => "the access token is not valid".to_string(),
        })
        .map_err(AuthError::InvalidToken)?;
    Ok(Principal {
        client_id: data.claims.sub,
        types: scopes::types_of(&data.claims.scope),
    })
}

/// The principal of the access token in `authorization` (the header's value) when
/// authorization is on (None when it is off): our signature, not expired, issued for `base`.
/// A request is let in only once [`check_registered`] also passes.
pub fn verify(
    config: &Config,
    authorization: Option<&str>,
    base: &str,
) -> Result<Option<Principal>, AuthError> {
    let key = match &config.auth {
        AuthMode::Off => return Ok(None),
        AuthMode::Smart {
            signing_key: Some(key),
        } => key,
        // Fail closed: a Smart configuration without a key never lets anyone in.
        AuthMode::Smart { signing_key: None } => return Err(AuthError::NoSigningKey),
    };
    let token = bearer(authorization.ok_or(AuthError::Missing)?).ok_or_else(|| {
        AuthError::InvalidToken("the Authorization header must be `Bearer <access token>`".into())
    })?;
    verify_access_token(key, base, token).map(Some)
}

/// Refuses a verified principal whose client is no longer registered: a removed client's
/// tokens stop working at once, not when they expire.
pub async fn check_registered(pool: &Pool, principal: &Principal) -> Result<(), AuthError> {
    if crate::db::clients::get_client(pool, &principal.client_id)
        .await?
        .is_none()
    {
        return Err(AuthError::InvalidToken(
            "the client of this access token is no longer registered".into(),
        ));
    }
    Ok(())
}

/// The token of an `Authorization: Bearer <token>` value (None: another scheme, empty, or longer
/// than any of ours).
pub fn bearer(authorization: &str) -> Option<&str> {
    authorization
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_BYTES)
}

/// 32 random bytes, hex-encoded, for a process that signs and checks its own tokens.
pub fn random_key() -> Vec<u8> {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{a}{b}").into_bytes()
}

/// Checks a JWKS to register: a JWK Set of public RSA or P-384 EC keys (no private parts).
pub fn check_public_jwks(value: &serde_json::Value) -> Result<(), JwksError> {
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(value.clone())
        .map_err(|e| JwksError(format!("not a JWK Set: {e}")))?;
    if set.keys.is_empty() {
        return Err(JwksError("the JWK Set has no keys".into()));
    }
    for (i, k) in value["keys"].as_array().into_iter().flatten().enumerate() {
        if ["d", "p", "q", "dp", "dq", "qi"]
            .iter()
            .any(|f| k.get(f).is_some())
        {
            return Err(JwksError(format!(
                "key {i} holds private key material: register the public keys only"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn access_tokens_round_trip_and_are_bound_to_key_audience_and_time() {
        let t = issue_access_token(
            KEY,
            "http://h/fhir",
            "c1",
            "system/Patient.read",
            Duration::from_secs(60),
        )
        .unwrap();
        let p = verify_access_token(KEY, "http://h/fhir", &t).unwrap();
        assert_eq!(p.client_id, "c1");
        assert!(p.types.allows("Patient") && !p.types.allows("Observation"));
        assert!(verify_access_token(KEY, "http://other/fhir", &t)
            .unwrap_err()
            .to_string()
            .contains("another server"));
        assert!(
            verify_access_token(b"another key of thirty-two bytes!", "http://h/fhir", &t).is_err()
        );
        // An expired token (issued 10 minutes ago for 1 minute).
        let claims = AccessClaims {
            iss: "http://h/fhir".into(),
            sub: "c1".into(),
            aud: "http://h/fhir".into(),
            exp: chrono::Utc::now().timestamp() - 540,
            iat: chrono::Utc::now().timestamp() - 600,
            jti: "x".into(),
            scope: "system/*.read".into(),
        };
        let old = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(KEY),
        )
        .unwrap();
        assert!(verify_access_token(KEY, "http://h/fhir", &old)
            .unwrap_err()
            .to_string()
            .contains("expired"));
    }

    #[test]
    fn unsigned_tokens_are_refused() {
        // alg "none": header {"alg":"none","typ":"JWT"}, no signature.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJjMSIsImF1ZCI6Imh0dHA6Ly9oL2ZoaXIiLCJpc3MiOiJodHRwOi8vaC9maGlyIiwiZXhwIjo0MTAyNDQ0ODAwLCJzY29wZSI6InN5c3RlbS8qLnJlYWQifQ.";
        assert!(verify_access_token(KEY, "http://h/fhir", none).is_err());
    }
}
