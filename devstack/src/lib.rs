//! Ephemeral local Postgres (with PgBouncer) and Redis servers for the demo, the benchmark and
//! the tests: started from the installed binaries on free loopback ports, in
//! a temporary directory, and killed with the process that started them.
//! Not for production: no auth beyond loopback trust, fsync optional.

mod keeper;
mod otlp;
mod pgbouncer;
mod postgres;
mod prometheus;
mod redis;
mod redis_cluster;
mod redis_sentinel;
mod tls;

pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use pgbouncer::PgBouncer;
pub use postgres::{Postgres, PostgresOptions};
pub use prometheus::Prometheus;
pub use redis::Redis;
pub use redis_cluster::RedisCluster;
pub use redis_sentinel::RedisSentinel;
pub use tls::TestCa;

use anyhow::{Context, Result};

/// A Postgres and a Redis to use: the ones named by `DATABASE_URL` and
/// `REDIS_URL`, or ephemeral ones started for this process.
pub struct Stack {
    /// Connection URL of the database to use.
    pub database_url: String,
    /// Connection URL of the Redis server to use.
    pub redis_url: String,
    /// The ephemeral Postgres, when one was started.
    pub postgres: Option<Postgres>,
    /// The ephemeral Redis, when one was started.
    pub redis: Option<Redis>,
}

impl Stack {
    /// Use `DATABASE_URL`/`REDIS_URL` when set (non-empty), otherwise start
    /// ephemeral servers; the database `database` is created on an ephemeral
    /// Postgres.
    pub async fn from_env_or_start(database: &str, options: PostgresOptions) -> Result<Stack> {
        let env = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let (database_url, postgres) = match env("DATABASE_URL") {
            Some(url) => (url, None),
            None => {
                let pg = Postgres::start(options).context("starting an ephemeral postgres")?;
                let url = pg.create_database(database).await?;
                (url, Some(pg))
            }
        };
        let (redis_url, redis) = match env("REDIS_URL") {
            Some(url) => (url, None),
            None => {
                let r = Redis::start().context("starting an ephemeral redis-server")?;
                (r.url(), Some(r))
            }
        };
        Ok(Stack {
            database_url,
            redis_url,
            postgres,
            redis,
        })
    }
}

/// Replace the database name in a `postgres://` URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The directory for this process's servers, removing those of dead processes.
fn work_dir(kind: &str) -> Result<std::path::PathBuf> {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let root = std::env::temp_dir().join("opsrun-devstack");
    std::fs::create_dir_all(&root)?;
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid: Option<i32> = name.split('-').next().and_then(|p| p.parse().ok());
            // SAFETY: kill with signal 0 only checks whether the process exists.
            if let Some(pid) = pid
                && unsafe { libc::kill(pid, 0) } != 0
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = root.join(format!("{}-{kind}-{seq}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A program on PATH or in the system's binary directories.
fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"])
        .map(|dir| std::path::PathBuf::from(dir).join(program))
        .find(|path| path.is_file())
}

/// Wait until `ready` returns true, for at most `timeout`.
pub fn wait_until(timeout: std::time::Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if ready() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_is_replaced_in_urls() {
        use super::with_database as w;
        assert_eq!(w("postgres://u:p@h:5/db", "t1"), "postgres://u:p@h:5/t1");
        assert_eq!(
            w("postgres://u@h:5/db?sslmode=disable", "t1"),
            "postgres://u@h:5/t1?sslmode=disable"
        );
        assert_eq!(w("postgres://h:5", "t1"), "postgres://h:5/t1");
    }
}
