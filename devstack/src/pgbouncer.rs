//! An ephemeral PgBouncer in transaction mode in front of an ephemeral
//! Postgres, with a server pool smaller than its clients, as production
//! deployments run it. Debian's PgBouncer (1.18) does not track prepared
//! statements, which is the case opsrun must work in. As root it runs as
//! the `postgres` user, since PgBouncer refuses to run as root.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::postgres::{SUPERUSER, as_user, run_as_user};
use crate::{Postgres, free_port, keeper, wait_until, which, work_dir};

/// A running PgBouncer; stopped when dropped.
pub struct PgBouncer {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

impl PgBouncer {
    /// Start PgBouncer with `pool_mode = transaction` in front of `postgres`,
    /// keeping at most `pool_size` server connections per database and user.
    pub fn start(postgres: &Postgres, pool_size: u32) -> Result<PgBouncer> {
        let binary = which("pgbouncer").context(
            "pgbouncer is not installed (apt-get install pgbouncer; `make test` installs it)",
        )?;
        let dir = work_dir("pgbouncer")?;
        let run_as = run_as_user()?;
        let port = free_port()?;
        std::fs::write(dir.join("users.txt"), format!("\"{SUPERUSER}\" \"\"\n"))?;
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n\
                 * = host=127.0.0.1 port={upstream}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {dir}/users.txt\n\
                 admin_users = {SUPERUSER}\n\
                 pool_mode = transaction\n\
                 default_pool_size = {pool_size}\n\
                 max_client_conn = 2000\n\
                 server_reset_query =\n\
                 logfile = {dir}/pgbouncer.log\n",
                upstream = postgres.port(),
                dir = dir.display(),
            ),
        )?;
        if let Some((uid, gid)) = run_as {
            for path in [
                dir.clone(),
                dir.join("users.txt"),
                dir.join("pgbouncer.ini"),
            ] {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .context("chown of the pgbouncer directory")?;
            }
        }
        let mut command = Command::new(binary);
        command
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_user(&mut command, run_as);
        let child = keeper::spawn(command).context("starting pgbouncer")?;
        let bouncer = PgBouncer {
            child: Some(child),
            dir,
            port,
        };
        let ready = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !ready {
            let log =
                std::fs::read_to_string(bouncer.dir.join("pgbouncer.log")).unwrap_or_default();
            bail!("pgbouncer did not listen on port {port}: {log}");
        }
        Ok(bouncer)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of `database` through the pooler.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
