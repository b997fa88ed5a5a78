//! The two ways mq-redis talks to Redis: one server (a reconnecting
//! multiplexed connection) or a Redis Cluster (redis-rs's cluster client,
//! which follows MOVED and ASK and refreshes its slot map on failover).

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};

/// The shared connection of a [`crate::RedisBroker`]: to one server, or to
/// a Redis Cluster. Either runs any command through redis-rs's
/// [`ConnectionLike`] (`cmd.query_async(&mut conn)`).
#[derive(Clone)]
#[non_exhaustive]
pub enum RedisConnection {
    /// One server, reconnected by redis-rs's connection manager.
    Single(ConnectionManager),
    /// A Redis Cluster: commands go to the node owning their key's slot.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConnection::Single(_) => "RedisConnection::Single",
            RedisConnection::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

/// `ConnectionLike` for an enum of a one-server and a cluster connection,
/// by delegation to the variant's, and `query_at`.
macro_rules! delegate_connection_like {
    ($ty:ident) => {
        impl ConnectionLike for $ty {
            fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
                match self {
                    $ty::Single(c) => c.req_packed_command(cmd),
                    $ty::Cluster(c) => c.req_packed_command(cmd),
                }
            }

            fn req_packed_commands<'a>(
                &'a mut self,
                cmd: &'a Pipeline,
                offset: usize,
                count: usize,
            ) -> RedisFuture<'a, Vec<Value>> {
                match self {
                    $ty::Single(c) => c.req_packed_commands(cmd, offset, count),
                    $ty::Cluster(c) => c.req_packed_commands(cmd, offset, count),
                }
            }

            fn get_db(&self) -> i64 {
                match self {
                    $ty::Single(c) => c.get_db(),
                    $ty::Cluster(c) => c.get_db(),
                }
            }
        }

        impl $ty {
            /// Runs a keyless `cmd` (`CLIENT ID`, `CLIENT UNBLOCK`, `WAIT`)
            /// on the primary that owns `key`'s slot (so it reaches the
            /// node a blocking read or a write on `key` went to); on one
            /// server, on that server.
            pub(crate) async fn query_at<T: FromRedisValue>(
                &mut self,
                key: &str,
                cmd: &Cmd,
            ) -> RedisResult<T> {
                match self {
                    $ty::Single(c) => cmd.query_async(c).await,
                    $ty::Cluster(c) => Ok(T::from_redis_value(route_to_key(c, key, cmd).await?)?),
                }
            }
        }
    };
}

delegate_connection_like!(RedisConnection);
delegate_connection_like!(ReaderConnection);

/// A consumer's own connection for blocking reads (no response timeout).
#[derive(Clone)]
pub(crate) enum ReaderConnection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

async fn route_to_key(cluster: &mut ClusterConnection, key: &str, cmd: &Cmd) -> RedisResult<Value> {
    let route = Route::new(slot(key.as_bytes()), SlotAddr::Master);
    cluster
        .route_command(
            cmd.clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
        )
        .await
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag
/// (the text between the first `{` and the next `}`, when not empty) or of
/// the whole key, modulo 16384.
pub(crate) fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&close| close > 0)
            .map(|close| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % 16384
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A connection that can be replaced: a cluster connection whose requests
/// all time out (redis-rs's cluster client can stay stuck after a node is
/// killed under load, its slot refresh waiting on dead connections) is
/// swapped for a new one, which reads the slot map afresh.
pub(crate) struct Slot {
    current: std::sync::RwLock<(u64, RedisConnection)>,
    renewing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (generation, conn) = self.get();
        f.debug_struct("Slot")
            .field("generation", &generation)
            .field("conn", &conn)
            .finish()
    }
}

impl Slot {
    pub(crate) fn new(conn: RedisConnection) -> Slot {
        Slot {
            current: std::sync::RwLock::new((0, conn)),
            renewing: tokio::sync::Mutex::new(()),
        }
    }

    /// The connection, and its generation (for [`Slot::renew`]).
    pub(crate) fn get(&self) -> (u64, RedisConnection) {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether renewing can help: a cluster connection (a single server's
    /// connection manager reconnects by itself).
    pub(crate) fn renewable(&self) -> bool {
        matches!(self.get().1, RedisConnection::Cluster(_))
    }

    /// Replaces generation `seen` with what `open` makes, once: callers
    /// that saw the same generation fail together, and only the first
    /// opens a connection. A failure to open keeps the old one. `None`
    /// when another caller renewed it already.
    pub(crate) async fn renew<F>(&self, seen: u64, open: F) -> Option<RedisResult<()>>
    where
        F: std::future::Future<Output = RedisResult<RedisConnection>>,
    {
        let _one = self.renewing.lock().await;
        if self.get().0 != seen {
            return None;
        }
        Some(open.await.map(|conn| {
            *self
                .current
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = (seen.wrapping_add(1), conn);
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_cluster_slots() {
        // Values printed by CLUSTER KEYSLOT on Redis 7.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"mq:{foo}"), 12182);
        assert_eq!(slot(b"mq:{foo}:retry:{g}"), 12182);
        assert_eq!(slot(b"{}foo"), slot(b"{}foo"));
        assert_ne!(slot(b"{}foo"), slot(b"foo"));
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
    }
}
