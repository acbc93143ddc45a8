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

use std::fmt;
use std::time::Duration;

pub use deliverer::Deliverer;
pub use handoff::{HandoffSink, HandoffStats, handoff_stats};
pub use stats::{Fleet, FleetStats, PendingEntry};

use crate::config::ConfigError;

/// The fleet options of a [`Config`](crate::Config).
#[derive(Clone)]
pub(crate) struct FleetSettings {
    pub(crate) url: String,
    pub(crate) namespace: String,
    pub(crate) lease: Duration,
    pub(crate) gather: Option<Duration>,
    pub(crate) deliver: bool,
    pub(crate) marker_ttl: Duration,
    pub(crate) redis_timeout: Duration,
    /// What set the URL, for errors: the variable, or the builder method.
    pub(crate) source: &'static str,
}

impl FleetSettings {
    pub(crate) fn new(url: String) -> Self {
        Self {
            url,
            namespace: "kinde-meter".to_owned(),
            lease: Duration::from_secs(60),
            gather: None,
            deliver: true,
            marker_ttl: Duration::from_secs(24 * 3600),
            redis_timeout: Duration::from_secs(2),
            source: "Config::fleet",
        }
    }

    /// Checks what `init` needs: a URL redis can open, a usable namespace, a lease
    /// longer than a request.
    pub(crate) fn validate(&self, request_timeout: Duration) -> Result<(), ConfigError> {
        redis::Client::open(self.url.as_str()).map_err(|e| ConfigError::Malformed {
            var: self.source,
            reason: format!(
                "not a Redis URL ({}): expected redis://[:password@]host[:port][/db]",
                e.category()
            ),
        })?;
        if self.namespace.is_empty()
            || !self
                .namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(ConfigError::InvalidOption {
                option: "fleet_namespace",
                reason: format!(
                    "must be 1 or more ASCII letters, digits, `_`, `-` or `.` (got {:?})",
                    self.namespace
                ),
            });
        }
        if self.marker_ttl < Duration::from_secs(1) {
            return Err(ConfigError::InvalidOption {
                option: "fleet_marker_ttl",
                reason: "must be at least 1 s".to_owned(),
            });
        }
        if self.lease < request_timeout + Duration::from_secs(1) {
            return Err(ConfigError::InvalidOption {
                option: "fleet_lease",
                reason: format!(
                    "must be at least `request_timeout` plus 1 s ({:?}), so that a send ends before its lease",
                    request_timeout + Duration::from_secs(1)
                ),
            });
        }
        Ok(())
    }

    fn client(&self) -> redis::RedisResult<redis::Client> {
        redis::Client::open(self.url.as_str())
    }

    /// A connection that reconnects by itself, made on first use (inside a runtime).
    fn connect(&self) -> redis::RedisResult<redis::aio::ConnectionManager> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.redis_timeout))
            .set_response_timeout(Some(self.redis_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        self.client()?.get_connection_manager_lazy(config)
    }
}

impl fmt::Debug for FleetSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetSettings")
            .field("url", &redacted(&self.url))
            .field("namespace", &self.namespace)
            .field("lease", &self.lease)
            .field("gather", &self.gather)
            .field("deliver", &self.deliver)
            .finish_non_exhaustive()
    }
}

/// `url` without its password.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://<redacted>@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Whether nothing of the command was applied: the connection was refused, or the
/// server answered with an error other than the script's own (`LOADING` while it reads
/// its AOF, `READONLY` on a replica after a failover, `OOM`).
fn not_sent(e: &redis::RedisError) -> bool {
    e.is_connection_refusal()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let settings = FleetSettings::new("redis://:hunter2@127.0.0.1:6379/0".to_owned());
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("127.0.0.1:6379/0"), "{shown}");
    }

    #[test]
    fn a_bad_url_names_the_variable() {
        let mut settings = FleetSettings::new("http://127.0.0.1".to_owned());
        settings.source = "KINDE_METER_REDIS_URL";
        let e = settings.validate(Duration::from_secs(10)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("KINDE_METER_REDIS_URL is malformed"),
            "{e}"
        );
    }

    #[test]
    fn the_lease_outlasts_a_request() {
        let mut settings = FleetSettings::new("redis://127.0.0.1".to_owned());
        settings.lease = Duration::from_secs(5);
        let e = settings.validate(Duration::from_secs(10)).unwrap_err();
        assert!(e.to_string().contains("fleet_lease"), "{e}");
    }
}
