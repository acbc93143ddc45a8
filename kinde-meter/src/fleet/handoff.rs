//! A replica's side: the [`Sink`] that hands each record to Redis instead of Kinde.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use super::keys::{EntryId, Keys, meter_type_code};
use super::scripts::Scripts;
use super::{FleetSettings, not_sent};
use crate::api::ApiError;
use crate::config::{Config, ConfigError, ErrorHook};
use crate::sink::{SendResult, Sink};
use crate::usage::{MeterError, UsageRecord};

/// What every [`HandoffSink`] of this process has done (see [`handoff_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandoffStats {
    /// Records added to the fleet's totals.
    pub handed_off: u64,
    /// Hand-offs Redis had already applied (a retry after a lost reply, or a journal's
    /// replay): nothing was added.
    pub already_applied: u64,
    /// Hand-offs that failed; their records wait in the replica's outbox (and journal)
    /// and are handed off again.
    pub failed: u64,
    /// Times Redis became unreachable (each is logged once, and passed to `on_error` as
    /// [`MeterError::FleetUnavailable`]).
    pub episodes: u64,
    /// Whether a hand-off sink of this process is failing now (its last hand-off failed).
    pub unavailable: bool,
}

static HANDED_OFF: AtomicU64 = AtomicU64::new(0);
static ALREADY_APPLIED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);
static EPISODES: AtomicU64 = AtomicU64::new(0);
/// Sinks whose last hand-off failed.
static FAILING: AtomicU64 = AtomicU64::new(0);

/// The hand-off counters of this process, summed over its reporters.
pub fn handoff_stats() -> HandoffStats {
    HandoffStats {
        handed_off: HANDED_OFF.load(Relaxed),
        already_applied: ALREADY_APPLIED.load(Relaxed),
        failed: FAILED.load(Relaxed),
        episodes: EPISODES.load(Relaxed),
        unavailable: FAILING.load(Relaxed) > 0,
    }
}

/// Hands records to the fleet's Redis, once each.
///
/// [`Config::fleet`] makes [`init`](crate::init) use it; build one yourself only to wrap
/// it (say, to count hand-offs) and start the reporter with
/// [`Reporter::start_with_sink`](crate::Reporter::start_with_sink) and the same config.
///
/// Its connection to Redis is made on the runtime of its first hand-off and lives there
/// (a reporter's worker runtime): hand off on that runtime only.
///
/// Its errors say what the outbox should do: Redis refusing the connection is
/// [`ApiError::NotSent`] (retried), a lost reply is [`ApiError::Transport`] or
/// [`ApiError::Timeout`]. Those may have been applied, and resending them is safe: the
/// marker under the record's idempotency key makes the second hand-off a no-op. That is
/// why a fleet replica delivers at least once whatever [`Config::delivery`] says (which
/// then governs the deliverers).
#[derive(Clone, Debug)]
pub struct HandoffSink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: FleetSettings,
    keys: Keys,
    scripts: Scripts,
    connection: OnceCell<redis::aio::ConnectionManager>,
    coalesce_secs: u64,
    gather: Duration,
    on_error: Option<ErrorHookDebug>,
    /// Whether the last hand-off failed: an episode is reported when this turns true.
    failing: AtomicBool,
    /// Markers of records handed off and acknowledged, by when: removed once the outbox
    /// can no longer send them again (see [`MARKER_KEPT`]).
    acknowledged: Mutex<VecDeque<(Instant, String)>>,
    marker_kept: Duration,
}

/// How long a replica without a journal keeps the marker of a record Redis
/// acknowledged. Its outbox never sends an acknowledged record again, so a minute is
/// only a margin.
const MARKER_KEPT: Duration = Duration::from_secs(60);
/// The same with a journal, whose settles are written without a sync: one the host
/// loses in a crash replays the record at the next start, so the marker must outlive the
/// write reaching the disk. Linux writes dirty pages back within about 35 s
/// (`dirty_expire_centisecs` 30 s plus the flusher's 5 s); five minutes leave a wide margin.
/// (Markers of a replica that dies are not removed by it, and wait for the replay.)
const MARKER_KEPT_JOURNALED: Duration = Duration::from_secs(300);
/// Markers removed per `UNLINK`.
const MARKERS_PER_UNLINK: usize = 512;

impl Drop for Inner {
    fn drop(&mut self) {
        if *self.failing.get_mut() {
            FAILING.fetch_sub(1, Relaxed);
        }
    }
}

/// The hook, shown as present or not.
struct ErrorHookDebug(ErrorHook);

impl std::fmt::Debug for ErrorHookDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("on_error")
    }
}

impl HandoffSink {
    /// The sink `config`'s fleet options describe.
    ///
    /// # Errors
    ///
    /// When `config` has no fleet options, or they are invalid.
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        let settings = config.fleet_settings()?;
        Ok(Self {
            inner: Arc::new(Inner {
                keys: Keys::new(&settings.namespace),
                scripts: Scripts::new(),
                connection: OnceCell::new(),
                coalesce_secs: config.coalesce_window.as_secs().max(1),
                gather: settings.gather.unwrap_or(config.flush_interval),
                on_error: config.on_error.clone().map(ErrorHookDebug),
                failing: AtomicBool::new(false),
                acknowledged: Mutex::new(VecDeque::new()),
                marker_kept: if config.journal_dir.is_some() {
                    MARKER_KEPT_JOURNALED
                } else {
                    MARKER_KEPT.max(config.flush_interval * 2)
                }
                .min(settings.marker_ttl / 4),
                settings,
            }),
        })
    }

    async fn connection(&self) -> Result<redis::aio::ConnectionManager, redis::RedisError> {
        let inner = &*self.inner;
        Ok(inner
            .connection
            .get_or_try_init(|| async { super::connect(&inner.settings) })
            .await?
            .clone())
    }

    async fn hand_off(&self, record: &UsageRecord) -> Result<bool, redis::RedisError> {
        let inner = &*self.inner;
        let mut connection = self.connection().await?;
        let id = EntryId::of(record, inner.coalesce_secs);
        let bucket = record.timestamp.unix_seconds() / inner.coalesce_secs;
        let applied: i64 = inner
            .scripts
            .handoff
            .key(inner.keys.marker(&record.idempotency_key))
            .key(inner.keys.entry(&id))
            .key(inner.keys.due())
            .key(inner.keys.since())
            .key(inner.keys.stats())
            .key(inner.keys.absolute_stamps())
            .arg(&id.0)
            .arg(record.value)
            .arg(meter_type_code(record.meter_type))
            .arg(record.timestamp.unix_seconds())
            .arg(millis(inner.settings.marker_ttl))
            .arg(millis(inner.gather))
            .arg(record.agreement.as_str())
            .arg(record.feature.as_str())
            .arg(bucket)
            .invoke_async(&mut connection)
            .await?;
        Ok(applied == 1)
    }

    /// Notes an acknowledged hand-off's marker, and removes the markers that are old
    /// enough. A failed removal leaves them to their time to live.
    async fn acknowledged(&self, record: &UsageRecord) {
        let now = Instant::now();
        let ready: Vec<String> = {
            let mut acknowledged = self
                .inner
                .acknowledged
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            acknowledged.push_back((now, self.inner.keys.marker(&record.idempotency_key)));
            let old = |at: &Instant| now.duration_since(*at) >= self.inner.marker_kept;
            let ready = acknowledged.iter().take_while(|(at, _)| old(at)).count();
            // In batches, so that removal costs a round trip per hundreds of hand-offs.
            if ready < MARKERS_PER_UNLINK
                && acknowledged
                    .front()
                    .is_none_or(|(at, _)| now.duration_since(*at) < self.inner.marker_kept * 2)
            {
                return;
            }
            acknowledged
                .drain(..ready.min(MARKERS_PER_UNLINK))
                .map(|(_, key)| key)
                .collect()
        };
        if ready.is_empty() {
            return;
        }
        if let Ok(mut connection) = self.connection().await {
            let removed: redis::RedisResult<i64> = redis::cmd("UNLINK")
                .arg(&ready)
                .query_async(&mut connection)
                .await;
            if let Err(e) = removed {
                tracing::debug!(target: "kinde_meter", "removing {} hand-off markers failed ({e}); they expire", ready.len());
            }
        }
    }

    fn failed(&self, error: &str) {
        FAILED.fetch_add(1, Relaxed);
        if !self.inner.failing.swap(true, Relaxed) {
            EPISODES.fetch_add(1, Relaxed);
            FAILING.fetch_add(1, Relaxed);
            tracing::warn!(
                target: "kinde_meter",
                "the fleet's Redis is unavailable ({error}); usage waits in this replica's outbox and is handed \
                 off when Redis is back"
            );
            if let Some(hook) = &self.inner.on_error {
                let e = MeterError::FleetUnavailable {
                    error: error.to_owned(),
                };
                // A panicking hook must not take the delivery task with it.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (hook.0)(&e)));
            }
        }
    }
}

impl Sink for HandoffSink {
    async fn send(&self, record: &UsageRecord, timeout: Duration) -> SendResult {
        // Redis integers are signed 64-bit.
        if i64::try_from(record.value).is_err() {
            return Err(ApiError::InvalidRequest {
                reason: format!(
                    "value {} is above the fleet's limit of {} per record",
                    record.value,
                    i64::MAX
                ),
            });
        }
        match tokio::time::timeout(timeout, self.hand_off(record)).await {
            Ok(Ok(applied)) => {
                if applied {
                    HANDED_OFF.fetch_add(1, Relaxed);
                } else {
                    ALREADY_APPLIED.fetch_add(1, Relaxed);
                }
                self.acknowledged(record).await;
                if self.inner.failing.swap(false, Relaxed) {
                    FAILING.fetch_sub(1, Relaxed);
                    tracing::info!(target: "kinde_meter", "the fleet's Redis is back; handing off again");
                }
                Ok(())
            }
            Ok(Err(e)) if refused(&e) => {
                // The script refused (a sum past 64 bits): resending fails the same way.
                Err(ApiError::InvalidRequest {
                    reason: format!("the fleet's Redis refused the hand-off: {e}"),
                })
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                Err(if not_sent(&e) {
                    ApiError::NotSent {
                        source: Box::new(e),
                    }
                } else {
                    ApiError::Transport {
                        source: Box::new(e),
                    }
                })
            }
            Err(_) => {
                self.failed("no answer in time");
                Err(ApiError::Timeout { after: timeout })
            }
        }
    }
}

/// Whether the script refused the hand-off itself (an entry's sum past 2⁶³): the same
/// hand-off would fail again. Any other error may have come after the script wrote (a
/// Redis before 7 wraps `READONLY` or `OOM` met inside a script in a plain `ERR`), so it
/// is retried, and the marker absorbs a second hand-off.
fn refused(e: &redis::RedisError) -> bool {
    e.code() == Some(super::scripts::REFUSED)
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
