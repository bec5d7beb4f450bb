//! The pool of connections for non-blocking commands to one server. Each
//! connection is a multiplexed connection from the transport's origin (a
//! client carrying the TLS roots given by file, or the primary a Sentinel
//! names: two things deadpool-redis's manager cannot take). A connection checked out within the last
//! [`PING_IDLE_AFTER`] is handed out again without a check; an older one
//! is checked with UNWATCH + PING first, as deadpool-redis does. A
//! connection whose command failed is never handed out again unchecked: a
//! broken one leaves the pool at once, and one whose command timed out is
//! checked at its next checkout (closing it at once would drop a command
//! Redis may still apply, such as an XADD held by `CLIENT PAUSE`, which the
//! claim's fencing handles).

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};

use crate::config::PING_IDLE_AFTER;

/// Creates and checks pooled connections.
pub(super) struct Manager {
    pub(super) origin: super::connect::Origin,
    pub(super) config: AsyncConnectionConfig,
}

/// The pool of [`Manager`] connections.
pub(super) type Pool = managed::Pool<Manager>;

/// A pooled connection, and whether it must be checked before its next use.
pub(super) struct Pooled {
    pub(super) connection: MultiplexedConnection,
    suspect: bool,
}

impl managed::Manager for Manager {
    type Type = Pooled;
    type Error = RedisError;

    async fn create(&self) -> Result<Pooled, RedisError> {
        Ok(Pooled {
            connection: self.origin.connect(&self.config).await?,
            suspect: false,
        })
    }

    async fn recycle(&self, pooled: &mut Pooled, metrics: &Metrics) -> RecycleResult<RedisError> {
        if !pooled.suspect && metrics.last_used() < PING_IDLE_AFTER {
            return Ok(());
        }
        // One round trip: a WATCH left by a dropped transaction is cleared,
        // and the answer proves the connection still works.
        let (pong,): (String,) = redis::pipe()
            .cmd("UNWATCH")
            .ignore()
            .cmd("PING")
            .arg("opsrun")
            .query_async(&mut pooled.connection)
            .await?;
        if pong != "opsrun" {
            return Err(RecycleError::message("unexpected PING answer"));
        }
        pooled.suspect = false;
        Ok(())
    }
}

/// Whether a connection went back to the pool after a failed command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kept {
    Yes,
    No,
}

/// After a failed command: a connection whose command timed out is checked
/// before its next use; one whose socket failed, or whose reply could not be
/// read, leaves the pool. A server's refusal (BUSYGROUP, NOGROUP, WRONGTYPE)
/// leaves the connection as good as before.
pub(super) fn after_error(mut pooled: managed::Object<Manager>, error: &RedisError) -> Kept {
    if error.is_timeout() {
        pooled.suspect = true;
        Kept::Yes
    } else if error.is_io_error()
        || error.is_connection_dropped()
        || error.is_unrecoverable_error()
        // A primary demoted to a replica (Sentinel failover): the next
        // connection asks the Sentinels for the new one.
        || error.code() == Some("READONLY")
    {
        drop(managed::Object::take(pooled));
        Kept::No
    } else {
        Kept::Yes
    }
}
