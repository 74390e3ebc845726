//! TLS to Postgres, configured the libpq way in DATABASE_URL (RDS and most managed Postgres
//! require it): `sslmode` and `sslrootcert`, which tokio-postgres does not parse itself.
//!
//! - `disable`, `allow`, `prefer` (tokio-postgres's default) → plain TCP.
//! - `require` → TLS; the server certificate is verified against `sslrootcert` when one is given
//!   (the libpq rule), otherwise only encrypted, like libpq.
//! - `verify-ca`, `verify-full` → TLS, certificate and host name verified against `sslrootcert`,
//!   or the system's CA store when none is given.
//!
//! For Amazon RDS: `?sslmode=verify-full&sslrootcert=/path/to/global-bundle.pem` (the RDS CA
//! bundle), or `?sslmode=require` for encryption without verification.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::DbError;

/// How to connect, from the URL's TLS options.
pub enum TlsChoice {
    Plain,
    Tls(tokio_postgres_rustls::MakeRustlsConnect),
}

/// Splits `sslmode` and `sslrootcert` out of a URL (`postgres://…?…`) or key=value string, and
/// returns the rest (for tokio-postgres) with the connector to use.
pub fn from_url(url: &str) -> Result<(String, TlsChoice), DbError> {
    let (rest, mode, root) = split_options(url);
    let bad = |m: String| DbError::Config(m);
    let verify = match mode.as_deref() {
        None | Some("disable" | "allow" | "prefer") => return Ok((rest, TlsChoice::Plain)),
        Some("require") => root.is_some(),
        Some("verify-ca" | "verify-full") => true,
        Some(other) => {
            return Err(bad(format!(
            "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
        )))
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS: {e}")))?;
    let config = if verify {
        let mut roots = RootCertStore::empty();
        match &root {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| bad(format!("sslrootcert {path}: {e}")))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad(format!("sslrootcert {path}: {e}")))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(bad(format!("sslrootcert {path} holds no certificate")));
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
                if roots.is_empty() {
                    return Err(bad(
                        "no system CA certificates found; give sslrootcert=/path/to/ca.pem".into(),
                    ));
                }
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth()
    };
    // tokio-postgres must ask for TLS and fail without it.
    let rest = with_option(&rest, "sslmode", "require");
    Ok((
        rest,
        TlsChoice::Tls(tokio_postgres_rustls::MakeRustlsConnect::new(config)),
    ))
}

/// (url without sslmode/sslrootcert, sslmode, sslrootcert)
fn split_options(url: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut root) = (None, None);
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((head, query)) = url.split_once('?') else {
            return (url.to_string(), None, None);
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = form_urlencoded::parse(format!("v={v}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            match k {
                "sslmode" => mode = Some(v),
                "sslrootcert" => root = Some(v),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            head.to_string()
        } else {
            format!("{head}?{}", kept.join("&"))
        };
        (rest, mode, root)
    } else {
        let mut kept = Vec::new();
        for token in url.split_whitespace() {
            match token.split_once('=') {
                Some(("sslmode", v)) => mode = Some(v.to_string()),
                Some(("sslrootcert", v)) => root = Some(v.to_string()),
                _ => kept.push(token),
            }
        }
        (kept.join(" "), mode, root)
    }
}

fn with_option(url: &str, key: &str, value: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}{key}={value}")
    } else {
        format!("{url} {key}={value}")
    }
}

/// `sslmode=require` without a root certificate: encrypt, check the handshake's signatures, but
/// do not verify who the certificate belongs to (libpq's `require`).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_taken_out_of_urls_and_key_value_strings() {
        let (rest, mode, root) = split_options(
            "postgres://u:p@h:5432/db?sslmode=verify-full&sslrootcert=%2Fca.pem&application_name=x",
        );
        assert_eq!(rest, "postgres://u:p@h:5432/db?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/ca.pem"));
        let (rest, mode, _) = split_options("host=h dbname=d sslmode=require");
        assert_eq!(rest, "host=h dbname=d");
        assert_eq!(mode.as_deref(), Some("require"));
        assert_eq!(split_options("postgres://h/db").0, "postgres://h/db");
    }

    #[test]
    fn plain_unless_asked_and_bad_modes_refused() {
        assert!(matches!(
            from_url("postgres://h/db").unwrap().1,
            TlsChoice::Plain
        ));
        assert!(matches!(
            from_url("postgres://h/db?sslmode=prefer").unwrap().1,
            TlsChoice::Plain
        ));
        let (rest, tls) = from_url("postgres://h/db?sslmode=require").unwrap();
        assert!(matches!(tls, TlsChoice::Tls(_)));
        assert_eq!(rest, "postgres://h/db?sslmode=require");
        assert!(from_url("postgres://h/db?sslmode=maybe").is_err());
        assert!(
            from_url("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent.pem").is_err()
        );
    }
}
