//! Test harness: one Postgres and one Redis per test binary (the ones in
//! DATABASE_URL/REDIS_URL, or ephemeral ones), a fresh database and a unique
//! Redis key prefix per test, so tests run in parallel without flushing.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use devstack::{PostgresOptions, Stack};
use opsrun::{Ledger, RunService, Transport, TransportConfig};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};
use tokio::sync::OnceCell;

static STACK: OnceCell<Stack> = OnceCell::const_new();
static SEQ: AtomicUsize = AtomicUsize::new(0);

/// The servers shared by this test binary.
pub async fn stack() -> &'static Stack {
    STACK
        .get_or_init(|| async {
            Stack::from_env_or_start("postgres", PostgresOptions::fast())
                .await
                .expect("starting test servers")
        })
        .await
}

/// One test's database, pool and Redis prefix.
pub struct TestEnv {
    pub database_url: String,
    pub redis_url: String,
    pub prefix: String,
    pub pool: PgPool,
    pub service: RunService,
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        let stack = stack().await;
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("t_{}_{}_{n}", std::process::id(), nanos() % 1_000_000);
        let mut admin = sqlx::PgConnection::connect(&stack.database_url)
            .await
            .expect("connecting as admin");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        Self::on_database(&devstack::with_database(&stack.database_url, &name)).await
    }

    /// A test environment on an existing database (migrated here).
    pub async fn on_database(database_url: &str) -> TestEnv {
        let stack = stack().await;
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let database_url = database_url.to_string();
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .connect(&database_url)
            .await
            .unwrap();
        let ledger = Ledger::new(pool.clone());
        ledger.migrate().await.unwrap();
        let prefix = format!("t{n}x{}", nanos() % 1_000_000_000);
        let mut config = TransportConfig::new(stack.redis_url.clone());
        config.prefix = prefix.clone();
        let transport = Transport::new(&config).unwrap();
        TestEnv {
            database_url,
            redis_url: stack.redis_url.clone(),
            prefix,
            pool,
            service: RunService::new(ledger, transport),
        }
    }

    pub fn ledger(&self) -> &Ledger {
        self.service.ledger()
    }

    pub fn stream(&self, queue: &str) -> String {
        format!("{}:queue:{queue}", self.prefix)
    }

    /// A raw Redis connection for assertions and forged entries.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    pub async fn xlen(&self, queue: &str) -> usize {
        redis::cmd("XLEN")
            .arg(self.stream(queue))
            .query_async(&mut self.redis().await)
            .await
            .unwrap()
    }

    pub async fn count_runs(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM operation_runs")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// A command for one of the workspace binaries, pointed at this test's
    /// database and prefix.
    pub fn command(&self, binary: &str) -> Command {
        let mut cmd = Command::new(bin_path(binary));
        cmd.env("DATABASE_URL", &self.database_url)
            .env("REDIS_URL", &self.redis_url)
            .env("OPSRUN_PREFIX", &self.prefix)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// Run `producer` with `args` and collect its output.
    pub fn producer(&self, args: &[&str]) -> Output {
        self.command("producer")
            .args(args)
            .output()
            .expect("running producer")
    }
}

/// Path of a workspace binary; `make test` builds them before the tests.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|p| p.parent()).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first (make test does)",
        path.display()
    );
    path
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Poll `check` until it returns Some, for at most `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// stdout of a finished command, parsed as one JSON object.
pub fn json_stdout(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
