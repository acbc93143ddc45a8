//! The flush worker: its own OS thread with a private current-thread tokio runtime, so it
//! runs whatever the application runs (no runtime, a current-thread or a multi-thread one)
//! and outlives the application's runtime. It turns cells into records every interval,
//! sends them under the [`Outbox`] policy, and drains on `flush` and `shutdown`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;

use super::events::{FlushReport, ShutdownReport};
use super::outbox::{Event, Outbox, Policy, Record, Wait};
use super::shared::{Shared, add};
use crate::api::{
    ApiError, Client, CreateMeterUsageRecordRequest, RequestOptions, Timestamp, deadline_after,
};
use crate::usage::{MeterError, UnsentReason, UnsentRecord};

/// A request is not started with less time than this left before a deadline.
const MIN_ATTEMPT: Duration = Duration::from_millis(20);

pub(crate) struct Settings {
    pub(crate) flush_interval: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) policy: Policy,
}

/// Where the worker sends an answer: to an async caller or a blocking one.
pub(crate) enum Reply<T> {
    Async(oneshot::Sender<T>),
    Blocking(std::sync::mpsc::SyncSender<T>),
}

impl<T> Reply<T> {
    fn send(self, value: T) {
        // The caller may have stopped waiting (its own timeout); nothing to do then.
        match self {
            Reply::Async(tx) => drop(tx.send(value)),
            Reply::Blocking(tx) => drop(tx.send(value)),
        }
    }
}

pub(crate) enum Command {
    Flush {
        deadline: Instant,
        reply: Reply<FlushReport>,
    },
    Shutdown {
        deadline: Instant,
        reply: Reply<ShutdownReport>,
    },
}

pub(crate) struct Worker {
    shared: Arc<Shared>,
    client: Client,
    settings: Settings,
    outbox: Outbox,
    sending: HashMap<Id, Record>,
    tasks: JoinSet<Result<(), ApiError>>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// In a failure episode: warned once, quiet until a success.
    failing: bool,
    /// Dropped when this worker stops taking commands (see [`Worker::on_stop`]).
    on_stop: Option<Box<dyn FnOnce() + Send>>,
    /// (feature, status) pairs already logged as rejected.
    rejections_logged: HashSet<(String, Option<u16>)>,
}

impl Worker {
    pub(crate) fn new(
        shared: Arc<Shared>,
        client: Client,
        settings: Settings,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        let outbox = Outbox::new(
            settings.policy.clone(),
            Instant::now(),
            fastrand::Rng::new(),
        );
        Self {
            shared,
            client,
            settings,
            outbox,
            sending: HashMap::new(),
            tasks: JoinSet::new(),
            commands,
            failing: false,
            on_stop: None,
            rejections_logged: HashSet::new(),
        }
    }

    /// Runs `f` once this worker has shut down, before it answers the shutdown (or when
    /// it is dropped): the global reporter marks itself free to start again there, so a
    /// caller that stopped waiting (a cancelled `shutdown`) does not keep it taken.
    pub(crate) fn on_stop(&mut self, f: impl FnOnce() + Send + 'static) {
        self.on_stop = Some(Box::new(f));
    }

    fn stopped(&mut self) {
        if let Some(f) = self.on_stop.take() {
            f();
        }
    }

    /// Serves commands until a shutdown. Callable again after it unwinds (see
    /// [`Worker::salvage`]).
    pub(crate) async fn run(&mut self) {
        let interval = self.settings.flush_interval;
        let mut next_flush = deadline_after(interval);
        loop {
            let wake = match self.dispatch(None) {
                Wait::Until(t) => t.min(next_flush),
                Wait::InFlight | Wait::Idle => next_flush,
            };
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Flush { deadline, reply }) => {
                        let report = self.drain_until(deadline).await;
                        reply.send(report);
                    }
                    Some(Command::Shutdown { deadline, reply }) => {
                        let report = self.shutdown(deadline).await;
                        self.stopped();
                        reply.send(report);
                        return;
                    }
                    // Every handle is gone without a shutdown (the thread that held the
                    // last one failed): hand everything back, nobody can wait for it.
                    None => {
                        self.shutdown(Instant::now()).await;
                        self.stopped();
                        return;
                    }
                },
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => self.finished(joined),
                () = self.shared.registry.flush_wanted() => {
                    self.flush();
                    next_flush = deadline_after(interval);
                }
                () = tokio::time::sleep_until(wake) => {}
            }
            if Instant::now() >= next_flush {
                self.flush();
                next_flush = deadline_after(interval);
            }
        }
    }

    /// Closes the window: every cell with new usage becomes a record stamped now.
    /// Returns whether it found any.
    fn flush(&mut self) -> bool {
        let drained = self.shared.registry.drain();
        self.push_drained(drained)
    }

    fn push_drained(&mut self, drained: Vec<super::cells::Drained>) -> bool {
        let timestamp = Timestamp::now();
        let now = Instant::now();
        let found = !drained.is_empty();
        for d in drained {
            let mut left = d.value;
            loop {
                // A delta sum beyond u64 (many threads, one window) goes out in parts.
                let part = u64::try_from(left).unwrap_or(u64::MAX);
                self.outbox.push(d.key.clone(), part, timestamp, now);
                left -= u128::from(part);
                if left == 0 {
                    break;
                }
            }
        }
        self.publish_waiting();
        found
    }

    fn publish_waiting(&self) {
        self.shared.registry.set_waiting(self.outbox.len());
    }

    /// Starts every request the policy allows now; says what to wait for next.
    fn dispatch(&mut self, deadline: Option<Instant>) -> Wait {
        loop {
            let now = Instant::now();
            let timeout = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(now);
                    if left < MIN_ATTEMPT {
                        return Wait::Until(d);
                    }
                    left.min(self.settings.request_timeout)
                }
                None => self.settings.request_timeout,
            };
            let record = match self.outbox.next(now) {
                Ok(record) => record,
                Err(wait) => return wait,
            };
            let request = CreateMeterUsageRecordRequest::new(
                record.key.agreement.clone(),
                record.key.feature.clone(),
                record.value,
            )
            .with_meter_type(record.key.meter_type)
            .with_timestamp(record.timestamp);
            let options = RequestOptions::new()
                .idempotency_key(record.idempotency_key.clone())
                .timeout(timeout);
            let client = self.client.clone();
            let handle = self.tasks.spawn(async move {
                client
                    .create_meter_usage_record_with_options(&request, &options)
                    .await
                    .map(drop)
            });
            add(&self.shared.counters.requests, 1);
            self.sending.insert(handle.id(), record);
        }
    }

    fn finished(&mut self, joined: Result<(Id, Result<(), ApiError>), JoinError>) {
        let (id, outcome) = match joined {
            Ok((id, outcome)) => (id, outcome),
            // The request task panicked or was aborted: whether it was sent is unknown.
            Err(e) => {
                let id = e.id();
                let outcome = Err(ApiError::Transport {
                    source: Box::new(e),
                });
                (id, outcome)
            }
        };
        let Some(record) = self.sending.remove(&id) else {
            return;
        };
        let event = self.outbox.complete(record, outcome, Instant::now());
        self.account(event);
        self.publish_waiting();
    }

    fn account(&mut self, event: Event) {
        let c = &self.shared.counters;
        match event {
            Event::Delivered(record) => {
                add(&c.delivered, record.delta());
                add(&c.records_delivered, 1);
                if self.failing {
                    self.failing = false;
                    tracing::info!(target: "kinde_meter", "delivery to Kinde recovered");
                }
            }
            Event::Retrying {
                ambiguous,
                throttled,
                error,
            } => {
                add(&c.retried, 1);
                if let Some(value) = ambiguous {
                    add(&c.ambiguous, value);
                }
                if throttled {
                    add(&c.throttled, 1);
                }
                self.episode_failure(error);
            }
            Event::Rejected(record, error) => {
                add(&c.rejected, record.delta());
                let message = error.to_string();
                self.shared.set_last_error(message.clone());
                let first = self.rejections_logged.len() < 1000
                    && self.rejections_logged.insert((
                        record.key.feature.to_string(),
                        error.status().map(|s| s.as_u16()),
                    ));
                if first {
                    tracing::error!(
                        target: "kinde_meter",
                        feature = record.key.feature.as_str(),
                        agreement = record.key.agreement.as_str(),
                        value = record.value,
                        "Kinde rejected a usage record, which is dropped: {message} (logged once per feature and \
                         status; see `Stats::rejected`)"
                    );
                }
                self.shared.error(MeterError::Rejected {
                    record: record.usage(),
                    error,
                });
            }
            Event::Unsent(unsent) => {
                let delta = unsent.record.delta();
                add(&c.ambiguous, delta);
                add(&c.unsent, delta);
                self.episode_failure(unsent.last_error.clone().unwrap_or_default());
                self.shared.unsent(&[unsent]);
            }
            Event::Superseded => {}
        }
    }

    fn episode_failure(&mut self, error: String) {
        if !self.failing {
            self.failing = true;
            tracing::warn!(
                target: "kinde_meter",
                "delivery to Kinde is failing; retrying with backoff (warned once until it recovers): {error}"
            );
        }
        self.shared.set_last_error(error);
    }

    /// Closes the window, then sends until nothing waits or `deadline` passes.
    async fn drain_until(&mut self, deadline: Instant) -> FlushReport {
        self.flush();
        self.send_until(deadline).await;
        FlushReport {
            waiting: self.outbox.len(),
            timed_out: !self.outbox.is_empty(),
        }
    }

    /// Sends until nothing waits or `deadline` passes.
    async fn send_until(&mut self, deadline: Instant) {
        loop {
            if self.outbox.is_empty() || Instant::now() >= deadline {
                return;
            }
            let wake = match self.dispatch(Some(deadline)) {
                Wait::Until(t) => t.min(deadline),
                Wait::InFlight | Wait::Idle => deadline,
            };
            tokio::select! {
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => self.finished(joined),
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Delivers until `deadline`, usage recorded meanwhile included, then hands back what
    /// is left. Accounts for every unit its last drain took.
    async fn shutdown(&mut self, deadline: Instant) -> ShutdownReport {
        // Drain again each time the outbox empties, so usage other threads record while
        // the shutdown runs is delivered too; under a steady load this runs to the deadline.
        loop {
            let found = self.flush();
            self.send_until(deadline).await;
            if !found || Instant::now() >= deadline {
                break;
            }
        }
        let deadline_reached = !self.outbox.is_empty();
        // Requests still out at the deadline are abandoned; they may have been applied.
        self.tasks.abort_all();
        let mut left: Vec<UnsentRecord> = Vec::new();
        while let Some(joined) = self.tasks.join_next_with_id().await {
            match joined {
                Ok(done) => self.finished(Ok(done)),
                Err(e) => {
                    if let Some(mut record) = self.sending.remove(&e.id()) {
                        self.outbox.abandon_in_flight(&record);
                        record.attempts += 1;
                        record.maybe_applied = true;
                        record.last_error =
                            Some("abandoned in flight at the shutdown deadline".to_owned());
                        left.push(record.unsent(UnsentReason::DeadlineExceeded));
                    }
                }
            }
        }
        // The last drain: what other threads recorded up to here is in the report, and
        // what they record after it is reported as `MeterError::AfterShutdown`.
        let last = self.shared.registry.drain_final();
        let recorded = self.shared.registry.taken_delta();
        self.push_drained(last);
        left.extend(
            self.outbox
                .take_all()
                .iter()
                .map(|r| r.unsent(UnsentReason::DeadlineExceeded)),
        );
        self.publish_waiting();
        let left_delta = delta_of(&left);
        add(&self.shared.counters.unsent, left_delta);
        if !left.is_empty() {
            tracing::warn!(
                target: "kinde_meter",
                records = left.len(),
                value = left_delta,
                "shutdown deadline reached with usage undelivered; it is passed to `on_unsent` and the report"
            );
        }
        self.shared.unsent(&left);
        ShutdownReport {
            stats: self.shared.stats_with(recorded),
            left,
            deadline_reached: deadline_reached || !self.outbox.is_empty(),
            failure: None,
        }
    }

    /// After a panic inside [`Worker::run`]: hands every record this worker held to
    /// `on_unsent` (its state may be inconsistent, so it is not trusted to send them),
    /// and starts afresh. Usage still in the cells is not affected.
    pub(crate) fn salvage(&mut self) {
        let mut held: Vec<UnsentRecord> = self
            .sending
            .drain()
            .map(|(_, mut r)| {
                // Its request may still complete: treat it as possibly applied.
                r.maybe_applied = true;
                r.unsent(UnsentReason::WorkerFailed)
            })
            .collect();
        held.extend(
            self.outbox
                .take_all()
                .iter()
                .map(|r| r.unsent(UnsentReason::WorkerFailed)),
        );
        self.outbox = Outbox::new(
            self.settings.policy.clone(),
            Instant::now(),
            fastrand::Rng::new(),
        );
        let delta = delta_of(&held);
        add(&self.shared.counters.unsent, delta);
        tracing::error!(
            target: "kinde_meter",
            records = held.len(),
            value = delta,
            "the kinde-meter worker panicked (a bug; please report it); the records it held are passed to \
             `on_unsent` and it restarts"
        );
        self.publish_waiting();
        self.shared.unsent(&held);
    }
}

/// The delta usage in `records` (absolute values do not add up).
fn delta_of(records: &[UnsentRecord]) -> u64 {
    records
        .iter()
        .map(|u| u.record.delta())
        .fold(0, u64::saturating_add)
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stopped();
    }
}
