//! Connection settings shared by the binaries. The library never reads the
//! environment or argv itself: binaries collect values (clap, with `env`)
//! and resolve them here, so secrets can come from files instead of argv.

use std::path::Path;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::error::{Error, Result};

/// Default time to wait for a Postgres connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A pooled connection used this recently is handed out without a check.
/// sqlx pings every idle Postgres connection it hands out by default, and
/// deadpool-redis sends UNWATCH + PING on every checkout: one more round trip
/// per statement or command, which on a busy machine also waits for the
/// server to be scheduled. An idler connection is still checked first, as
/// HikariCP's `aliveBypassWindowMs` does. A restart that takes longer than
/// the window leaves every connection idle past it, so each is checked; one
/// that died within the window fails its next statement once, as any
/// statement may while the server is away, and is then let go (a Redis
/// command is then sent again on a fresh connection, see `transport`).
pub const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Pick a secret given directly (env var) or by a file holding it (`*_FILE`,
/// as Docker and Kubernetes mount secrets). Exactly one must be given.
pub fn resolve_secret(
    field: &'static str,
    direct: Option<&str>,
    file: Option<&Path>,
) -> Result<String> {
    match (direct.filter(|v| !v.is_empty()), file) {
        (Some(_), Some(_)) => Err(Error::invalid(
            field,
            "given both directly and as a file; give one",
        )),
        (Some(value), None) => Ok(value.to_string()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::invalid(field, format!("reading {}: {e}", path.display())))?;
            let value = text.trim();
            if value.is_empty() {
                return Err(Error::invalid(
                    field,
                    format!("{} is empty", path.display()),
                ));
            }
            Ok(value.to_string())
        }
        (None, None) => Err(Error::invalid(field, "is not set")),
    }
}

/// Parse a Postgres URL without connecting (so a bad URL is a configuration
/// error, reported before any I/O).
pub fn postgres_options(url: &str) -> Result<PgConnectOptions> {
    postgres_options_of("database_url", url)
}

/// [`postgres_options`] for the setting `field` (e.g. a replica's URL).
pub fn postgres_options_of(field: &'static str, url: &str) -> Result<PgConnectOptions> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(Error::invalid(
            field,
            "must start with postgres:// or postgresql://",
        ));
    }
    // No `extra_float_digits` startup parameter (sqlx sends one by
    // default): PgBouncer refuses connections that carry parameters it does
    // not know, and since Postgres 12 floats print exactly without it.
    let parsed = url.parse::<PgConnectOptions>().map_err(|e| {
        Error::invalid(
            field,
            format!(
                "not a valid postgres URL: {}",
                crate::sanitize::redact(&e.to_string())
            ),
        )
    })?;
    Ok(parsed.extra_float_digits(None))
}

/// Connect a pool of at most `max_connections`, failing after `timeout` when
/// the server cannot be reached. Connections idle for less than
/// [`PING_IDLE_AFTER`] are handed out without a ping.
pub async fn connect_postgres(
    options: PgConnectOptions,
    max_connections: u32,
    timeout: Duration,
) -> Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(timeout)
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_IDLE_AFTER {
                    sqlx::Connection::ping(connection).await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
        .map_err(crate::error::db("connecting to postgres"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_one_place() {
        assert_eq!(
            resolve_secret("database_url", Some("x"), None).unwrap(),
            "x"
        );
        assert!(resolve_secret("database_url", None, None).is_err());
        let dir = std::env::temp_dir().join(format!("opsrun-secret-{}", std::process::id()));
        std::fs::write(&dir, "postgres://u:p@h/db\n").unwrap();
        assert_eq!(
            resolve_secret("database_url", None, Some(&dir)).unwrap(),
            "postgres://u:p@h/db"
        );
        assert!(resolve_secret("database_url", Some("x"), Some(&dir)).is_err());
        std::fs::remove_file(dir).unwrap();
        assert!(postgres_options("not a url").is_err());
        assert!(postgres_options("postgres://u@127.0.0.1:5432/db").is_ok());
    }
}
