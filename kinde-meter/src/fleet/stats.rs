//! Reading the fleet's state from any process: counters, pending entries, oldest age.

use std::collections::HashMap;
use std::time::Duration;

use super::keys::Keys;
use crate::config::FleetSettings;
use crate::config::{Config, ConfigError};

/// The fleet's counters and backlog, as Redis holds them (all deliverers together).
///
/// Values are delta usage; `*_records` count records of both meter types.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetStats {
    /// Records replicas handed off (each once).
    pub handoffs: u64,
    /// Delta usage Kinde accepted.
    pub delivered: u64,
    /// Records Kinde accepted (one request each).
    pub delivered_records: u64,
    /// Delta usage in attempts that may have been applied (timeouts after sending,
    /// 500/502/504, leases that ran out). Under at-least-once delivery Kinde may hold up
    /// to this much more than `delivered`.
    pub ambiguous: u64,
    /// Such attempts.
    pub ambiguous_records: u64,
    /// Delta usage Kinde rejected.
    pub rejected: u64,
    /// Records Kinde rejected.
    pub rejected_records: u64,
    /// Delta usage handed back under at-most-once delivery.
    pub unsent: u64,
    /// Records handed back.
    pub unsent_records: u64,
    /// 429 answers (each closed the fleet's gate).
    pub throttled: u64,
    /// Leases that ran out before their deliverer settled.
    pub expired_leases: u64,
    /// Entries (key and coalescing bucket) with usage not yet delivered, in flight or
    /// waiting.
    pub pending_entries: u64,
    /// Entries out for delivery now.
    pub in_flight: u64,
    /// How long the oldest undelivered usage has waited.
    pub oldest_pending: Option<Duration>,
}

/// What [`Fleet::stats`] reads in one round trip: counters, entries pending, in flight,
/// the oldest pending entry with its time, and Redis's clock.
type StatsReply = (
    HashMap<String, u64>,
    u64,
    u64,
    Vec<(String, u64)>,
    (u64, u64),
);

/// One entry with usage not yet delivered (see [`Fleet::pending`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingEntry {
    /// `agreement|feature|d or a|bucket`.
    pub entry: String,
    /// Handed off and not yet claimed.
    pub pending: u64,
    /// Out for delivery (0 when none).
    pub in_flight: u64,
    /// Failed attempts of the value in flight.
    pub attempts: u32,
}

/// A view of a fleet's Redis, to read its state.
///
/// ```no_run
/// # async fn f(config: kinde_meter::Config) -> Result<(), Box<dyn std::error::Error>> {
/// let fleet = kinde_meter::fleet::Fleet::new(&config)?;
/// let stats = fleet.stats().await?;
/// println!("{} delivered, {} entries pending", stats.delivered, stats.pending_entries);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Fleet {
    settings: FleetSettings,
    keys: Keys,
}

impl Fleet {
    /// The fleet `config` names ([`Config::fleet`]).
    ///
    /// # Errors
    ///
    /// When `config` has no fleet options, or they are invalid.
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        let settings = config.fleet_settings()?;
        Ok(Self {
            keys: Keys::new(&settings.namespace),
            settings,
        })
    }

    async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.redis_timeout))
            .set_response_timeout(Some(self.settings.redis_timeout));
        redis::Client::open(self.settings.url.as_str())?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// The fleet's counters and backlog.
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached.
    pub async fn stats(&self) -> redis::RedisResult<FleetStats> {
        let mut c = self.connection().await?;
        let (counters, pending, in_flight, oldest, time): StatsReply = redis::pipe()
            .hgetall(self.keys.stats())
            .zcard(self.keys.since())
            .zcard(self.keys.inflight())
            .zrange_withscores(self.keys.since(), 0, 0)
            .cmd("TIME")
            .query_async(&mut c)
            .await?;
        let now_ms = time.0 * 1000 + time.1 / 1000;
        let get = |name: &str| counters.get(name).copied().unwrap_or(0);
        Ok(FleetStats {
            handoffs: get("handoffs"),
            delivered: get("delivered"),
            delivered_records: get("delivered_records"),
            ambiguous: get("ambiguous"),
            ambiguous_records: get("ambiguous_records"),
            rejected: get("rejected"),
            rejected_records: get("rejected_records"),
            unsent: get("unsent"),
            unsent_records: get("unsent_records"),
            throttled: get("throttled"),
            expired_leases: get("expired_leases"),
            pending_entries: pending,
            in_flight,
            oldest_pending: oldest
                .first()
                .map(|(_, since)| Duration::from_millis(now_ms.saturating_sub(*since))),
        })
    }

    /// Up to `limit` entries with usage not yet delivered, oldest first.
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached.
    pub async fn pending(&self, limit: usize) -> redis::RedisResult<Vec<PendingEntry>> {
        let mut c = self.connection().await?;
        let stop = isize::try_from(limit)
            .unwrap_or(isize::MAX)
            .saturating_sub(1);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.keys.since())
            .arg(0)
            .arg(stop)
            .query_async(&mut c)
            .await?;
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET")
                .arg(self.keys.entry(&super::keys::EntryId(id.clone())))
                .arg(&["pending", "flight", "attempts"]);
        }
        let rows: Vec<(Option<u64>, Option<u64>, Option<u32>)> = pipe.query_async(&mut c).await?;
        Ok(ids
            .into_iter()
            .zip(rows)
            .map(|(entry, (pending, in_flight, attempts))| PendingEntry {
                entry,
                pending: pending.unwrap_or(0),
                in_flight: in_flight.unwrap_or(0),
                attempts: attempts.unwrap_or(0),
            })
            .collect())
    }
}

#[cfg(feature = "metrics")]
impl FleetStats {
    /// Publishes these figures through the `metrics` facade (feature `metrics`), under
    /// `kinde_meter_fleet_*`: counters for what the fleet did, gauges for its backlog.
    pub fn export(&self) {
        let counters = [
            ("kinde_meter_fleet_handoffs", self.handoffs),
            ("kinde_meter_fleet_delivered", self.delivered),
            (
                "kinde_meter_fleet_delivered_records",
                self.delivered_records,
            ),
            ("kinde_meter_fleet_ambiguous", self.ambiguous),
            ("kinde_meter_fleet_rejected", self.rejected),
            ("kinde_meter_fleet_unsent", self.unsent),
            ("kinde_meter_fleet_throttled", self.throttled),
            ("kinde_meter_fleet_expired_leases", self.expired_leases),
        ];
        for (name, value) in counters {
            metrics::counter!(name).absolute(value);
        }
        metrics::gauge!("kinde_meter_fleet_pending_entries").set(self.pending_entries as f64);
        metrics::gauge!("kinde_meter_fleet_in_flight").set(self.in_flight as f64);
        metrics::gauge!("kinde_meter_fleet_oldest_pending_seconds")
            .set(self.oldest_pending.map_or(0.0, |d| d.as_secs_f64()));
    }
}
