//! `POST [base]/auth/token` (SMART Backend Services: `client_credentials` with a
//! `private_key_jwt` client assertion, RS384 or ES384) and `GET .well-known/smart-configuration`
//! (at the base and at the server root).
//!
//! The assertion must have `iss` = `sub` = a registered client id, `aud` = this token URL, `exp`
//! at most five minutes ahead, and a `jti` never seen before (kept until `exp`); a `jku` header,
//! when present, must be the client's registered JWKS URL. Errors are OAuth errors
//! (`invalid_request`, `invalid_client`, `invalid_grant`, `invalid_scope`,
//! `unsupported_grant_type`) as JSON, never a stack trace; until the signature verifies, one
//! `invalid_client` answer for every reason ([`UNVERIFIED_CLIENT`]), the reason in the log.

use base64::Engine;
use http::StatusCode;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;

use super::{issue_access_token, jwks, scopes, TOKEN_PATH};
use crate::config::{AuthMode, Config};
use crate::db::{clients, DbError, Pool};

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest accepted assertion lifetime (`exp` - now), seconds.
const MAX_ASSERTION_LIFETIME: i64 = 300;
/// Clock skew tolerated on `exp`, seconds.
const LEEWAY: u64 = 10;
const MAX_ASSERTION_BYTES: usize = 16 * 1024;
/// Scopes this server can grant, for smart-configuration.
pub const SCOPES_SUPPORTED: &[&str] = &["system/*.read", "system/*.rs", "system/*.r"];

/// `.well-known/smart-configuration` for the FHIR base `base`.
pub fn smart_configuration(base: &str) -> serde_json::Value {
    json!({
        "issuer": base,
        "token_endpoint": format!("{base}{TOKEN_PATH}"),
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": SCOPES_SUPPORTED,
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"]
    })
}

/// An OAuth error (RFC 6749 §5.2): what the token endpoint answers a client, as JSON.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {description}")]
pub struct OAuthError {
    pub code: &'static str,
    pub description: String,
}

impl OAuthError {
    pub fn new(code: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            code,
            description: description.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        if self.code == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        }
    }
}

/// Why no token was issued: the client's fault (an OAuth error) or the server's.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("authorization is on but no TOKEN_SIGNING_KEY is configured")]
    NoSigningKey,
    #[error("signing the access token")]
    Signing(#[source] jsonwebtoken::errors::Error),
}

/// An issued access token (the token endpoint's JSON answer).
#[derive(Debug, serde::Serialize)]
pub struct Grant {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub scope: String,
}

fn invalid_client(d: impl Into<String>) -> OAuthError {
    OAuthError::new("invalid_client", d)
}

/// The one answer to an assertion that does not prove it comes from a registered client: an
/// unknown client, a `jku` that is not its JWKS URL, keys that cannot be had (an unreachable or
/// unusable JWKS URL) or that do not fit, a signature that does not verify. The same words for
/// all, so that the answer tells no one which client ids exist or where their keys live; the
/// reason goes to the log.
pub const UNVERIFIED_CLIENT: &str =
    "the client assertion could not be verified: unknown client, or no registered key of the client verifies its signature";

/// Refuses an assertion as [`UNVERIFIED_CLIENT`], logging the reason (a warning).
fn unverified_client(client_id: &str, reason: &str) -> OAuthError {
    tracing::warn!(
        client_id = %client_id.escape_debug(),
        reason = %reason,
        "token request refused: client assertion not verified"
    );
    invalid_client(UNVERIFIED_CLIENT)
}

fn invalid_request(d: impl Into<String>) -> OAuthError {
    OAuthError::new("invalid_request", d)
}

#[derive(Debug, Deserialize)]
struct UnverifiedClaims {
    iss: Option<String>,
    sub: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    exp: i64,
    jti: Option<String>,
    nbf: Option<i64>,
    iat: Option<i64>,
}

/// The form of a token request (`application/x-www-form-urlencoded`): a parameter given twice is
/// refused.
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, OAuthError> {
    let mut form: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(body) {
        if form.iter().any(|(name, _)| *name == k) {
            return Err(invalid_request(format!("parameter {k} given twice")));
        }
        form.push((k.into_owned(), v.into_owned()));
    }
    Ok(form)
}

/// Issues an access token for a `client_credentials` request whose client assertion verifies
/// against the client's registered keys (for the FHIR base `base`).
pub async fn grant(
    pool: &Pool,
    config: &Config,
    form: &[(String, String)],
    base: &str,
) -> Result<Grant, TokenError> {
    let request = TokenRequest::read(form)?;
    let assertion = request.assertion;
    let header = assertion_header(assertion)?;
    let client_id = claimed_client_id(assertion)?;
    let client = clients::get_client(pool, &client_id)
        .await?
        .ok_or_else(|| unverified_client(&client_id, "unknown client"))?;
    if let Some(jku) = &header.jku {
        if client.jwks_url.as_deref() != Some(jku.as_str()) {
            return Err(unverified_client(
                &client_id,
                &format!("jku {jku:?} is not the client's registered JWKS URL"),
            )
            .into());
        }
    }
    let keys = client_keys(&client, &client_id).await?;
    let candidates = candidate_keys(&keys, &header, &client_id)?;
    let token_url = format!("{base}{TOKEN_PATH}");
    let claims = verify_assertion(assertion, &header, &candidates, &client_id, &token_url)?;
    let (jti, expires) = check_claims(claims)?;
    if !clients::record_jti(pool, &client_id, &jti, expires).await? {
        return Err(invalid_client("this client assertion (jti) was already used").into());
    }
    let granted = scopes::grant(request.scope, &client.scopes);
    if granted.is_empty() {
        return Err(OAuthError::new(
            "invalid_scope",
            format!(
                "none of the requested scopes can be granted; this client may have: {}",
                client.scopes
            ),
        )
        .into());
    }
    issue(config, base, &client_id, granted)
}

/// The parts of a token request's form that are read.
struct TokenRequest<'a> {
    /// The client assertion (a JWT), at most [`MAX_ASSERTION_BYTES`].
    assertion: &'a str,
    /// The requested scopes.
    scope: &'a str,
}

impl<'a> TokenRequest<'a> {
    /// A `client_credentials` request with a JWT client assertion and a scope.
    fn read(form: &'a [(String, String)]) -> Result<Self, OAuthError> {
        let get = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        match get("grant_type") {
            None => return Err(invalid_request("grant_type is required")),
            Some("client_credentials") => {}
            Some(other) => {
                return Err(OAuthError::new(
                    "unsupported_grant_type",
                    format!("grant_type {other:?} is not supported; use client_credentials"),
                ))
            }
        }
        if get("client_assertion_type") != Some(ASSERTION_TYPE) {
            return Err(invalid_request(format!(
                "client_assertion_type must be {ASSERTION_TYPE}"
            )));
        }
        let assertion = get("client_assertion")
            .filter(|a| !a.is_empty())
            .ok_or_else(|| invalid_request("client_assertion is required"))?;
        if assertion.len() > MAX_ASSERTION_BYTES {
            return Err(invalid_client("the client assertion is too large"));
        }
        let scope = get("scope")
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| invalid_request("scope is required, e.g. system/*.read"))?;
        Ok(TokenRequest { assertion, scope })
    }
}

/// The assertion's JWT header, signed with RS384 or ES384.
fn assertion_header(assertion: &str) -> Result<jsonwebtoken::Header, OAuthError> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| {
        invalid_client("the client assertion is not a JWT signed with RS384 or ES384")
    })?;
    if !matches!(header.alg, Algorithm::RS384 | Algorithm::ES384) {
        return Err(invalid_client(format!(
            "the client assertion is signed with {:?}; only RS384 and ES384 are accepted",
            header.alg
        )));
    }
    Ok(header)
}

/// The client id the assertion claims to come from (`iss` = `sub`), not verified yet.
fn claimed_client_id(assertion: &str) -> Result<String, OAuthError> {
    let unverified = unverified_claims(assertion)
        .ok_or_else(|| invalid_client("the client assertion's claims are not readable"))?;
    let client_id = unverified
        .iss
        .filter(|iss| Some(iss) == unverified.sub.as_ref() && !iss.is_empty() && iss.len() <= 256)
        .ok_or_else(|| invalid_client("iss and sub must both be the client id"))?;
    // A NUL cannot be in a registered id (and Postgres refuses it in a query parameter).
    if client_id.contains('\0') {
        return Err(unverified_client(
            &client_id,
            "unknown client (a NUL in iss)",
        ));
    }
    Ok(client_id)
}

/// The client's registered keys: inline, or fetched from its JWKS URL.
async fn client_keys(client: &clients::Client, client_id: &str) -> Result<JwkSet, OAuthError> {
    match (&client.jwks, &client.jwks_url) {
        (Some(inline), _) => serde_json::from_value(inline.clone()).map_err(|e| {
            unverified_client(
                client_id,
                &format!("the client's registered JWKS is not usable: {e}"),
            )
        }),
        (None, Some(url)) => jwks::fetch(url)
            .await
            .map_err(|e| unverified_client(client_id, &format!("JWKS URL {url}: {}", e.0))),
        (None, None) => Err(unverified_client(client_id, "the client has no keys")),
    }
}

/// The keys that may have signed the assertion: its `kid` (if any), for signing, of its `alg`.
fn candidate_keys<'k>(
    keys: &'k JwkSet,
    header: &jsonwebtoken::Header,
    client_id: &str,
) -> Result<Vec<&'k Jwk>, OAuthError> {
    let candidates: Vec<&Jwk> = keys
        .keys
        .iter()
        .filter(|k| header.kid.is_none() || k.common.key_id == header.kid)
        .filter(|k| k.common.public_key_use != Some(PublicKeyUse::Encryption))
        .filter(|k| key_fits(k, header.alg))
        .collect();
    if candidates.is_empty() {
        return Err(unverified_client(
            client_id,
            &format!(
                "no key of the client fits the assertion (kid {}, alg {:?})",
                header
                    .kid
                    .as_deref()
                    .map_or("none".to_string(), |k| format!("{k:?}")),
                header.alg
            ),
        ));
    }
    Ok(candidates)
}

/// The assertion's claims, once one of `candidates` verifies its signature and its `aud`
/// (`token_url`), `iss` and `sub` (`client_id`) and `exp` hold.
fn verify_assertion(
    assertion: &str,
    header: &jsonwebtoken::Header,
    candidates: &[&Jwk],
    client_id: &str,
    token_url: &str,
) -> Result<AssertionClaims, OAuthError> {
    let mut validation = Validation::new(header.alg);
    validation.leeway = LEEWAY;
    validation.set_audience(&[token_url]);
    validation.set_issuer(&[client_id]);
    validation.sub = Some(client_id.to_string());
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    // Only an assertion whose signature verifies is told more than UNVERIFIED_CLIENT (jsonwebtoken
    // checks the signature before the claims).
    let mut last = None;
    for jwk in candidates {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        match jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind as K;
                last = Some(match e.kind() {
                    K::ExpiredSignature => invalid_client("the client assertion has expired"),
                    K::InvalidAudience => invalid_client(format!(
                        "the client assertion's aud must be the token URL {token_url}"
                    )),
                    K::InvalidIssuer | K::InvalidSubject => {
                        invalid_client("iss and sub must both be the client id")
                    }
                    K::MissingRequiredClaim(c) => {
                        invalid_client(format!("the client assertion has no {c} claim"))
                    }
                    _ => {
                        tracing::debug!(client_id = %client_id, error = %e, "a candidate key does not verify the assertion");
                        continue;
                    }
                });
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        unverified_client(
            client_id,
            "the assertion's signature does not verify with any registered key",
        )
    }))
}

/// A verified assertion's `jti` and expiry, once its times are sound: not made for later, and
/// expiring within [`MAX_ASSERTION_LIFETIME`].
fn check_claims(
    claims: AssertionClaims,
) -> Result<(String, chrono::DateTime<chrono::Utc>), OAuthError> {
    let now = chrono::Utc::now().timestamp();
    // An assertion made for later (clock games, or one prepared to be replayed) is refused.
    for (name, t) in [("nbf", claims.nbf), ("iat", claims.iat)] {
        if t.is_some_and(|t| t > now + LEEWAY as i64) {
            return Err(invalid_client(format!(
                "the client assertion's {name} is in the future"
            )));
        }
    }
    if claims.exp > now + MAX_ASSERTION_LIFETIME + LEEWAY as i64 {
        return Err(invalid_client(
            "the client assertion's exp is more than 5 minutes ahead",
        ));
    }
    let jti = claims
        .jti
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or_else(|| invalid_client("the client assertion needs a jti"))?;
    if jti.contains('\0') {
        return Err(invalid_client(
            "the client assertion's jti must not contain a NUL",
        ));
    }
    let expires = chrono::DateTime::from_timestamp(claims.exp, 0)
        .ok_or_else(|| invalid_client("the client assertion's exp is out of range"))?;
    Ok((jti, expires))
}

/// The access token for `client_id` with the `granted` scopes, signed with the configured key.
fn issue(
    config: &Config,
    base: &str,
    client_id: &str,
    granted: String,
) -> Result<Grant, TokenError> {
    let AuthMode::Smart {
        signing_key: Some(key),
    } = &config.auth
    else {
        return Err(TokenError::NoSigningKey);
    };
    let ttl = config.access_token_ttl;
    let access_token =
        issue_access_token(key, base, client_id, &granted, ttl).map_err(TokenError::Signing)?;
    tracing::info!(client_id = %client_id, scope = %granted, "access token issued");
    Ok(Grant {
        access_token,
        token_type: "bearer",
        expires_in: ttl.as_secs(),
        scope: granted,
    })
}

/// The JWT's claims without checking anything, only to find the client (then verified).
fn unverified_claims(jwt: &str) -> Option<UnverifiedClaims> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// RS384 needs an RSA key, ES384 an EC key on P-384 (no algorithm confusion).
fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    if let Some(key_alg) = &jwk.common.key_algorithm {
        if format!("{key_alg:?}") != format!("{alg:?}") {
            return false;
        }
    }
    match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS384) => true,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => {
            ec.curve == EllipticCurve::P384
        }
        _ => false,
    }
}
