//! Client-side helpers behind `bulk-export client keygen` and `bulk-export client token`: make a
//! P-384 key pair in the forms clients and this server use, and get an access token with it.

use aws_lc_rs::encoding::AsBigEndian;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::token::ASSERTION_TYPE;

/// A client key that cannot be generated, read or used, or a token request that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// A new client key: the private key as PKCS#8 PEM (to sign assertions), as a private JWK Set
/// (what smart-fetch's `--smart-key` takes) and the public JWK Set to register.
pub struct ClientKey {
    pub private_pem: String,
    pub private_jwks: Value,
    pub public_jwks: Value,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Generates an ES384 (P-384) key pair with key id `kid`.
pub fn generate_es384(kid: &str) -> Result<ClientKey, KeyError> {
    let err = |_| KeyError("key generation failed".to_string());
    let pair = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).map_err(err)?;
    let pkcs8 = pair.to_pkcs8v1().map_err(err)?;
    let point = pair.public_key().as_ref();
    // Uncompressed point: 0x04 || x (48 bytes) || y (48 bytes).
    if point.len() != 97 || point[0] != 4 {
        return Err(KeyError("unexpected public key encoding".into()));
    }
    let d = pair.private_key().as_be_bytes().map_err(err)?;
    let public = json!({
        "kty": "EC", "crv": "P-384", "kid": kid, "alg": "ES384", "use": "sig",
        "x": b64url(&point[1..49]), "y": b64url(&point[49..97])
    });
    let mut private = public.clone();
    if let Some(o) = private.as_object_mut() {
        o.remove("use");
        o.insert("key_ops".into(), json!(["sign"]));
        o.insert("d".into(), json!(b64url(d.as_ref())));
    }
    let body = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(ClientKey {
        private_pem: pem,
        private_jwks: json!({"keys": [private]}),
        public_jwks: json!({"keys": [public]}),
    })
}

/// A signed client assertion for the token endpoint, from a PEM private key (P-384 → ES384,
/// RSA → RS384).
pub fn client_assertion(
    pem: &[u8],
    client_id: &str,
    token_url: &str,
    kid: Option<&str>,
) -> Result<String, KeyError> {
    let text = String::from_utf8_lossy(pem);
    let der = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    let der = base64::engine::general_purpose::STANDARD
        .decode(der.trim())
        .map_err(|_| KeyError("the key file is not a PEM private key".to_string()))?;
    // Key type from the algorithm OID in the key: id-ecPublicKey or rsaEncryption.
    const EC_OID: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    let is_ec = der.windows(EC_OID.len()).any(|w| w == EC_OID) || text.contains("EC PRIVATE KEY");
    let (alg, key) = if is_ec {
        (Algorithm::ES384, EncodingKey::from_ec_pem(pem))
    } else {
        (Algorithm::RS384, EncodingKey::from_rsa_pem(pem))
    };
    let key = key.map_err(|e| KeyError(format!("the key file is not usable: {e}")))?;
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "iss": client_id, "sub": client_id, "aud": token_url,
        "exp": now + 240, "jti": uuid::Uuid::new_v4().to_string()
    });
    jsonwebtoken::encode(&header, &claims, &key)
        .map_err(|e| KeyError(format!("signing failed: {e}")))
}

/// Asks `token_url` for an access token (client_credentials + private_key_jwt).
pub async fn request_token(
    token_url: &str,
    assertion: &str,
    scope: &str,
) -> Result<Value, KeyError> {
    let resp = reqwest::Client::new()
        .post(token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
            ("scope", scope),
        ])
        .send()
        .await
        .map_err(|e| {
            KeyError(format!(
                "token request to {token_url} failed: {}",
                crate::error_chain(&e)
            ))
        })?;
    let status = resp.status();
    let body: Value = resp.json().await.map_err(|e| {
        KeyError(format!(
            "the token endpoint answered {status} without JSON: {e}"
        ))
    })?;
    if !status.is_success() {
        return Err(KeyError(match body["error"].as_str() {
            Some(error) => format!(
                "the token endpoint answered {status}: {error} ({})",
                body["error_description"].as_str().unwrap_or("")
            ),
            None => format!("{token_url} answered {status}, not an OAuth token response"),
        }));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_assertions_the_public_jwks_verifies() {
        let key = generate_es384("k1").unwrap();
        assert!(super::super::check_public_jwks(&key.public_jwks).is_ok());
        assert!(super::super::check_public_jwks(&key.private_jwks).is_err());
        let a = client_assertion(
            key.private_pem.as_bytes(),
            "c1",
            "http://h/auth/token",
            Some("k1"),
        )
        .unwrap();
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(key.public_jwks).unwrap();
        let dk = jsonwebtoken::DecodingKey::from_jwk(&set.keys[0]).unwrap();
        let mut v = jsonwebtoken::Validation::new(Algorithm::ES384);
        v.set_audience(&["http://h/auth/token"]);
        let data = jsonwebtoken::decode::<Value>(&a, &dk, &v).unwrap();
        assert_eq!(data.claims["iss"], "c1");
        assert_eq!(data.header.kid.as_deref(), Some("k1"));
    }
}
