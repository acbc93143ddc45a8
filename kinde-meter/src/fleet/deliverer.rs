//! The fleet's delivery side: claims due entries from Redis, sends each as one request
//! to Kinde, and settles it by compare-and-set on its fencing token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::FleetSettings;
use super::handoff::millis;
use super::keys::{EntryId, Keys};
use super::scripts::Scripts;
use crate::api::{
    AgreementId, ApiError, Client, Disposition, FeatureCode, MeterType, RequestOptions, Timestamp,
};
use crate::config::{Config, ConfigError, Delivery, ErrorHook, UnsentHook};
use crate::usage::{MeterError, UnsentReason, UnsentRecord, UsageRecord};

/// How often an idle deliverer looks for due entries.
const POLL: Duration = Duration::from_millis(100);
/// Below this much lease left, a claimed flight is put back rather than sent.
const MIN_SEND_TIME: Duration = Duration::from_millis(200);
/// Expired leases taken back per look.
const EXPIRED_PER_LOOK: u32 = 100;

/// A deliverer: a thread of its own that sends the fleet's totals to Kinde.
///
/// [`init`](crate::init) starts one in every replica unless
/// [`Config::fleet_deliverer`](crate::Config::fleet_deliverer) is `false`; a process that
/// only delivers (`kinde-meter deliver`) starts one with [`Deliverer::start`]. Any number
/// may run: a claim, not a timer, decides who sends what, and Redis keeps the fleet's
/// gate, token bucket ([`Config::requests_per_second`]) and in-flight limit
/// ([`Config::max_in_flight`]) for all of them.
///
/// Dropping it asks it to stop: it claims nothing more and lets the sends it has started
/// finish (at most [`Config::request_timeout`]). A send cut short by the process ending is
/// taken back when its lease runs out, as ambiguous.
#[derive(Debug)]
pub struct Deliverer {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    owner: String,
}

impl Deliverer {
    /// Starts a deliverer for `config`'s fleet, delivering with `config`'s client and
    /// policy.
    ///
    /// # Errors
    ///
    /// When `config` has no fleet options or is invalid, or the thread cannot start.
    pub fn start(config: &Config) -> Result<Self, StartError> {
        config.validate().map_err(StartError::Config)?;
        let settings = config.fleet_settings().map_err(StartError::Config)?;
        let client = config.client().map_err(StartError::Config)?;
        let owner = format!("{}-{:08x}", std::process::id(), fastrand::u32(..));
        let run = Arc::new(Run {
            keys: Keys::new(&settings.namespace),
            scripts: Scripts::new(),
            client,
            owner: owner.clone(),
            delivery: config.delivery,
            max_in_flight: config.max_in_flight,
            requests_per_second: config.requests_per_second,
            request_timeout: config
                .client
                .request_timeout
                .min(settings.lease.saturating_sub(Duration::from_secs(1))),
            backoff: (config.backoff_initial, config.backoff_max),
            gather: settings.gather.unwrap_or(config.flush_interval),
            on_error: config.on_error.clone(),
            on_unsent: config.on_unsent.clone(),
            settings,
        });
        let (stop, stopped) = oneshot::channel();
        let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("kinde-meter-deliver".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let _ = started_tx.send(Ok(()));
                        runtime.block_on(run.serve(stopped));
                        runtime.shutdown_background();
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                    }
                }
            })
            .map_err(StartError::Spawn)?;
        match started_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StartError::Spawn(e)),
            Err(_) => {
                return Err(StartError::Spawn(std::io::Error::other(
                    "the deliverer's thread exited at start",
                )));
            }
        }
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
            owner,
        })
    }

    /// The name this deliverer claims under (the process id and a random part).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Stops it and waits for the sends it started, for at most `timeout`. Returns
    /// whether it finished in time.
    pub fn stop(mut self, timeout: Duration) -> bool {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(thread) = self.thread.take() else {
            return true;
        };
        let deadline = std::time::Instant::now() + timeout;
        while !thread.is_finished() {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = thread.join();
        true
    }
}

impl Drop for Deliverer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Why a [`Deliverer`] could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid, or has no fleet options.
    Config(ConfigError),
    /// Its thread could not be started.
    Spawn(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "invalid kinde-meter configuration: {e}"),
            StartError::Spawn(e) => write!(f, "could not start the fleet deliverer's thread: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Config(e) => Some(e),
            StartError::Spawn(e) => Some(e),
        }
    }
}

/// One flight, as a claim returned it.
struct Flight {
    id: EntryId,
    token: String,
    record: Result<UsageRecord, String>,
    attempts: u32,
    /// When the claim's answer came (the lease started a little earlier).
    claimed_at: Instant,
}

/// What the hooks hear of a flight once it is settled.
enum After {
    Nothing,
    Report(MeterError),
    HandBack(UsageRecord, u32, String),
}

struct Run {
    settings: FleetSettings,
    keys: Keys,
    scripts: Scripts,
    client: Client,
    owner: String,
    delivery: Delivery,
    max_in_flight: usize,
    requests_per_second: f64,
    request_timeout: Duration,
    backoff: (Duration, Duration),
    gather: Duration,
    on_error: Option<ErrorHook>,
    on_unsent: Option<UnsentHook>,
}

impl Run {
    async fn serve(self: Arc<Self>, mut stop: oneshot::Receiver<()>) {
        let mut connection = match super::connect(&self.settings) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(target: "kinde_meter", "the fleet deliverer cannot use its Redis URL: {e}");
                return;
            }
        };
        let mut sends = JoinSet::new();
        let mut unavailable = false;
        loop {
            while sends.try_join_next().is_some() {}
            let wait = match self.look(&mut connection, &mut sends).await {
                Ok(wait) => {
                    if std::mem::take(&mut unavailable) {
                        tracing::info!(target: "kinde_meter", "the fleet deliverer reaches Redis again");
                    }
                    wait
                }
                Err(e) => {
                    if !std::mem::replace(&mut unavailable, true) {
                        tracing::warn!(target: "kinde_meter", "the fleet deliverer cannot reach Redis ({e}); it retries");
                    }
                    Duration::from_millis(250)
                }
            };
            tokio::select! {
                _ = &mut stop => break,
                () = tokio::time::sleep(wait) => {}
                Some(_) = sends.join_next(), if !sends.is_empty() => {}
            }
        }
        // Stopping: the sends under way finish and settle; nothing new is claimed.
        let finish = async { while sends.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(self.request_timeout + Duration::from_secs(2), finish).await;
    }

    /// Takes back expired leases and claims what is due. Returns how long to wait before
    /// the next look.
    async fn look(
        self: &Arc<Self>,
        connection: &mut ConnectionManager,
        sends: &mut JoinSet<()>,
    ) -> redis::RedisResult<Duration> {
        let expired: Vec<String> = self
            .scripts
            .expired
            .key(self.keys.inflight())
            .key(self.keys.stats())
            .arg(self.keys.entry_prefix())
            .arg(EXPIRED_PER_LOOK)
            .arg(&self.owner)
            .invoke_async(connection)
            .await?;
        for pair in expired.chunks_exact(2) {
            let run = Arc::clone(self);
            let id = EntryId(pair[0].clone());
            let token = pair[1].clone();
            let connection = connection.clone();
            sends.spawn(async move { run.expired(connection, id, token).await });
        }
        let room = self.max_in_flight.saturating_sub(sends.len());
        if room == 0 {
            return Ok(POLL);
        }
        let reply: Vec<String> = self
            .scripts
            .claim
            .key(self.keys.due())
            .key(self.keys.inflight())
            .key(self.keys.gate())
            .key(self.keys.bucket())
            .key(self.keys.fence())
            .key(self.keys.since())
            .arg(self.keys.entry_prefix())
            .arg(&self.owner)
            .arg(millis(self.settings.lease))
            .arg(self.max_in_flight)
            .arg(room)
            .arg(self.requests_per_second)
            .arg(self.requests_per_second.max(1.0))
            .invoke_async(connection)
            .await?;
        let claimed_at = Instant::now();
        let wait_ms = reply
            .get(1)
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0);
        match reply.first().map(String::as_str) {
            // Jittered, so that the fleet does not come back all at once.
            Some("gate") => Ok(Duration::from_millis(
                wait_ms + fastrand::u64(0..=wait_ms / 10 + 50),
            )),
            Some("rate") => Ok(Duration::from_millis(wait_ms.max(1))),
            Some("claimed") => {
                let flights: Vec<Flight> = reply
                    .get(2..)
                    .unwrap_or_default()
                    .chunks_exact(10)
                    .map(|fields| parse_flight(fields, claimed_at))
                    .collect();
                let claimed = !flights.is_empty();
                for flight in flights {
                    let run = Arc::clone(self);
                    let connection = connection.clone();
                    sends.spawn(async move { run.deliver(connection, flight).await });
                }
                Ok(if claimed { Duration::ZERO } else { POLL })
            }
            _ => Ok(POLL),
        }
    }

    /// Sends one flight and settles it. The hooks hear of it only once it is settled: a
    /// settle fenced off means another deliverer took the flight over, and it reports.
    async fn deliver(self: Arc<Self>, mut connection: ConnectionManager, flight: Flight) {
        // The lease ends `lease` after the claim, by Redis's clock; this side keeps a
        // second's margin for the settle.
        let lease_end =
            flight.claimed_at + self.settings.lease.saturating_sub(Duration::from_secs(1));
        let settling = connection.clone();
        let settle = |outcome, delay, letter: String| {
            let run = Arc::clone(&self);
            let mut connection = settling.clone();
            let (id, token) = (flight.id.clone(), flight.token.clone());
            async move {
                run.settle(
                    &mut connection,
                    &id,
                    &token,
                    outcome,
                    delay,
                    &letter,
                    lease_end,
                )
                .await
            }
        };
        let record = match flight.record {
            Ok(ref record) => record.clone(),
            Err(ref reason) => {
                // Written by a newer or foreign writer: kept as a dead letter, not guessed at.
                tracing::error!(target: "kinde_meter", "fleet entry {:?} cannot be read ({reason}); moved to the dead letters", flight.id.0);
                let letter =
                    serde_json::json!({ "entry": flight.id.0, "reason": reason }).to_string();
                settle("rejected", Duration::ZERO, letter).await;
                return;
            }
        };
        let time_left = lease_end.saturating_duration_since(Instant::now());
        if time_left < MIN_SEND_TIME {
            // Claimed too long ago to send and settle within the lease: not sent.
            settle("retry", Duration::ZERO, String::new()).await;
            return;
        }
        let options = RequestOptions::new()
            .idempotency_key(record.idempotency_key.clone())
            .timeout(self.request_timeout.min(time_left));
        let result = self
            .client
            .create_meter_usage_record_with_options(&record.request(), &options)
            .await;
        let attempts = flight.attempts + 1;
        let (outcome, delay, letter, after) = match result {
            Ok(_) => ("ok", Duration::ZERO, String::new(), After::Nothing),
            Err(error) => match error.disposition() {
                Disposition::NotApplied => {
                    if let ApiError::Throttled { retry_after, .. } = &error {
                        let wait = retry_after.unwrap_or(Duration::from_secs(1));
                        self.close_gate(&mut connection, wait).await;
                    }
                    let delay = self.backoff(attempts);
                    ("retry", delay, String::new(), After::Nothing)
                }
                Disposition::Ambiguous => match self.delivery {
                    Delivery::AtLeastOnce => (
                        "ambiguous",
                        self.backoff(attempts),
                        String::new(),
                        After::Report(MeterError::Ambiguous {
                            record,
                            attempts,
                            error: error.to_string(),
                        }),
                    ),
                    Delivery::AtMostOnce => (
                        "ambiguous_unsent",
                        Duration::ZERO,
                        letter(&record, "ambiguous", &error.to_string()),
                        After::HandBack(record, attempts, error.to_string()),
                    ),
                },
                _ => (
                    "rejected",
                    Duration::ZERO,
                    letter(&record, "rejected", &error.to_string()),
                    After::Report(MeterError::Rejected { record, error }),
                ),
            },
        };
        if settle(outcome, delay, letter).await {
            self.tell(after);
        }
    }

    /// Settles a flight whose lease ran out under another deliverer: its send may have
    /// reached Kinde.
    async fn expired(
        self: Arc<Self>,
        mut connection: ConnectionManager,
        id: EntryId,
        token: String,
    ) {
        let fields: redis::RedisResult<Vec<Option<String>>> = redis::cmd("HMGET")
            .arg(self.keys.entry(&id))
            .arg(&[
                "flight",
                "fstamp",
                "lineage",
                "attempts",
                "agreement",
                "feature",
                "type",
            ])
            .query_async(&mut connection)
            .await;
        let Ok(fields) = fields else {
            // Taken back again once this token's own lease runs out.
            return;
        };
        let field = |i: usize| fields.get(i).cloned().flatten().unwrap_or_default();
        let record = record_of(
            &id,
            &field(0),
            &field(1),
            &field(2),
            &field(4),
            &field(5),
            &field(6),
        );
        let attempts = field(3).parse::<u32>().unwrap_or(0) + 1;
        let error = "the lease of the deliverer that sent it ran out before it settled".to_owned();
        let (outcome, letter, after) = match (record, self.delivery) {
            (Ok(record), Delivery::AtLeastOnce) => (
                "ambiguous",
                String::new(),
                After::Report(MeterError::Ambiguous {
                    record,
                    attempts,
                    error,
                }),
            ),
            (Ok(record), Delivery::AtMostOnce) => (
                "ambiguous_unsent",
                letter(&record, "ambiguous", &error),
                After::HandBack(record, attempts, error),
            ),
            (Err(reason), _) => (
                "rejected",
                serde_json::json!({ "entry": id.0, "reason": reason }).to_string(),
                After::Nothing,
            ),
        };
        // EXPIRED gave this token a minute.
        let until = Instant::now() + Duration::from_secs(50);
        let settled = self
            .settle(
                &mut connection,
                &id,
                &token,
                outcome,
                Duration::ZERO,
                &letter,
                until,
            )
            .await;
        if settled {
            self.tell(after);
        }
    }

    /// Settles by compare-and-set, retrying while Redis is unreachable, until `until`
    /// (the lease's end: a settle that never lands is taken back then, as ambiguous).
    /// Returns whether it settled.
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        connection: &mut ConnectionManager,
        id: &EntryId,
        token: &str,
        outcome: &str,
        delay: Duration,
        letter: &str,
        until: Instant,
    ) -> bool {
        let mut attempt = 0u32;
        loop {
            let settled: redis::RedisResult<i64> = self
                .scripts
                .settle
                .key(self.keys.entry(id))
                .key(self.keys.inflight())
                .key(self.keys.due())
                .key(self.keys.since())
                .key(self.keys.stats())
                .key(self.keys.dead())
                .key(self.keys.absolute_stamps())
                .arg(&id.0)
                .arg(token)
                .arg(outcome)
                .arg(millis(delay))
                .arg(millis(self.gather))
                .arg(letter)
                .invoke_async(connection)
                .await;
            match settled {
                Ok(1) => return true,
                Ok(_) => {
                    tracing::warn!(target: "kinde_meter", "fleet entry {:?}: this deliverer's lease ran out before it settled ({outcome}); another deliverer took it over", id.0);
                    return false;
                }
                Err(e) => {
                    attempt += 1;
                    let pause = Duration::from_millis(200) * attempt.min(5);
                    if Instant::now() + pause >= until {
                        tracing::warn!(target: "kinde_meter", "fleet entry {:?}: could not settle ({e}) before its lease ends; it will be taken back as ambiguous", id.0);
                        return false;
                    }
                    tracing::debug!(target: "kinde_meter", "settling fleet entry {:?} failed ({e}); retrying", id.0);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Tells the hooks what a settled flight came to.
    fn tell(&self, after: After) {
        match after {
            After::Nothing => {}
            After::Report(error) => self.report(&error),
            After::HandBack(record, attempts, error) => {
                self.hand_back(record, attempts, Some(error));
            }
        }
    }

    async fn close_gate(&self, connection: &mut ConnectionManager, wait: Duration) {
        let wait = wait + Duration::from_millis(fastrand::u64(0..=250));
        let closed: redis::RedisResult<i64> = self
            .scripts
            .gate
            .key(self.keys.gate())
            .key(self.keys.stats())
            .arg(millis(wait).max(1))
            .invoke_async(connection)
            .await;
        if let Err(e) = closed {
            tracing::debug!(target: "kinde_meter", "closing the fleet's gate failed: {e}");
        }
    }

    /// Capped exponential backoff with full jitter.
    fn backoff(&self, attempts: u32) -> Duration {
        let (initial, max) = self.backoff;
        let cap = initial.saturating_mul(1 << attempts.min(20)).min(max);
        Duration::from_millis(fastrand::u64(0..=millis(cap)))
    }

    fn report(&self, error: &MeterError) {
        tracing::warn!(target: "kinde_meter", "{error}");
        if let Some(hook) = &self.on_error {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(error)));
        }
    }

    fn hand_back(&self, record: UsageRecord, attempts: u32, last_error: Option<String>) {
        tracing::warn!(target: "kinde_meter", "fleet: handing back {} of `{}` for {} (at-most-once): an attempt may have been applied", record.value, record.feature, record.agreement);
        if let Some(hook) = &self.on_unsent {
            let unsent = [UnsentRecord {
                record,
                reason: UnsentReason::Ambiguous,
                maybe_applied: true,
                attempts,
                last_error,
            }];
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(&unsent)));
        }
    }
}

fn parse_flight(fields: &[String], claimed_at: Instant) -> Flight {
    let id = EntryId(fields[0].clone());
    let record = record_of(
        &id, &fields[2], &fields[3], &fields[4], &fields[7], &fields[8], &fields[9],
    );
    Flight {
        token: fields[1].clone(),
        attempts: fields[5].parse().unwrap_or(0),
        record,
        id,
        claimed_at,
    }
}

/// The record a flight sends.
fn record_of(
    id: &EntryId,
    value: &str,
    stamp: &str,
    lineage: &str,
    agreement: &str,
    feature: &str,
    meter_type: &str,
) -> Result<UsageRecord, String> {
    let value = value
        .parse::<u64>()
        .map_err(|_| format!("value {value:?}"))?;
    let timestamp = stamp
        .parse::<u64>()
        .ok()
        .and_then(|s| Timestamp::from_unix_seconds(s).ok())
        .ok_or_else(|| format!("timestamp {stamp:?}"))?;
    let agreement = AgreementId::new(agreement).map_err(|e| e.to_string())?;
    let feature = FeatureCode::new(feature).map_err(|e| e.to_string())?;
    let meter_type = match meter_type {
        "a" => MeterType::Absolute,
        "d" => MeterType::Delta,
        other => return Err(format!("meter type {other:?}")),
    };
    if lineage.is_empty() {
        return Err("no lineage".to_owned());
    }
    Ok(UsageRecord {
        customer: None,
        idempotency_key: id.idempotency_key(lineage),
        agreement,
        feature,
        meter_type,
        value,
        timestamp,
    })
}

/// A dead letter: the record and why it was not delivered.
fn letter(record: &UsageRecord, reason: &str, error: &str) -> String {
    serde_json::json!({ "record": record, "reason": reason, "error": error }).to_string()
}
