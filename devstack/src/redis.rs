//! An ephemeral redis-server: free port, no persistence, `noeviction`
//! (streams must never be evicted).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{free_port, keeper, wait_until, work_dir};

/// A running ephemeral Redis; killed when dropped.
pub struct Redis {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    extra: Vec<String>,
}

impl Redis {
    /// Start a server on a free port.
    pub fn start() -> Result<Redis> {
        Redis::start_with(&[])
    }

    /// Start a server on a free port with more `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Result<Redis> {
        let mut redis = Redis {
            child: None,
            dir: work_dir("redis")?,
            port: free_port()?,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        redis.launch()?;
        Ok(redis)
    }

    fn launch(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.dir.join("redis.log"))?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory-policy",
                "noeviction",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(log)
            .stderr(Stdio::null());
        self.child = Some(keeper::spawn(cmd).context(
            "starting redis-server (install it with apt-get install redis-server, or set REDIS_URL)",
        )?);
        if !wait_until(Duration::from_secs(10), || self.ping()) {
            bail!("redis-server did not answer PING on port {}", self.port);
        }
        Ok(())
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://` URL of this server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Start a server that also listens with TLS (certificates of `ca`) on
    /// a second free port; see [`Redis::tls_url`].
    pub fn start_tls(ca: &crate::TestCa) -> Result<(Redis, u16)> {
        Redis::start_tls_with(ca, &[])
    }

    /// [`Redis::start_tls`] with more `redis-server` arguments.
    pub fn start_tls_with(ca: &crate::TestCa, extra: &[&str]) -> Result<(Redis, u16)> {
        let tls_port = free_port()?;
        let (tls_port_text, cert, key, ca_file) = (
            tls_port.to_string(),
            ca.cert_file.display().to_string(),
            ca.key_file.display().to_string(),
            ca.ca_file.display().to_string(),
        );
        let mut args = vec![
            "--tls-port",
            &tls_port_text,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca_file,
            "--tls-auth-clients",
            "no",
        ];
        args.extend_from_slice(extra);
        Ok((Redis::start_with(&args)?, tls_port))
    }

    /// Send a command with `redis-cli` and return its output.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .context("running redis-cli")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Kill the server (all data is lost: there is no persistence).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill and start again on the same port, empty.
    pub fn restart_empty(&mut self) -> Result<()> {
        self.kill();
        self.launch()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
