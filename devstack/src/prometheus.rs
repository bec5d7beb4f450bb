//! An ephemeral Prometheus server (Debian's `prometheus` package) on
//! loopback, scraping the given targets every 500 ms, with its storage in a
//! temporary directory. Queried through its HTTP API by the caller.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{free_port, keeper, wait_until, which, work_dir};

/// A running Prometheus; stopped when dropped.
pub struct Prometheus {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

impl Prometheus {
    /// Start Prometheus scraping `targets` (`job`, `host:port`) at `/metrics`.
    pub fn start(targets: &[(&str, String)]) -> Result<Prometheus> {
        let binary = which("prometheus").context(
            "prometheus is not installed (apt-get install prometheus; `make test` installs it)",
        )?;
        let dir = work_dir("prometheus")?;
        let port = free_port()?;
        let mut config = String::from(
            "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\nscrape_configs:\n",
        );
        for (job, address) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{address}']\n"
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let mut command = Command::new(binary);
        command
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log);
        let child = keeper::spawn(command).context("starting prometheus")?;
        let server = Prometheus {
            child: Some(child),
            dir,
            port,
        };
        let ready = wait_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !ready {
            let log =
                std::fs::read_to_string(server.dir.join("prometheus.log")).unwrap_or_default();
            bail!("prometheus did not listen on port {port}: {log}");
        }
        Ok(server)
    }

    /// Its base URL, e.g. `http://127.0.0.1:9090`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `promtool`, which comes with it.
    pub fn promtool() -> Option<PathBuf> {
        which("promtool")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
