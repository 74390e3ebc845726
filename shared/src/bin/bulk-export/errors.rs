//! What `bulk-export` prints when a command fails: one line per distinct cause (a cause already
//! said by the message before it is not repeated), and for the errors a newcomer meets first
//! (Postgres not reachable, no such database) what to do about them; serve.rs says what to do
//! about a port in use.

use std::str::FromStr;

/// The text printed after `error: ` for a failed command. `database_url` is the configured
/// DATABASE_URL, named (without its password) when the database cannot be reached.
pub(crate) fn describe(err: &anyhow::Error, database_url: Option<&str>) -> String {
    if let Some(pg) = err
        .chain()
        .find_map(|e| e.downcast_ref::<tokio_postgres::Error>())
    {
        if let Some(hint) = database_hint(pg, database_url) {
            return hint;
        }
    }
    chain_without_repeats(err.chain())
}

/// `a: b: c` from an error chain, leaving out each cause whose text the message so far already
/// contains (error types that embed their source's text would otherwise repeat it).
fn chain_without_repeats<'a>(
    chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut out = String::new();
    for e in chain {
        let text = e.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// `host:port` and database name of a Postgres URL, for messages (never the password).
fn database_target(url: &str) -> (String, String) {
    let without_query = url.split('?').next().unwrap_or(url);
    match tokio_postgres::Config::from_str(without_query) {
        Ok(cfg) => {
            let host = match cfg.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                #[cfg(unix)]
                Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
                None => "localhost".into(),
            };
            let port = cfg.get_ports().first().copied().unwrap_or(5432);
            let user = cfg.get_user().unwrap_or("postgres").to_string();
            let db = cfg.get_dbname().map(str::to_string).unwrap_or(user);
            (format!("{host}:{port}"), db)
        }
        Err(_) => ("(unparsable DATABASE_URL)".into(), "?".into()),
    }
}

fn database_hint(pg: &tokio_postgres::Error, database_url: Option<&str>) -> Option<String> {
    let (target, db) = database_target(database_url.unwrap_or(""));
    if let Some(dbe) = pg.as_db_error() {
        let code = dbe.code();
        if *code == tokio_postgres::error::SqlState::INVALID_CATALOG_NAME {
            return Some(format!(
                "the database \"{db}\" does not exist on the Postgres server at {target} (DATABASE_URL). \
                 Create it (`createdb -h {host} -p {port} {db}`), or run scripts/run-local.sh, which creates `fhir_bulk`; \
                 then `bulk-export migrate`",
                host = target.rsplit_once(':').map_or(target.as_str(), |(h, _)| h),
                port = target.rsplit_once(':').map_or("5432", |(_, p)| p),
            ));
        }
        if *code == tokio_postgres::error::SqlState::INVALID_PASSWORD
            || *code == tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            return Some(format!(
                "Postgres at {target} refused the login to database \"{db}\": {} (check the user and password in DATABASE_URL)",
                dbe.message()
            ));
        }
        return None;
    }
    // No answer from a server at all: the connection itself failed.
    let io = std::iter::successors(
        std::error::Error::source(pg),
        |e: &&(dyn std::error::Error + 'static)| e.source(),
    )
    .find_map(|e| e.downcast_ref::<std::io::Error>());
    let reason = match io {
        Some(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        Some(e) => e.to_string(),
        None if pg.is_closed() => "the connection was closed".into(),
        None => return None,
    };
    Some(format!(
        "cannot connect to Postgres at {target} (database \"{db}\", from DATABASE_URL): {reason}. \
         Is PostgreSQL running there (`pg_isready -h {host} -p {port}`)? scripts/run-local.sh installs and starts one",
        host = target.rsplit_once(':').map_or(target.as_str(), |(h, _)| h),
        port = target.rsplit_once(':').map_or("5432", |(_, p)| p),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("database: {0}")]
    struct Embeds(#[source] std::io::Error);

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let inner = std::io::Error::other("connection reset");
        let err = anyhow::Error::new(Embeds(inner)).context("connecting to the database");
        // Embeds prints its source's text itself: the chain would say it twice.
        assert_eq!(
            chain_without_repeats(err.chain()),
            "connecting to the database: database: connection reset"
        );
    }

    #[test]
    fn database_target_names_host_port_and_database_but_no_password() {
        let (t, db) = database_target("postgres://u:secret@db.example:6543/fhir?sslmode=require");
        assert_eq!((t.as_str(), db.as_str()), ("db.example:6543", "fhir"));
        let (t, db) = database_target("postgres://alice@127.0.0.1");
        assert_eq!((t.as_str(), db.as_str()), ("127.0.0.1:5432", "alice"));
    }
}
