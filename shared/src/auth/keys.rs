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

/// A new client key: the private key as PKCS#8 PEM (to sign assertions; smart-fetch's
/// `--smart-key` takes it too), as a private JWK Set (smart-fetch), as one private JWK
/// (bulk-data-client's `privateKey`) and the public JWK Set to register. Its `kid` is the
/// RFC 7638 thumbprint unless another was asked for: what clients that are given only the PEM
/// (smart-fetch) put in their assertions.
pub struct ClientKey {
    pub kid: String,
    pub private_pem: String,
    pub private_jwks: Value,
    pub private_jwk: Value,
    pub public_jwks: Value,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The RFC 7638 JWK thumbprint (SHA-256, base64url) of an EC or RSA key: the hash of its
/// required members in lexicographic order, no whitespace.
pub fn jwk_thumbprint(jwk: &Value) -> Result<String, KeyError> {
    let member = |name: &str| {
        jwk[name]
            .as_str()
            .ok_or_else(|| KeyError(format!("the JWK has no {name}")))
    };
    let canonical = match member("kty")? {
        "EC" => format!(
            r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
            json!(member("crv")?),
            json!(member("x")?),
            json!(member("y")?)
        ),
        "RSA" => format!(
            r#"{{"e":{},"kty":"RSA","n":{}}}"#,
            json!(member("e")?),
            json!(member("n")?)
        ),
        other => return Err(KeyError(format!("no thumbprint for a {other} key"))),
    };
    Ok(b64url(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref(),
    ))
}

/// Generates an ES384 (P-384) key pair; its key id is `kid`, or by default its RFC 7638
/// thumbprint.
pub fn generate_es384(kid: Option<&str>) -> Result<ClientKey, KeyError> {
    let err = |_| KeyError("key generation failed".to_string());
    let pair = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).map_err(err)?;
    let pkcs8 = pair.to_pkcs8v1().map_err(err)?;
    let point = pair.public_key().as_ref();
    // Uncompressed point: 0x04 || x (48 bytes) || y (48 bytes).
    if point.len() != 97 || point[0] != 4 {
        return Err(KeyError("unexpected public key encoding".into()));
    }
    let d = pair.private_key().as_be_bytes().map_err(err)?;
    let mut public = json!({
        "kty": "EC", "crv": "P-384", "alg": "ES384", "use": "sig",
        "x": b64url(&point[1..49]), "y": b64url(&point[49..97])
    });
    let kid = match kid {
        Some(k) => k.to_string(),
        None => jwk_thumbprint(&public)?,
    };
    public["kid"] = json!(kid);
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
        kid,
        private_pem: pem,
        private_jwks: json!({"keys": [private.clone()]}),
        private_jwk: private,
        public_jwks: json!({"keys": [public]}),
    })
}

/// What to do with a key file this helper cannot use.
const KEY_HINT: &str =
    "use a P-384 (ES384) or RSA (RS384) private key in PEM: PKCS#8 (BEGIN PRIVATE KEY), \
SEC1 (BEGIN EC PRIVATE KEY) or PKCS#1 (BEGIN RSA PRIVATE KEY); bulk-export client keygen makes one";

/// The PEM blocks of `text`: (label, DER).
fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>, KeyError> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines().map(str::trim) {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            current = Some((label.to_string(), String::new()));
        } else if line.starts_with("-----END ") {
            if let Some((label, body)) = current.take() {
                let der = base64::engine::general_purpose::STANDARD
                    .decode(body)
                    .map_err(|_| KeyError(format!("the key file's {label} block is not base64")))?;
                blocks.push((label, der));
            }
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
        }
    }
    Ok(blocks)
}

/// A signed client assertion for the token endpoint, from a PEM private key (P-384 → ES384 from
/// PKCS#8 or SEC1, RSA → RS384 from PKCS#8 or PKCS#1).
pub fn client_assertion(
    pem: &[u8],
    client_id: &str,
    token_url: &str,
    kid: Option<&str>,
) -> Result<String, KeyError> {
    let text = String::from_utf8_lossy(pem);
    let blocks = pem_blocks(&text)?;
    // `openssl ecparam -genkey` writes an EC PARAMETERS block before the key.
    let Some((label, der)) = blocks.iter().find(|(l, _)| l.ends_with("PRIVATE KEY")) else {
        return Err(KeyError(format!(
            "the key file holds no PEM private key: {KEY_HINT}"
        )));
    };
    const EC_OID: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    let usable = |e: jsonwebtoken::errors::Error| {
        KeyError(format!("the key file is not usable ({e}): {KEY_HINT}"))
    };
    let (alg, key) = match label.as_str() {
        "ENCRYPTED PRIVATE KEY" => {
            return Err(KeyError(format!(
                "the key file is encrypted: decrypt it first (openssl pkcs8 -in KEY -out PLAIN.pem), or {KEY_HINT}"
            )))
        }
        // SEC1 (RFC 5915), which jsonwebtoken does not read: converted to PKCS#8.
        "EC PRIVATE KEY" => {
            let pair = EcdsaKeyPair::from_private_key_der(&ECDSA_P384_SHA384_FIXED_SIGNING, der)
                .map_err(|_| {
                    KeyError(format!(
                        "the EC key is not a P-384 key (this server takes ES384 only): {KEY_HINT}"
                    ))
                })?;
            let pkcs8 = pair
                .to_pkcs8v1()
                .map_err(|_| KeyError("converting the SEC1 key to PKCS#8 failed".into()))?;
            (Algorithm::ES384, EncodingKey::from_ec_der(pkcs8.as_ref()))
        }
        "PRIVATE KEY" if der.windows(EC_OID.len()).any(|w| w == EC_OID) => {
            if EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, der).is_err() {
                return Err(KeyError(format!(
                    "the EC key is not a P-384 key (this server takes ES384 only): {KEY_HINT}"
                )));
            }
            (Algorithm::ES384, EncodingKey::from_ec_der(der))
        }
        "PRIVATE KEY" | "RSA PRIVATE KEY" => (
            Algorithm::RS384,
            EncodingKey::from_rsa_pem(pem).map_err(usable)?,
        ),
        other => {
            return Err(KeyError(format!(
                "the key file holds a {other}, which this helper cannot use: {KEY_HINT}"
            )))
        }
    };
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
        let key = generate_es384(Some("k1")).unwrap();
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

    /// RFC 7638 section 3.1's example.
    #[test]
    fn thumbprints_are_rfc_7638() {
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            jwk_thumbprint(&jwk).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    /// Keys from keygen carry their RFC 7638 thumbprint as kid (what smart-fetch puts in an
    /// assertion signed with the PEM), in the public and private JWK Sets and the single JWK
    /// (issue 28 item 3).
    #[test]
    fn generated_keys_are_named_by_their_thumbprint() {
        let key = generate_es384(None).unwrap();
        let public = &key.public_jwks["keys"][0];
        assert_eq!(key.kid, jwk_thumbprint(public).unwrap());
        assert_eq!(public["kid"], key.kid.as_str());
        assert_eq!(key.private_jwks["keys"][0]["kid"], key.kid.as_str());
        assert_eq!(key.private_jwk, key.private_jwks["keys"][0]);
        assert!(key.private_jwk["d"].is_string());
        assert_eq!(key.private_jwk["alg"], "ES384");
        assert_eq!(
            jwk_thumbprint(&key.private_jwk).unwrap(),
            key.kid,
            "the private part does not change the thumbprint"
        );
    }

    /// TEST-ONLY keys made with `openssl ecparam -genkey` (SEC1, with its EC PARAMETERS block)
    /// and `openssl ecparam -name prime256v1 -genkey -noout`.
    const SEC1_P384: &str = "-----BEGIN EC PARAMETERS-----
BgUrgQQAIg==
-----END EC PARAMETERS-----
-----BEGIN EC PRIVATE KEY-----
MIGkAgEBBDBlqzQ4z9gaSN5nL9swPjqo2XSDTS3tub1oQd3J3Z7XQnOcVOBdxj60
U/V3Dpf2Xu6gBwYFK4EEACKhZANiAAT/EHX32F15zuKdGDyUYTOEhK2ixWwlC+pD
NE3ObLM8NmWuDfvrpoO+utH2VUHRECumKQMHK4qWk1W4gf04KJi32f5VJ5fqEsCu
vYefRl/NSJnKJlH2IsM6YazIaJRF8Ow=
-----END EC PRIVATE KEY-----
";
    const SEC1_P256: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIA0MTRGpFtFEvlJE9aK7g0dAciDKUVNgMmrezN4J4CSwoAoGCCqGSM49
AwEHoUQDQgAEzHYZbdYfkoQZajGa/fplQt4iVlLFMRfaD/zS8seVye3fKlOTqcVO
EzaEVzM7r3t4FXOP/vfKvHd00onsM1K/Gw==
-----END EC PRIVATE KEY-----
";

    /// `client token --key` takes SEC1 PEMs (`BEGIN EC PRIVATE KEY`), and says what to do with
    /// a key it cannot use (issue 28 item 3).
    #[test]
    fn sec1_keys_sign_and_unusable_keys_say_what_to_do() {
        let a = client_assertion(SEC1_P384.as_bytes(), "c1", "http://h/auth/token", None).unwrap();
        let der = pem_blocks(SEC1_P384).unwrap().remove(1).1;
        let pair =
            EcdsaKeyPair::from_private_key_der(&ECDSA_P384_SHA384_FIXED_SIGNING, &der).unwrap();
        let point = pair.public_key().as_ref();
        let dk = jsonwebtoken::DecodingKey::from_ec_components(
            &b64url(&point[1..49]),
            &b64url(&point[49..97]),
        )
        .unwrap();
        let mut v = jsonwebtoken::Validation::new(Algorithm::ES384);
        v.set_audience(&["http://h/auth/token"]);
        let data = jsonwebtoken::decode::<Value>(&a, &dk, &v).unwrap();
        assert_eq!(data.claims["sub"], "c1");

        for (pem, says) in [
            (SEC1_P256, "not a P-384 key"),
            ("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n", "decrypt it first"),
            ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "no PEM private key"),
            ("not a key", "no PEM private key"),
        ] {
            let e = client_assertion(pem.as_bytes(), "c1", "http://h/auth/token", None)
                .unwrap_err();
            assert!(e.0.contains(says), "{says}: {e}");
            assert!(e.0.contains("bulk-export client keygen"), "{e}");
        }
    }
}
