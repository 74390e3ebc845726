//! `auth_clients` and `auth_jtis`: registered SMART Backend Services clients and the client
//! assertion ids already used.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{DbError, Pool};

#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    pub client_id: String,
    /// The client's public keys, inline.
    pub jwks: Option<Value>,
    /// Or where to fetch them.
    pub jwks_url: Option<String>,
    /// Space-separated scopes the client may be granted.
    pub scopes: String,
}

pub async fn insert_client(pool: &Pool, c: &Client) -> Result<(), DbError> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO auth_clients (client_id, jwks, jwks_url, scopes) VALUES ($1, $2, $3, $4)
             ON CONFLICT (client_id) DO UPDATE SET jwks = excluded.jwks,
                 jwks_url = excluded.jwks_url, scopes = excluded.scopes",
            &[&c.client_id, &c.jwks, &c.jwks_url, &c.scopes],
        )
        .await?;
    Ok(())
}

pub async fn get_client(pool: &Pool, client_id: &str) -> Result<Option<Client>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT client_id, jwks, jwks_url, scopes FROM auth_clients WHERE client_id = $1",
            &[&client_id],
        )
        .await?;
    Ok(row.map(|r| Client {
        client_id: r.get(0),
        jwks: r.get(1),
        jwks_url: r.get(2),
        scopes: r.get(3),
    }))
}

pub async fn list_clients(pool: &Pool) -> Result<Vec<Client>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT client_id, jwks, jwks_url, scopes FROM auth_clients ORDER BY client_id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Client {
            client_id: r.get(0),
            jwks: r.get(1),
            jwks_url: r.get(2),
            scopes: r.get(3),
        })
        .collect())
}

pub async fn delete_client(pool: &Pool, client_id: &str) -> Result<bool, DbError> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "DELETE FROM auth_clients WHERE client_id = $1",
            &[&client_id],
        )
        .await?
        > 0)
}

/// Records a client assertion's `jti`; false when it was already used (a replay). Expired ids
/// are forgotten on the way.
pub async fn record_jti(
    pool: &Pool,
    client_id: &str,
    jti: &str,
    expires_at: DateTime<Utc>,
) -> Result<bool, DbError> {
    let client = pool.get().await?;
    client
        .execute(
            "DELETE FROM auth_jtis WHERE expires_at < now() - interval '1 minute'",
            &[],
        )
        .await?;
    let n = client
        .execute(
            "INSERT INTO auth_jtis (client_id, jti, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&client_id, &jti, &expires_at],
        )
        .await?;
    Ok(n == 1)
}
