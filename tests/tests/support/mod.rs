//! Test harness: one Postgres and one Redis per test binary (the ones in
//! DATABASE_URL/REDIS_URL, or ephemeral ones), a fresh database and a unique
//! Redis key prefix per test, so tests run in parallel without flushing.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use devstack::{PostgresOptions, Stack};
use opsrun::{
    Ledger, Pooler, Run, RunId, RunRequest, RunService, Status, Transport, TransportConfig,
};
use serde_json::json;
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
    /// The URL the service and the binaries use (a pooler's, see
    /// [`TestEnv::through_pooler`]); `pool` is always direct.
    pub database_url: String,
    pub pooler: Pooler,
    pub redis_url: String,
    pub prefix: String,
    pub pool: PgPool,
    pub service: RunService,
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        Self::with_redis(&stack().await.redis_url).await
    }

    /// A test environment with a fresh database on the shared Postgres and
    /// the Redis (or Redis Cluster) at `redis_url`.
    pub async fn with_redis(redis_url: &str) -> TestEnv {
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
        Self::on_database_and_redis(
            &devstack::with_database(&stack.database_url, &name),
            redis_url,
        )
        .await
    }

    /// A test environment on an existing database (migrated here).
    pub async fn on_database(database_url: &str) -> TestEnv {
        Self::on_database_and_redis(database_url, &stack().await.redis_url).await
    }

    /// A test environment on the TLS Redis at `redis_url`, trusting `ca_file`.
    pub async fn with_redis_and_ca(redis_url: &str, ca_file: &std::path::Path) -> TestEnv {
        let mut env = Self::with_redis(redis_url).await;
        let mut config = TransportConfig::new(redis_url);
        config.prefix = env.prefix.clone();
        config.ca_file = Some(ca_file.to_path_buf());
        env.service = RunService::new(env.ledger().clone(), Transport::new(&config).unwrap());
        env
    }

    async fn on_database_and_redis(database_url: &str, redis_url: &str) -> TestEnv {
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
        let mut config = TransportConfig::new(redis_url);
        config.prefix = prefix.clone();
        let transport = Transport::new(&config).unwrap();
        TestEnv {
            database_url,
            pooler: Pooler::Direct,
            redis_url: redis_url.to_string(),
            prefix,
            pool,
            service: RunService::new(ledger, transport),
        }
    }

    /// A test environment on `database_url`'s database (migrated over that
    /// direct URL), whose service, binaries and workers reach it through the
    /// transaction-mode pooler at `pooled_url`; `pool` stays direct.
    pub async fn through_pooler(database_url: &str, pooled_url: &str) -> TestEnv {
        let mut env = Self::on_database(database_url).await;
        let options = opsrun::config::postgres_options(pooled_url).unwrap();
        let pool = opsrun::config::connect_postgres(options, 10, Duration::from_secs(5))
            .await
            .unwrap();
        let mut config = TransportConfig::new(&env.redis_url);
        config.prefix = env.prefix.clone();
        env.service = RunService::new(
            Ledger::behind(pool, Pooler::Transaction),
            Transport::new(&config).unwrap(),
        );
        env.database_url = pooled_url.to_string();
        env.pooler = Pooler::Transaction;
        env
    }

    /// The type registry the test workers use (written by `Worker::spawn`).
    pub fn registry(&self) -> opsrun::registry::Registry {
        opsrun::registry::Registry::load(&self.job_dir().join("handlers.toml"))
            .expect("test registry")
    }

    /// Where this test's job processes log their executions.
    pub fn job_dir(&self) -> PathBuf {
        std::env::temp_dir().join(format!("opsrun-worker-test-{}", self.prefix))
    }

    pub fn ledger(&self) -> &Ledger {
        self.service.ledger()
    }

    /// Write `registry` (TOML) to a file of this environment's; its path.
    pub fn write_registry(&self, registry: &str) -> PathBuf {
        let dir = self.job_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("registry-{}.toml", nanos()));
        std::fs::write(&path, registry).unwrap();
        path
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
            .env(
                "OPSRUN_DATABASE_POOLER",
                match self.pooler {
                    Pooler::Direct => "direct",
                    Pooler::Transaction => "transaction",
                },
            )
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

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Kept when a test failed, with the workers' logs, for diagnosis.
        if std::thread::panicking() {
            eprintln!("job and worker logs kept in {}", self.job_dir().display());
            return;
        }
        let _ = std::fs::remove_dir_all(self.job_dir());
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

/// A Postgres URL nobody listens on (connection refused).
pub fn unreachable_postgres_url() -> String {
    format!(
        "postgres://opsrun@127.0.0.1:{}/opsrun",
        devstack::free_port().unwrap()
    )
}

/// Run `cmd` with `input` on its stdin and collect its output.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Assert that a finished command exited with `code`, showing its stderr
/// when not; returns the stderr.
pub fn assert_exit(out: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    stderr
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

/// A child process killed when dropped.
pub struct Spawned(pub Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A worker process with a handlers file whose jobs log each execution.
pub struct Worker {
    pub child: Child,
    pub log: PathBuf,
}

impl Worker {
    pub fn spawn(env: &TestEnv, redis_url: &str, extra: &[&str]) -> Worker {
        let dir = env.job_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("executions.log");
        let handlers = dir.join("handlers.toml");
        // Each job appends "<run_id> <attempt>" to the log, then behaves as its type says.
        let record = format!(
            "echo \"$OPSRUN_RUN_ID $OPSRUN_ATTEMPT\" >> {}",
            log.display()
        );
        let script = |body: &str| format!("[\"sh\", \"-c\", '''{record}; {body}''']");
        std::fs::write(
            &handlers,
            format!(
                r#"
[types."test.succeed"]
command = {succeed}
[types."test.partial"]
command = {partial}
[types."test.fail"]
command = {fail}
[types."test.slow"]
command = {slow}
[types."test.timeout"]
command = {timeout}
time_limit = "1s"
[types."test.stdin"]
command = {stdin}
[types."test.long"]
command = {long}
[types."test.poison"]
command = {poison}
[types."test.flaky"]
command = {flaky}
max_attempts = 5
retry_backoff = "100ms"
retry_backoff_max = "200ms"
[types."test.throttled"]
command = {throttled}
retry_backoff = "100ms"
retry_backoff_max = "200ms"
[types."test.strict"]
command = {succeed}
identity = "strict"
identity_keys = ["schedule_id", "scheduled_for"]
[types."test.nonce"]
command = {succeed}
identity = "nonce"
[types."test.cancellable"]
command = {cancellable}
[types."test.brief"]
command = {brief}
[types."test.serial"]
command = {serial}
lease = "2s"
"#,
                succeed = script("exit 0"),
                partial = script(r#"echo progress; echo '{"summary_counts":{"total":10,"success":8,"failed":2,"skipped":0}}'"#),
                fail = script("echo 'connect postgres://app:hunter2secret@db/x failed, password=hunter2secret' >&2; exit 3"),
                slow = script("sleep 2"),
                brief = script("sleep 0.2"),
                // A second at a time: one that starts while another runs
                // says so; each notes when it is done.
                serial = script(&format!("mkdir {d}/busy 2>/dev/null || echo $OPSRUN_RUN_ID >> {d}/overlaps; sleep 1; rmdir {d}/busy; echo $OPSRUN_RUN_ID >> {d}/finished", d = dir.display())),
                long = script("sleep 3"),
                poison = script("kill -9 $PPID; sleep 5"),
                flaky = script("if [ \"$OPSRUN_ATTEMPT\" -lt 3 ]; then echo 'Throttled (retrying)' >&2; exit 75; fi"),
                throttled = script("echo 'Throttled (retrying)' >&2; exit 75"),
                timeout = script("sleep 30"),
                // Records its process group, and reports counts when told to stop.
                cancellable = script(&format!(r#"trap 'echo "{{\"summary_counts\":{{\"total\":5,\"success\":2,\"failed\":0,\"skipped\":3}}}}"; exit 0' TERM; echo $$ > {}/pgid-$OPSRUN_RUN_ID; sleep 30 & wait"#, dir.display())),
                stdin = script(&format!("cat > {}/stdin-$OPSRUN_RUN_ID.json; env | grep -c '^DATABASE_URL=' > {}/dburl-$OPSRUN_RUN_ID || true", dir.display(), dir.display())),
            ),
        )
        .unwrap();
        let child = env
            .command("worker")
            .env("REDIS_URL", redis_url)
            // Defaults through the environment, so `extra` flags override them.
            .env("OPSRUN_CONCURRENCY", "4")
            .env("OPSRUN_HEARTBEAT_INTERVAL", "1s")
            .env("OPSRUN_BLOCK", "500ms")
            .args(["--handlers", handlers.to_str().unwrap()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("worker-{}.log", nanos()))).unwrap())
            .spawn()
            .expect("spawning worker");
        Worker { child, log }
    }

    /// A worker on `registry` (TOML text), started by `command`, which the
    /// caller may give more environment first; its log goes to the job dir.
    pub fn spawn_with_registry(env: &TestEnv, registry: &str, mut command: Command) -> Worker {
        let dir = env.job_dir();
        let path = env.write_registry(registry);
        let child = command
            .env("OPSRUN_HEARTBEAT_INTERVAL", "1s")
            .env("OPSRUN_BLOCK", "500ms")
            .args(["--registry", path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("worker-{}.log", nanos()))).unwrap())
            .spawn()
            .expect("spawning worker");
        Worker {
            child,
            log: dir.join("executions.log"),
        }
    }

    pub fn executions(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn executions_of(&self, id: RunId) -> usize {
        self.executions()
            .iter()
            .filter(|l| l.split(' ').next() == Some(&id.to_string()))
            .count()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn enqueue(service: &RunService, tenant: i64, run_type: &str) -> Run {
    let request = RunRequest::new(tenant, run_type).inputs(json!({"n": nanos() as u64}));
    service.ensure_run(&request).await.unwrap().run
}

pub async fn completed(env: &TestEnv, run: &Run) -> Run {
    completed_within(env, run, Duration::from_secs(20)).await
}

/// `run` once it completed; panics after `limit`.
pub async fn completed_within(env: &TestEnv, run: &Run, limit: Duration) -> Run {
    wait_until(limit, || async {
        env.ledger()
            .get(run.tenant_id, run.id)
            .await
            .unwrap()
            .filter(|r| r.status == Status::Completed)
    })
    .await
    .unwrap_or_else(|| panic!("run {} on {} did not complete (lost?)", run.id, run.queue))
}

/// Wait for run `id` of `tenant` to complete, and check that it succeeded.
pub async fn assert_succeeds(env: &TestEnv, tenant: i64, id: i64) {
    let done = wait_until(Duration::from_secs(30), || async {
        env.ledger()
            .get(tenant, RunId(id))
            .await
            .unwrap()
            .filter(|r| r.status == Status::Completed)
    })
    .await
    .unwrap_or_else(|| panic!("run {id} of tenant {tenant} did not complete"));
    assert_eq!(
        done.outcome,
        opsrun::Outcome::Succeeded,
        "{:?}",
        done.failure_summary
    );
}

/// The audit after a fault: every accepted run completed successfully
/// within its attempts (none lost), and no run is left active (starts that
/// were refused were recorded failed).
pub async fn audit_accepted(env: &TestEnv, accepted: &[Run]) {
    for run in accepted {
        let done = completed_within(env, run, Duration::from_secs(60)).await;
        assert_eq!(
            done.outcome,
            opsrun::Outcome::Succeeded,
            "{:?}",
            done.failure_summary
        );
        assert!(
            done.attempt <= done.max_attempts,
            "run {} ran too often",
            run.id
        );
    }
    let active: i64 =
        sqlx::query_scalar("SELECT count(*) FROM operation_runs WHERE completed_at IS NULL")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(active, 0, "runs left active");
}

/// A reaper binary on short intervals (a round a second, lost dispatches
/// after 3 s), killed when dropped.
pub fn fast_reaper(env: &TestEnv, queues: &[String]) -> Killed {
    let mut cmd = env.command("reaper");
    if !queues.is_empty() {
        cmd.env("OPSRUN_QUEUES", queues.join(","));
    }
    fast_reaper_command(cmd)
}

/// [`fast_reaper`] on every queue, with the registry `registry` (TOML).
pub fn fast_reaper_with_registry(env: &TestEnv, registry: &str) -> Killed {
    let mut cmd = env.command("reaper");
    cmd.arg("--registry").arg(env.write_registry(registry));
    fast_reaper_command(cmd)
}

fn fast_reaper_command(mut cmd: Command) -> Killed {
    Killed(
        cmd.args([
            "--interval",
            "1s",
            "--redispatch-after",
            "3s",
            "--pending-idle",
            "5s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning reaper"),
    )
}

/// A child process killed when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait up to `limit` for `child` to exit; `None` when it is still running.
pub fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let started = std::time::Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
