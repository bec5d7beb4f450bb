//! An ephemeral PostgreSQL cluster: initdb in a temporary directory, trust
//! auth on 127.0.0.1, a free port. As root it runs as the `postgres` user,
//! since the server refuses to run as root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{free_port, keeper, wait_until, work_dir};

/// The role ephemeral clusters are created with.
pub(crate) const SUPERUSER: &str = "opsrun";

/// How the ephemeral cluster trades durability for speed.
#[derive(Debug, Clone, Copy)]
pub struct PostgresOptions {
    /// `fsync=on` (durable, realistic for benchmarks) or off (fast tests).
    pub fsync: bool,
    /// `max_connections`.
    pub max_connections: u32,
    /// `wal_writer_delay`: how long an asynchronous commit may stay in
    /// memory only (a crash test lengthens it to lose such commits for sure).
    pub wal_writer_delay: Duration,
}

impl PostgresOptions {
    /// Fast settings for tests and the demo.
    pub fn fast() -> Self {
        PostgresOptions {
            fsync: false,
            max_connections: 400,
            wal_writer_delay: Duration::from_millis(200),
        }
    }

    /// Durable settings for benchmarks.
    pub fn durable() -> Self {
        PostgresOptions {
            fsync: true,
            max_connections: 400,
            wal_writer_delay: Duration::from_millis(200),
        }
    }
}

/// A running ephemeral Postgres; stopped when dropped.
pub struct Postgres {
    child: Option<Child>,
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    options: PostgresOptions,
}

impl Postgres {
    /// initdb and start a cluster.
    pub fn start(options: PostgresOptions) -> Result<Postgres> {
        Postgres::start_with(options, None)
    }

    /// initdb and start a cluster that accepts TLS connections only, with
    /// the server certificate of `ca` (`hostssl` trust, `hostnossl` reject).
    pub fn start_tls(options: PostgresOptions, ca: &crate::TestCa) -> Result<Postgres> {
        Postgres::start_with(options, Some(ca))
    }

    fn start_with(options: PostgresOptions, tls: Option<&crate::TestCa>) -> Result<Postgres> {
        let bin = find_bindir()?;
        let dir = work_dir("pg")?;
        let run_as = run_as_user()?;
        let data = dir.join("data");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .context("chown of the postgres directory")?;
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_user(&mut initdb, run_as);
        let out = initdb.output().context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        if let Some(ca) = tls {
            require_tls(&data, ca, run_as)?;
        }
        let mut pg = Postgres {
            child: None,
            bin,
            dir,
            port: free_port()?,
            run_as,
            options,
        };
        pg.launch()?;
        Ok(pg)
    }

    fn launch(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.dir.join("postgres.log"))?;
        let mut cmd = Command::new(self.bin.join("postgres"));
        let on_off = |b: bool| if b { "on" } else { "off" };
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.display()))
            .arg("-c")
            .arg(format!("fsync={}", on_off(self.options.fsync)))
            .arg("-c")
            .arg(format!("full_page_writes={}", on_off(self.options.fsync)))
            .arg("-c")
            .arg(format!("max_connections={}", self.options.max_connections))
            .arg("-c")
            .arg(format!(
                "wal_writer_delay={}ms",
                self.options.wal_writer_delay.as_millis()
            ))
            .args([
                "-c",
                "shared_buffers=256MB",
                "-c",
                "log_min_messages=warning",
            ])
            .stdout(Stdio::null())
            .stderr(log);
        as_user(&mut cmd, self.run_as);
        self.child = Some(keeper::spawn(cmd).context("starting postgres")?);
        let ready = wait_until(Duration::from_secs(30), || {
            Command::new(self.bin.join("pg_isready"))
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    SUPERUSER,
                ])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        });
        if !ready {
            let log = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
            bail!("postgres did not become ready on port {}: {log}", self.port);
        }
        Ok(())
    }

    /// A streaming replica of this server (`pg_basebackup -R`), read-only,
    /// on a port of its own; stopped when dropped.
    pub fn start_replica(&self) -> Result<Postgres> {
        let dir = work_dir("pg-replica")?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .context("chown of the replica's directory")?;
        }
        let mut backup = Command::new(self.bin.join("pg_basebackup"));
        backup
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-R",
                "-X",
                "stream",
                "--no-sync",
                "--checkpoint=fast",
                "-h",
                "127.0.0.1",
            ])
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_user(&mut backup, self.run_as);
        let out = backup.output().context("running pg_basebackup")?;
        if !out.status.success() {
            bail!(
                "pg_basebackup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut replica = Postgres {
            child: None,
            bin: self.bin.clone(),
            dir,
            port: free_port()?,
            run_as: self.run_as,
            options: self.options,
        };
        replica.launch()?;
        Ok(replica)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Create `database` and return its URL.
    pub async fn create_database(&self, database: &str) -> Result<String> {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres")).await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(database)
                .fetch_one(&mut admin)
                .await?;
        if !exists {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE \"{}\"",
                database.replace('"', "")
            )))
            .execute(&mut admin)
            .await?;
        }
        Ok(self.url(database))
    }

    /// Kill the server at once (like a crash), then start it again on the
    /// same port and data; committed data survives through WAL recovery.
    pub fn crash_restart(&mut self) -> Result<()> {
        self.kill();
        self.launch()
    }

    /// Kill the server at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the server again after [`Postgres::kill`].
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        self.launch()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT = fast shutdown: backends are told to exit.
            // SAFETY: sending a signal to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let exited = wait_until(Duration::from_secs(5), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if !exited {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest installed server's bin directory.
fn find_bindir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("OPSRUN_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    match candidates.pop() {
        Some((_, bin)) => Ok(bin),
        None if Path::new("/usr/bin/postgres").exists() => Ok(PathBuf::from("/usr/bin")),
        None => bail!(
            "no PostgreSQL server found under /usr/lib/postgresql/*/bin; install it \
             (apt-get install postgresql) or set DATABASE_URL to a running server"
        ),
    }
}

/// As root, the uid/gid of the `postgres` user; otherwise run as ourselves.
pub(crate) fn run_as_user() -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() > 3 && fields[0] == "postgres" {
            return Ok(Some((fields[2].parse()?, fields[3].parse()?)));
        }
    }
    bail!(
        "running as root and no 'postgres' user exists; install the postgresql package or run as another user"
    )
}

/// Configure the cluster in `data` for TLS only: the certificate and key of
/// `ca` (copied in, owned by the server's user, the key private), and a
/// `pg_hba.conf` that trusts TLS connections on loopback and rejects plain
/// ones.
fn require_tls(data: &Path, ca: &crate::TestCa, run_as: Option<(u32, u32)>) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    for (from, name, mode) in [
        (&ca.cert_file, "server.crt", 0o644),
        (&ca.key_file, "server.key", 0o600),
    ] {
        let to = data.join(name);
        std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&to, Some(uid), Some(gid))?;
        }
    }
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))?;
    writeln!(
        conf,
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'"
    )?;
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
    )?;
    Ok(())
}

pub(crate) fn as_user(cmd: &mut Command, run_as: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
}
