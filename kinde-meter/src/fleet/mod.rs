//! Fleet mode (feature `fleet`): many replicas, one Redis, one request per key and
//! coalescing bucket to Kinde.
//!
//! Every replica keeps its own hot path and outbox. What changes is the sink: at each
//! window close a replica hands its records to Redis ([`HandoffSink`]), and deliverers
//! ([`Deliverer`], in any replica or in a `kinde-meter deliver` process) claim the fleet's
//! totals and send them to Kinde, one request per key and bucket, under one gate, one
//! token bucket and one in-flight limit for the whole fleet.
//!
//! - **Hand-off, exactly once.** A record's hand-off is one Lua script that adds it to its
//!   (key, bucket) entry unless a marker under its idempotency key says it was already
//!   added. The outbox sends a record under the same key until it is acknowledged, so a
//!   retry after a lost reply, or the journal's replay after a crash, adds nothing twice.
//!   The replica removes a marker a minute after Redis acknowledged it (the outbox never
//!   sends that record again), so Redis holds about a minute of markers per replica.
//! - **Delivery, fenced.** A claim moves an entry's pending usage into a *flight* with a
//!   lease and a fencing token. Only the token's holder can settle it (compare-and-set);
//!   a lease that runs out fences the holder off, and the flight is ambiguous, as a
//!   timeout is for a local reporter: resent (at-least-once) or handed back
//!   (at-most-once).
//! - **Redis down.** A hand-off that fails leaves the record in the replica's outbox (and
//!   journal), which retries it with backoff. The hot path never waits on Redis.
//!
//! Start it with [`Config::fleet`](crate::Config::fleet) (or `KINDE_METER_REDIS_URL`);
//! read the fleet's counters from any process with [`Fleet::stats`].

mod deliverer;
mod handoff;
mod keys;
mod scripts;
mod stats;

use std::time::Duration;

pub use deliverer::{Deliverer, StartError};
pub use handoff::{HandoffSink, HandoffStats, handoff_stats};
pub use stats::{Fleet, FleetStats, PendingEntry};

use crate::config::FleetSettings;

/// A connection that reconnects by itself, made on first use (inside a runtime).
fn connect(settings: &FleetSettings) -> redis::RedisResult<redis::aio::ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.redis_timeout))
        .set_response_timeout(Some(settings.redis_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    redis::Client::open(settings.url.as_str())?.get_connection_manager_lazy(config)
}

/// Whether nothing of the command was applied: the connection was refused, or Redis
/// refused the command before running it (`LOADING` while it reads its AOF, `READONLY`
/// on a replica after a failover, `OOM`, `MISCONF`). A plain `ERR` may come from inside a
/// script that wrote before it (see `handoff::refused`), so it is not one of these.
fn not_sent(e: &redis::RedisError) -> bool {
    e.is_connection_refusal()
        || match e.kind() {
            redis::ErrorKind::Server(kind) => kind != redis::ServerErrorKind::ResponseError,
            redis::ErrorKind::Extension => e.code() != Some(scripts::REFUSED),
            _ => false,
        }
}
