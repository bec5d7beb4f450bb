//! How the transport reaches Redis, by the form of its URL:
//!
//! - `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS): one
//!   server, through a pool of multiplexed connections (`pool`);
//! - `redis+cluster://[user:password@]host:port[,host:port…]` (or
//!   `rediss+cluster://`): a Redis Cluster found from its seed nodes,
//!   through redis-rs's cluster client, which routes each command to the
//!   master of its key's slot and follows `MOVED`, `ASK` and failovers;
//! - `redis+sentinel://[user:password@]host:port[,host:port…]/<service>[/db]`
//!   (or `rediss+sentinel://`): the primary that Sentinels name for
//!   `<service>`, asked again for every new connection, so that after a
//!   failover the pool's next connections go to the promoted replica (a
//!   connection to the old primary breaks, or answers READONLY once it is a
//!   replica, and leaves the pool).
//!
//! With `rediss`, the server's certificate is verified (rustls) against the
//! system's roots, or against the CA file given in the configuration; its
//! host name must match. `#insecure` (redis-rs's switch that turns the
//! checks off) is refused.
//!
//! The cluster rules the rest of the transport keeps: every command names
//! one key (a stream), pipelines hold commands for one stream only, a
//! blocking read has a connection of its own (a blocked connection stalls
//! every command queued behind it on that node), and queues are found on
//! every master, never on one node's keyspace.

use std::sync::Arc;
use std::time::Duration;

use deadpool::Runtime;
use redis::aio::MultiplexedConnection;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, TlsCertificates};
use tokio::sync::{Mutex, OnceCell};

use super::pool::{Manager, Pool};
use crate::error::{Error, Result};

/// The scheme suffix that selects a cluster.
const CLUSTER_SCHEMES: [(&str, &str); 2] = [
    ("redis+cluster://", "redis://"),
    ("rediss+cluster://", "rediss://"),
];

/// A Redis deployment the transport talks to.
#[derive(Clone)]
pub(super) enum Backend {
    /// One server (possibly behind TLS).
    Single {
        /// Connections for non-blocking commands.
        pool: Pool,
        /// For blocking readers' own connections.
        origin: Origin,
    },
    /// A Redis Cluster.
    Cluster(Arc<Cluster>),
}

/// A cluster: one shared connection (multiplexed to every node) for
/// non-blocking commands, opened at first use, and the seed nodes for
/// blocking readers' own connections.
pub(super) struct Cluster {
    nodes: Vec<String>,
    ca: Option<Vec<u8>>,
    command_timeout: Duration,
    shared: OnceCell<ClusterConnection>,
}

/// Where connections to one server come from.
#[derive(Clone)]
pub(super) enum Origin {
    /// A fixed address.
    Fixed(Box<redis::Client>),
    /// The primary that Sentinels name now.
    Sentinel(Arc<dyn PrimaryLookup>),
}

/// Asks for the current primary. A trait object, so that the futures
/// holding a transport do not carry the Sentinel client's type: proving
/// it `Send` and `Sync` inside every caller's future exceeded the
/// compiler's recursion limit.
pub(super) trait PrimaryLookup: Send + Sync {
    /// A client for the primary the Sentinels name now.
    fn primary(&self) -> futures::future::BoxFuture<'_, redis::RedisResult<redis::Client>>;
}

impl PrimaryLookup for Mutex<SentinelClient> {
    fn primary(&self) -> futures::future::BoxFuture<'_, redis::RedisResult<redis::Client>> {
        Box::pin(async move { self.lock().await.async_get_client().await })
    }
}

impl Origin {
    /// A new connection to the server (the current primary, for Sentinel).
    pub(super) async fn connect(
        &self,
        config: &AsyncConnectionConfig,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let client = match self {
            Origin::Fixed(client) => client.as_ref().clone(),
            Origin::Sentinel(sentinel) => sentinel.primary().await?,
        };
        client
            .get_multiplexed_async_connection_with_config(config)
            .await
    }
}

/// A blocking reader's own connection.
pub(super) enum ReadConnection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Backend {
    /// The backend `url` names; connects lazily, so this fails only on a
    /// URL that does not parse.
    pub(super) fn open(config: &super::TransportConfig) -> Result<Backend> {
        let url = config.url.as_str();
        let command_timeout = config.command_timeout;
        let redis_err = |source| Error::Redis {
            operation: "opening redis client".into(),
            source,
        };
        if url.contains("#insecure") {
            return Err(Error::invalid(
                "redis_url",
                "'#insecure' turns off TLS verification; remove it",
            ));
        }
        // rustls needs one process-wide crypto provider; ring is the one
        // this build carries (a second install is refused, harmlessly).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = match &config.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                Error::invalid(
                    "redis_ca_file",
                    format!("{}: cannot read: {e}", path.display()),
                )
            })?),
            None => None,
        };
        if let Some(nodes) = cluster_nodes(url)? {
            // Checked now so a bad node address is a configuration error.
            cluster_client(&nodes, ca.as_deref(), command_timeout, command_timeout)
                .map_err(redis_err)?;
            return Ok(Backend::Cluster(Arc::new(Cluster {
                nodes,
                ca,
                command_timeout,
                shared: OnceCell::new(),
            })));
        }
        let origin = match sentinel_client(url, ca.as_deref())? {
            Some(sentinel) => Origin::Sentinel(Arc::new(Mutex::new(sentinel))),
            None if url.contains(',') => {
                return Err(Error::invalid(
                    "redis_url",
                    "several hosts name a cluster or Sentinels: write redis+cluster://host:port,host:port \
                     or redis+sentinel://host:port,host:port/service",
                ));
            }
            None => Origin::Fixed(Box::new(
                match &ca {
                    Some(ca) => redis::Client::build_with_tls(url, certificates(ca)),
                    None => redis::Client::open(url),
                }
                .map_err(redis_err)?,
            )),
        };
        let manager = Manager {
            origin: origin.clone(),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(command_timeout))
                .set_response_timeout(Some(command_timeout)),
        };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(command_timeout))
            .create_timeout(Some(command_timeout))
            .recycle_timeout(Some(command_timeout))
            .build()
            .map_err(|e| Error::invalid("redis_url", format!("building the redis pool: {e}")))?;
        Ok(Backend::Single { pool, origin })
    }

    /// A connection of its own for blocking reads of up to `block`: its
    /// response timeout leaves a margin above BLOCK (the server may answer
    /// late, redis#12998).
    pub(super) async fn read_connection(
        &self,
        block: Duration,
    ) -> redis::RedisResult<ReadConnection> {
        let response_timeout = block + Duration::from_secs(5);
        match self {
            Backend::Single { origin, .. } => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(3)))
                    .set_response_timeout(Some(response_timeout));
                origin.connect(&config).await.map(ReadConnection::Single)
            }
            Backend::Cluster(cluster) => cluster_client(
                &cluster.nodes,
                cluster.ca.as_deref(),
                Duration::from_secs(3),
                response_timeout,
            )?
            .get_async_connection()
            .await
            .map(ReadConnection::Cluster),
        }
    }
}

impl Cluster {
    /// The shared connection, opened at first use (and again after a
    /// failed attempt).
    pub(super) async fn connection(&self) -> redis::RedisResult<ClusterConnection> {
        self.shared
            .get_or_try_init(|| async {
                cluster_client(
                    &self.nodes,
                    self.ca.as_deref(),
                    self.command_timeout,
                    self.command_timeout,
                )?
                .get_async_connection()
                .await
            })
            .await
            .cloned()
    }
}

/// A Sentinel client for a `redis+sentinel://` URL; `None` for another URL.
fn sentinel_client(url: &str, ca: Option<&[u8]>) -> Result<Option<SentinelClient>> {
    let (rest, tls) = match (
        url.strip_prefix("redis+sentinel://"),
        url.strip_prefix("rediss+sentinel://"),
    ) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => return Ok(None),
    };
    let bad = |why: &str| {
        Error::invalid(
            "redis_url",
            format!(
                "{why}: write redis+sentinel://[user:password@]host:port[,host:port]/service[/db]"
            ),
        )
    };
    let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no service name"))?;
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let mut sentinels = Vec::new();
    for host in hosts.split(',').filter(|h| !h.is_empty()) {
        let (name, port) = host
            .rsplit_once(':')
            .ok_or_else(|| bad("a sentinel without a port"))?;
        let port = port
            .parse()
            .map_err(|_| bad("a sentinel port is not a number"))?;
        sentinels.push(redis::ConnectionAddr::Tcp(name.to_string(), port));
    }
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let service = segments.next().ok_or_else(|| bad("no service name"))?;
    if sentinels.is_empty() {
        return Err(bad("no sentinel"));
    }
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut builder = SentinelClientBuilder::new(sentinels, service, SentinelServerType::Master)
        .map_err(|e| bad(&e.to_string()))?;
    if let Some(userinfo) = userinfo {
        let (user, password) = userinfo.split_once(':').unwrap_or(("", userinfo));
        if !user.is_empty() {
            builder = builder.set_client_to_redis_username(decode(user));
        }
        builder = builder.set_client_to_redis_password(decode(password));
    }
    if let Some(db) = segments.next() {
        builder =
            builder.set_client_to_redis_db(db.parse().map_err(|_| bad("the db is not a number"))?);
    }
    if tls {
        builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
        if let Some(ca) = ca {
            builder = builder.set_client_to_redis_certificates(certificates(ca));
        }
    }
    builder.build().map(Some).map_err(|e| bad(&e.to_string()))
}

/// The seed node URLs of a cluster URL; `None` for a single-server URL.
fn cluster_nodes(url: &str) -> Result<Option<Vec<String>>> {
    let Some((rest, scheme)) = CLUSTER_SCHEMES
        .iter()
        .find_map(|(cluster, single)| url.strip_prefix(cluster).map(|rest| (rest, *single)))
    else {
        return Ok(None);
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
        None => (String::new(), authority),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|host| format!("{scheme}{userinfo}{host}"))
        .collect();
    if nodes.is_empty() {
        return Err(Error::invalid(
            "redis_url",
            "a cluster URL names at least one node: redis+cluster://host:port,host:port",
        ));
    }
    Ok(Some(nodes))
}

fn cluster_client(
    nodes: &[String],
    ca: Option<&[u8]>,
    connection_timeout: Duration,
    response_timeout: Duration,
) -> redis::RedisResult<ClusterClient> {
    let mut builder = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
        .connection_timeout(connection_timeout)
        .response_timeout(response_timeout);
    if let Some(ca) = ca {
        builder = builder.certs(certificates(ca));
    }
    builder.build()
}

/// Trust the CA certificates of `ca` (PEM) instead of the system's roots.
fn certificates(ca: &[u8]) -> TlsCertificates {
    TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_seed_nodes() {
        assert_eq!(cluster_nodes("redis://h:1").unwrap(), None);
        assert_eq!(
            cluster_nodes("redis+cluster://a:7000,b:7001/").unwrap(),
            Some(vec!["redis://a:7000".into(), "redis://b:7001".into()])
        );
        assert_eq!(
            cluster_nodes("rediss+cluster://app:p%40ss@a:7000,b:7001").unwrap(),
            Some(vec![
                "rediss://app:p%40ss@a:7000".into(),
                "rediss://app:p%40ss@b:7001".into()
            ])
        );
        assert!(cluster_nodes("redis+cluster://").is_err());
    }
}
