//! An ephemeral Redis Cluster: masters with a replica each, every node an
//! ephemeral redis-server on a free loopback port, joined with
//! `redis-cli --cluster create`. Killed when dropped.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{Redis, wait_until};

/// A running ephemeral cluster.
pub struct RedisCluster {
    nodes: Vec<Redis>,
    /// The nodes' TLS ports, for a cluster started with TLS.
    tls_ports: Vec<u16>,
}

/// Cluster settings of every node.
const NODE_ARGS: &[&str] = &[
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "2000",
    // Replicas sync at once (the default waits 5 s to batch them): a
    // replica that never synced cannot take over.
    "--repl-diskless-sync-delay",
    "0",
];

impl RedisCluster {
    /// Start `masters` masters with `replicas` replicas each and wait until
    /// every node reports `cluster_state:ok`.
    pub fn start(masters: usize, replicas: usize) -> Result<RedisCluster> {
        let nodes = (0..masters * (1 + replicas))
            .map(|_| Redis::start_with(NODE_ARGS))
            .collect::<Result<Vec<_>>>()?;
        RedisCluster::join(nodes, Vec::new(), replicas, None)
    }

    /// [`RedisCluster::start`] with TLS (certificates of `ca`) between the
    /// nodes and to clients, which the nodes send to their TLS ports
    /// (`tls-cluster`); [`RedisCluster::url`] is then `rediss+cluster://`.
    /// The plain ports stay open for [`Redis::cli`].
    pub fn start_tls(masters: usize, replicas: usize, ca: &crate::TestCa) -> Result<RedisCluster> {
        let mut args = NODE_ARGS.to_vec();
        args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"]);
        let (nodes, tls_ports) = (0..masters * (1 + replicas))
            .map(|_| Redis::start_tls_with(ca, &args))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        RedisCluster::join(nodes, tls_ports, replicas, Some(ca))
    }

    /// Join `nodes` into a cluster with `redis-cli --cluster create` (over
    /// TLS when `ca` is given) and wait until it is healthy.
    fn join(
        nodes: Vec<Redis>,
        tls_ports: Vec<u16>,
        replicas: usize,
        ca: Option<&crate::TestCa>,
    ) -> Result<RedisCluster> {
        let cluster = RedisCluster { nodes, tls_ports };
        let mut create = Command::new("redis-cli");
        if let Some(ca) = ca {
            create.arg("--tls").arg("--cacert").arg(&ca.ca_file);
        }
        let out = create
            .arg("--cluster")
            .arg("create")
            .args(cluster.addresses())
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .context("running redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        if !wait_until(Duration::from_secs(30), || cluster.healthy()) {
            bail!("the cluster did not reach cluster_state:ok with every replica in sync");
        }
        Ok(cluster)
    }

    /// Whether every node answers, reports `cluster_state:ok`, and every
    /// replica is in sync with its master.
    pub fn healthy(&self) -> bool {
        self.nodes.iter().all(|n| {
            let ok = n
                .cli(&["CLUSTER", "INFO"])
                .is_ok_and(|info| info.contains("cluster_state:ok"));
            let synced = n.cli(&["INFO", "replication"]).is_ok_and(|info| {
                info.contains("role:master") || info.contains("master_link_status:up")
            });
            ok && synced
        })
    }

    /// Start the node on `port` again after [`RedisCluster::kill`], empty
    /// but with its cluster configuration: it rejoins, as a replica of the
    /// master that took over its slots.
    pub fn restart(&mut self, port: u16) -> Result<()> {
        let node = self.nodes.iter_mut().find(|n| n.port() == port);
        node.context("no node on that port")?.restart_empty()
    }

    /// SIGKILL the node listening on `port` (its replica takes over once
    /// the others see it fail).
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port() == port) {
            node.kill();
        }
    }

    /// The nodes' client addresses: their TLS ones on a TLS cluster.
    fn addresses(&self) -> Vec<String> {
        match self.tls_ports.is_empty() {
            true => self.nodes.iter().map(Redis::port).collect::<Vec<_>>(),
            false => self.tls_ports.clone(),
        }
        .into_iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect()
    }

    /// The `redis+cluster://` URL naming every node as a seed
    /// (`rediss+cluster://` on a TLS cluster).
    pub fn url(&self) -> String {
        let scheme = match self.tls_ports.is_empty() {
            true => "redis+cluster",
            false => "rediss+cluster",
        };
        format!("{scheme}://{}", self.addresses().join(","))
    }

    /// The nodes, masters and replicas.
    pub fn nodes(&self) -> &[Redis] {
        &self.nodes
    }

    /// Ports of the nodes that are masters now.
    pub fn master_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| {
                n.cli(&["ROLE"])
                    .is_ok_and(|role| role.lines().next() == Some("master"))
            })
            .map(Redis::port)
            .collect()
    }

    /// Ask `args` of any node that answers (one may have been killed).
    fn ask(&self, args: &[&str]) -> Result<String> {
        self.nodes
            .iter()
            .filter_map(|n| n.cli(args).ok())
            .find(|answer| !answer.trim().is_empty())
            .context("no cluster node answers")
    }

    /// The slot of `key`.
    pub fn slot_of(&self, key: &str) -> Result<u16> {
        self.ask(&["CLUSTER", "KEYSLOT", key])?
            .trim()
            .parse()
            .context("CLUSTER KEYSLOT")
    }

    /// Move `slots` slots (the lowest it serves first, keys and all) from
    /// the master on port `from` to the master on port `to`, with
    /// `redis-cli --cluster reshard`, as an operator would.
    pub fn reshard(&self, from: u16, to: u16, slots: usize) -> Result<()> {
        let id = |port: u16| -> Result<String> {
            let node = self.nodes.iter().find(|n| n.port() == port);
            let id = node
                .context("no node on that port")?
                .cli(&["CLUSTER", "MYID"])?;
            Ok(id.trim().to_string())
        };
        let out = Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &id(from)?, "--cluster-to", &id(to)?])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .output()
            .context("running redis-cli --cluster reshard")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster reshard failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The port of the master serving `key` now, from `CLUSTER NODES`
    /// (`<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <state> <slots…>`).
    pub fn master_of(&self, key: &str) -> Result<u16> {
        let slot = self.slot_of(key)?;
        let nodes = self.ask(&["CLUSTER", "NODES"])?;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (from, to) = range.split_once('-').unwrap_or((range, range));
                match (from.parse::<u16>(), to.parse::<u16>()) {
                    (Ok(from), Ok(to)) => (from..=to).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                let address = fields[1].split('@').next().unwrap_or_default();
                let port = address.rsplit_once(':').map(|(_, p)| p).unwrap_or_default();
                return port.parse().context("a node's port");
            }
        }
        bail!("no master serves slot {slot}")
    }
}
