//! `bulk-export client …`: registering SMART Backend Services clients, their keys, and a test
//! token request.

use anyhow::{bail, Context};
use shared::{auth, db};

use super::ClientCommand;

/// What to add to a failed token request's message when `--token-url` may not be a token
/// endpoint: if the URL is a FHIR base whose smart-configuration names the token endpoint, that
/// URL; otherwise what was expected.
pub async fn token_url_hint(token_url: &str) -> String {
    let expected = "\n  --token-url must be the server's token endpoint: for bulk-export serve `<FHIR base>/auth/token` \
                    (e.g. http://127.0.0.1:8080/auth/token); other servers name it as `token_endpoint` in \
                    `<FHIR base>/.well-known/smart-configuration`";
    if token_url.trim_end_matches('/').ends_with("/auth/token") {
        return String::new();
    }
    let discovery = format!(
        "{}/.well-known/smart-configuration",
        token_url.trim_end_matches('/')
    );
    let found = async {
        let resp = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .ok()?
            .get(&discovery)
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = resp.json().await.ok()?;
        v["token_endpoint"].as_str().map(str::to_string)
    }
    .await;
    match found {
        Some(endpoint) => format!(
            "\n  {token_url} looks like a FHIR base URL; its token endpoint is {endpoint}: use --token-url {endpoint}"
        ),
        None => expected.to_string(),
    }
}

pub fn keygen(out: &std::path::Path, kid: Option<&str>) -> anyhow::Result<()> {
    let key = auth::keys::generate_es384(kid).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let files = [
        ("private.pem", key.private_pem.clone(), true),
        (
            "private.jwks",
            serde_json::to_string_pretty(&key.private_jwks)?,
            true,
        ),
        (
            "private.jwk.json",
            serde_json::to_string_pretty(&key.private_jwk)?,
            true,
        ),
        (
            "public.jwks",
            serde_json::to_string_pretty(&key.public_jwks)?,
            false,
        ),
    ];
    for (name, _, _) in &files {
        let path = out.join(name);
        if path.exists() {
            bail!("{} exists; not overwriting a key", path.display());
        }
    }
    for (name, text, private) in files {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        let _ = private;
    }
    println!(
        "wrote {0}/private.pem (PKCS#8; bulk-export client token, smart-fetch), {0}/private.jwks (smart-fetch) \
         and {0}/private.jwk.json (bulk-data-client's privateKey): keep these secret; and {0}/public.jwks \
         (register it: bulk-export client add --jwks {0}/public.jwks). Key id (RFC 7638 thumbprint unless --kid): {1}",
        out.display(),
        key.kid
    );
    Ok(())
}

pub async fn client_command(pool: &db::Pool, command: ClientCommand) -> anyhow::Result<()> {
    match command {
        ClientCommand::Add {
            jwks,
            jwks_url,
            allow_insecure_jwks_url,
            scope,
            id,
        } => {
            let scopes = scope.join(" ").replace(',', " ");
            let scopes = scopes.split_whitespace().collect::<Vec<_>>().join(" ");
            auth::scopes::check_registered(&scopes).map_err(anyhow::Error::msg)?;
            let jwks = match jwks {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let value: serde_json::Value = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not JSON", path.display()))?;
                    auth::check_public_jwks(&value).map_err(anyhow::Error::msg)?;
                    Some(value)
                }
                None => None,
            };
            if let Some(url) = &jwks_url {
                auth::jwks::check_url(url, allow_insecure_jwks_url)
                    .map_err(|e| anyhow::anyhow!("--jwks-url: {e}"))?;
            }
            let client_id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            if client_id.is_empty() || client_id.len() > 256 {
                bail!("the client id must be 1 to 256 characters");
            }
            db::clients::insert_client(
                pool,
                &db::clients::Client {
                    client_id: client_id.clone(),
                    jwks,
                    jwks_url,
                    scopes: scopes.clone(),
                },
            )
            .await?;
            eprintln!("registered client (scopes: {scopes})");
            println!("{client_id}");
        }
        ClientCommand::List => {
            for c in db::clients::list_clients(pool).await? {
                let keys = match (&c.jwks, &c.jwks_url) {
                    (_, Some(url)) => url.clone(),
                    (Some(j), None) => {
                        format!("{} inline key(s)", j["keys"].as_array().map_or(0, Vec::len))
                    }
                    (None, None) => "no keys".into(),
                };
                println!("{}\t{}\t{keys}", c.client_id, c.scopes);
            }
        }
        ClientCommand::Keygen { .. } | ClientCommand::Token { .. } => {
            unreachable!("handled before the database is opened")
        }
        ClientCommand::Remove { id } => {
            if !db::clients::delete_client(pool, &id).await? {
                bail!("no client {id}");
            }
            println!("removed client {id}");
        }
    }
    Ok(())
}
