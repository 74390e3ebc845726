//! `bulk-export client …`: registering SMART Backend Services clients, their keys, and a test
//! token request.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use shared::{auth, db};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Register a client (or replace its keys and scopes); prints its client id.
    #[command(after_help = crate::env::DATABASE)]
    Add(AddArgs),
    /// List registered clients.
    #[command(after_help = crate::env::DATABASE)]
    List,
    /// Make a new ES384 client key pair in DIR: private.pem (PKCS#8; signs assertions, for
    /// smart-fetch too), private.jwks (smart-fetch), private.jwk.json (one JWK: bulk-data-client's
    /// privateKey) and public.jwks (to register). No database needed.
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// Key id written into the JWKs (default: the key's RFC 7638 thumbprint, which is what
        /// smart-fetch sends when given private.pem; another kid breaks that).
        #[arg(long)]
        kid: Option<String>,
    },
    /// Get an access token from a token endpoint with a client key and print it (what a SMART
    /// Backend Services client does). No database needed.
    Token {
        #[arg(long)]
        client_id: String,
        /// PEM private key: P-384 → ES384 (PKCS#8 or SEC1 `BEGIN EC PRIVATE KEY`), RSA → RS384.
        #[arg(long)]
        key: PathBuf,
        /// The token endpoint, e.g. http://127.0.0.1:8080/auth/token.
        #[arg(long)]
        token_url: String,
        #[arg(long, default_value = "system/*.read")]
        scope: String,
        #[arg(long)]
        kid: Option<String>,
    },
    /// Remove a client (its access tokens stop working at once).
    #[command(after_help = crate::env::DATABASE)]
    Remove { id: String },
}

/// `client add`'s options.
#[derive(clap::Args)]
pub struct AddArgs {
    /// The client's public keys as a JWKS file (RS384 or ES384 keys).
    #[arg(
        long,
        conflicts_with = "jwks_url",
        required_unless_present = "jwks_url"
    )]
    jwks: Option<PathBuf>,
    /// Or the https URL the client publishes its JWKS at (fetched and cached per
    /// Cache-Control); not on this machine nor a link-local address.
    #[arg(long)]
    jwks_url: Option<String>,
    /// Development only: accept an http:// JWKS URL, or one on this machine (localhost,
    /// 127.0.0.0/8, ::1) or a link-local address.
    #[arg(long, requires = "jwks_url")]
    allow_insecure_jwks_url: bool,
    /// Scopes the client may be granted (space- or comma-separated).
    #[arg(long, default_value = "system/*.read")]
    scope: Vec<String>,
    /// The client id (default: a new UUID).
    #[arg(long)]
    id: Option<String>,
}

/// Runs a `client` command: keygen and token need no database.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Keygen { out, kid } => keygen(&out, kid.as_deref())?,
        Command::Token {
            client_id,
            key,
            token_url,
            scope,
            kid,
        } => token(&client_id, &key, &token_url, &scope, kid.as_deref()).await?,
        Command::Add(args) => add(&database().await?, args).await?,
        Command::List => list(&database().await?).await?,
        Command::Remove { id } => remove(&database().await?, &id).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Gets an access token with a client key and prints it (what a SMART Backend Services client
/// does).
async fn token(
    client_id: &str,
    key: &std::path::Path,
    token_url: &str,
    scope: &str,
    kid: Option<&str>,
) -> anyhow::Result<()> {
    let pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    let assertion = auth::keys::client_assertion(&pem, client_id, token_url, kid)
        .map_err(anyhow::Error::msg)?;
    let body = match auth::keys::request_token(token_url, &assertion, scope).await {
        Ok(body) => body,
        Err(e) => bail!("{e}{}", token_url_hint(token_url).await),
    };
    eprintln!(
        "granted {} for {} s",
        body["scope"].as_str().unwrap_or("?"),
        body["expires_in"]
    );
    println!("{}", body["access_token"].as_str().unwrap_or_default());
    Ok(())
}

/// What to add to a failed token request's message when `--token-url` may not be a token
/// endpoint: if the URL is a FHIR base whose smart-configuration names the token endpoint, that
/// URL; otherwise what was expected.
async fn token_url_hint(token_url: &str) -> String {
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

fn keygen(out: &std::path::Path, kid: Option<&str>) -> anyhow::Result<()> {
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

async fn database() -> anyhow::Result<db::Pool> {
    Ok(crate::open_database(crate::default_pool_size).await?.1)
}

/// Registers a client (or replaces its keys and scopes) and prints its id.
async fn add(pool: &db::Pool, args: AddArgs) -> anyhow::Result<()> {
    let scopes = args.scope.join(" ").replace(',', " ");
    let scopes = scopes.split_whitespace().collect::<Vec<_>>().join(" ");
    auth::scopes::check_registered(&scopes).map_err(anyhow::Error::msg)?;
    let jwks = match args.jwks {
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
    if let Some(url) = &args.jwks_url {
        auth::jwks::check_url(url, args.allow_insecure_jwks_url)
            .map_err(|e| anyhow::anyhow!("--jwks-url: {e}"))?;
    }
    let client_id = args.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if client_id.is_empty() || client_id.len() > 256 {
        bail!("the client id must be 1 to 256 characters");
    }
    db::clients::insert_client(
        pool,
        &db::clients::Client {
            client_id: client_id.clone(),
            jwks,
            jwks_url: args.jwks_url,
            scopes: scopes.clone(),
        },
    )
    .await?;
    eprintln!("registered client (scopes: {scopes})");
    println!("{client_id}");
    Ok(())
}

async fn list(pool: &db::Pool) -> anyhow::Result<()> {
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
    Ok(())
}

async fn remove(pool: &db::Pool, id: &str) -> anyhow::Result<()> {
    if !db::clients::delete_client(pool, id).await? {
        bail!("no client {id}");
    }
    println!("removed client {id}");
    Ok(())
}
