//! An ephemeral Sentinel setup: a primary, a replica of it, and three
//! Sentinels watching them under the service name `opsrun` (quorum 2,
//! down after 1 s). Killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{Redis, free_port, keeper, wait_until, work_dir};

/// The service name the Sentinels monitor.
pub const SERVICE: &str = "opsrun";

/// A running primary, replica and three Sentinels.
pub struct RedisSentinel {
    servers: Vec<Redis>,
    sentinels: Vec<(Child, u16)>,
}

impl RedisSentinel {
    /// Start the primary, its replica and the Sentinels; wait until the
    /// Sentinels know the replica and agree on a quorum.
    pub fn start() -> Result<RedisSentinel> {
        let primary = Redis::start()?;
        let replica =
            Redis::start_with(&["--replicaof", "127.0.0.1", &primary.port().to_string()])?;
        if !wait_until(Duration::from_secs(20), || {
            replica
                .cli(&["INFO", "replication"])
                .is_ok_and(|info| info.contains("master_link_status:up"))
        }) {
            bail!("the replica did not catch up with the primary");
        }
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port()?;
            let dir = work_dir("sentinel")?;
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {SERVICE} 1000\n\
                     sentinel failover-timeout {SERVICE} 5000\n",
                    dir = dir.display(),
                    primary = primary.port(),
                ),
            )?;
            let log = std::fs::File::create(dir.join("sentinel.log"))?;
            let mut cmd = Command::new("redis-server");
            cmd.arg(&conf)
                .arg("--sentinel")
                .stdout(log)
                .stderr(Stdio::null());
            sentinels.push((keeper::spawn(cmd).context("starting a sentinel")?, port));
        }
        let setup = RedisSentinel {
            servers: vec![primary, replica],
            sentinels,
        };
        let ready = wait_until(Duration::from_secs(30), || {
            setup.sentinels.iter().all(|(_, port)| {
                let ask = |args: &[&str]| sentinel_cli(*port, args).unwrap_or_default();
                ask(&["SENTINEL", "ckquorum", SERVICE]).starts_with("OK")
                    && ask(&["SENTINEL", "replicas", SERVICE]).contains("slave")
            })
        });
        if !ready {
            bail!("the sentinels did not agree on a quorum with a known replica");
        }
        Ok(setup)
    }

    /// The `redis+sentinel://` URL naming the Sentinels and the service.
    pub fn url(&self) -> String {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|(_, port)| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+sentinel://{}/{SERVICE}", sentinels.join(","))
    }

    /// The port of the primary the Sentinels name now.
    pub fn primary_port(&self) -> Result<u16> {
        let (_, port) = self.sentinels[0];
        let answer = sentinel_cli(port, &["SENTINEL", "get-master-addr-by-name", SERVICE])?;
        answer
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .context("the sentinel named no primary")
    }

    /// SIGKILL the current primary; the Sentinels promote the replica.
    pub fn kill_primary(&mut self) -> Result<u16> {
        let port = self.primary_port()?;
        let server = self
            .servers
            .iter_mut()
            .find(|s| s.port() == port)
            .context("the primary is not one of ours")?;
        server.kill();
        Ok(port)
    }
}

fn sentinel_cli(port: u16, args: &[&str]) -> Result<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .context("running redis-cli")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for (child, _) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
