//! The flush worker: its own OS thread with a private current-thread tokio runtime, so it
//! runs whatever the application runs (no runtime, a current-thread or a multi-thread one)
//! and outlives the application's runtime.
//!
//! Its pieces, each apart: *flush* (cells to records, here), *dispatch* (the outbox
//! policy and the [`Sink`], `dispatch.rs`), *accounting* (counters, hooks and logs,
//! `accounting.rs`) and *shutdown* (the last drains and what is handed back, here). The
//! loop in [`Worker::run`] only wires them to time and commands.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::accounting::{Accounts, delta_of};
use super::cells::Drained;
use super::dispatch::{Dispatch, Finished, Left, Resolution};
use super::events::{FlushReport, ShutdownReport};
use super::outbox::{Policy, Wait};
use super::shared::BillingChange;
use super::shared::Shared;
use crate::api::{Timestamp, deadline_after};
use crate::journal::{Journal, Recovered};
use crate::sink::Sink;

pub(crate) struct Settings {
    pub(crate) flush_interval: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) policy: Policy,
    /// The journal, opened, and what it read of dead processes' runs.
    pub(crate) journal: Option<(Journal, Recovered)>,
    pub(crate) resolution: Resolution,
}

/// What closing a window did.
struct Closed {
    /// Whether it found any usage.
    found: bool,
    /// Whether its records are on disk (always false without a journal).
    durable: bool,
}

/// Where the worker sends an answer. Async and blocking callers alike wait on it (the
/// blocking ones through `block_on`).
pub(crate) struct Reply<T>(pub(crate) oneshot::Sender<T>);

impl<T> Reply<T> {
    fn send(self, value: T) {
        // The caller may have stopped waiting (its own timeout); nothing to do then.
        drop(self.0.send(value));
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

pub(crate) struct Worker<S> {
    shared: Arc<Shared>,
    flush_interval: Duration,
    dispatch: Dispatch<S>,
    accounts: Accounts,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Dropped when this worker stops taking commands (see [`Worker::on_stop`]).
    on_stop: Option<Box<dyn FnOnce() + Send>>,
    /// What the journal read at start, until the first run resumes it.
    recovered: Option<Recovered>,
    /// Billing webhooks' news (see [`crate::billing_changed`]).
    billing: mpsc::UnboundedReceiver<BillingChange>,
    /// The end of the last window closed: a billing cycle that ended after it and
    /// before the next close stamps the next window.
    last_close: Timestamp,
    /// Resolver lookups already added to the counters.
    lookups_counted: u64,
}

impl<S: Sink> Worker<S> {
    pub(crate) fn new(
        shared: Arc<Shared>,
        sink: Arc<S>,
        settings: Settings,
        commands: mpsc::UnboundedReceiver<Command>,
        billing: mpsc::UnboundedReceiver<BillingChange>,
    ) -> Self {
        let (journal, recovered) = settings.journal.unzip();
        Self {
            accounts: Accounts::new(Arc::clone(&shared)),
            shared,
            flush_interval: settings.flush_interval,
            dispatch: Dispatch::new(
                sink,
                settings.policy,
                settings.request_timeout,
                journal,
                settings.resolution,
            ),
            commands,
            on_stop: None,
            recovered,
            billing,
            last_close: Timestamp::now(),
            lookups_counted: 0,
        }
    }

    /// Runs `f` once this worker has shut down, before it answers the shutdown (or when
    /// it is dropped): the global reporter marks itself free to start again there, so a
    /// caller that stopped waiting (a cancelled `shutdown`) does not keep it taken.
    pub(crate) fn on_stop(&mut self, f: impl FnOnce() + Send + 'static) {
        self.on_stop = Some(Box::new(f));
    }

    /// Serves commands until a shutdown. Callable again after it unwinds (see
    /// [`Worker::salvage`]).
    pub(crate) async fn run(&mut self) {
        if let Some(recovered) = self.recovered.take() {
            let resumed = self.dispatch.resume(recovered);
            self.accounts.resumed(resumed);
            self.dispatch.finish_resume();
            self.journal_health();
            self.publish_waiting();
        }
        let interval = self.flush_interval;
        let mut next_flush = deadline_after(interval);
        loop {
            // A billing cycle ending before the next close closes the window there, so
            // no window straddles it.
            if let Some(end) = self.next_period_end() {
                next_flush = next_flush.min(end);
            }
            let wake = match self.start_due(None) {
                Wait::Until(t) => t.min(next_flush),
                Wait::InFlight | Wait::Idle => next_flush,
            };
            let has_tasks = self.dispatch.has_tasks();
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
                Some(finished) = self.dispatch.next_finished(), if has_tasks => self.finished(finished),
                Some(change) = self.billing.recv() => {
                    // The customer's usage so far goes out now, to the agreement it was
                    // recorded under; what comes after is resolved afresh.
                    self.flush();
                    self.dispatch.billing_changed(change.customer_id.as_ref(), &change.named);
                    // The bindings it made, on disk before those records leave.
                    self.dispatch.write_changes();
                    next_flush = deadline_after(interval);
                }
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

    fn stopped(&mut self) {
        // Before the reporter counts as stopped: a billing change told to it after this is
        // refused (`false`), not lost.
        self.shared.set_billing(None);
        if let Some(f) = self.on_stop.take() {
            f();
        }
    }

    // ----- flush: cells to records -----

    /// Closes the window: every cell with new usage becomes a record stamped now, on
    /// disk (with a journal) before any of it is sent.
    fn flush(&mut self) -> Closed {
        let drained = self.shared.registry.drain();
        self.push_drained(drained)
    }

    /// When the earliest billing cycle of a resolved customer ends, if it ends later
    /// than the last window closed.
    fn next_period_end(&self) -> Option<Instant> {
        let end = self.dispatch.next_period_end(self.last_close)?;
        let wall = std::time::SystemTime::now();
        let left = end
            .to_system_time()
            .duration_since(wall)
            .unwrap_or(Duration::ZERO);
        Some(Instant::now() + left)
    }

    fn push_drained(&mut self, drained: Vec<Drained>) -> Closed {
        let now_stamp = Timestamp::now();
        // Usage is stamped inside the cycle it happened in: a window closed at (or just
        // after) a cycle's end carries the cycle's last second. Kinde's stamps are whole
        // seconds, and the end is the first second of the next cycle.
        let timestamp = match self.dispatch.next_period_end(self.last_close) {
            Some(end) if end.unix_seconds() <= now_stamp.unix_seconds() => {
                Timestamp::from_unix_seconds(end.unix_seconds().saturating_sub(1))
                    .unwrap_or(now_stamp)
            }
            _ => now_stamp,
        };
        self.last_close = now_stamp;
        let now = Instant::now();
        let found = !drained.is_empty();
        let mut window_delta = 0u64;
        for d in drained {
            if d.key.meter_type == crate::api::MeterType::Delta {
                window_delta =
                    window_delta.saturating_add(u64::try_from(d.value).unwrap_or(u64::MAX));
            }
            let mut left = d.value;
            loop {
                // A delta sum beyond u64 (many threads, one window) goes out in parts.
                let part = u64::try_from(left).unwrap_or(u64::MAX);
                self.dispatch.push(d.key.clone(), part, timestamp, now);
                left -= u128::from(part);
                if left == 0 {
                    break;
                }
            }
        }
        let durable = match self.dispatch.commit_window() {
            Ok(wrote) => {
                if wrote {
                    self.accounts.journal_ok();
                }
                // Durable only if nothing earlier is still in memory only.
                self.dispatch.all_journaled()
            }
            Err(cause) => {
                // What this window added; usage merged in from earlier windows was
                // counted with them.
                self.accounts.journal_failed(window_delta, cause);
                false
            }
        };
        self.publish_waiting();
        Closed { found, durable }
    }

    /// Reports a journal write that failed outside a window.
    fn journal_health(&mut self) {
        if let Some(cause) = self.dispatch.take_journal_failure() {
            self.accounts.journal_failed(0, cause);
        }
    }

    fn publish_waiting(&self) {
        self.shared.registry.set_records_held(self.dispatch.len());
    }

    // ----- dispatch and accounting, wired -----

    fn start_due(&mut self, deadline: Option<Instant>) -> Wait {
        let (wait, started) = self.dispatch.start_due(deadline);
        self.accounts.requests(started);
        wait
    }

    fn finished(&mut self, finished: Finished) {
        let lookups = self.dispatch.resolver_lookups();
        super::shared::saturating_add(
            &self.shared.counters.resolver_lookups,
            lookups.saturating_sub(self.lookups_counted),
        );
        self.lookups_counted = lookups;
        if let Some(event) = finished {
            self.accounts.account(event);
            self.publish_waiting();
        }
        // Always, event or not: a record bound to its agreement by a lookup is written
        // here, before its first attempt's start is synced.
        self.dispatch.write_changes();
        self.journal_health();
    }

    /// Closes the window; then, unless the journal made it durable, sends until nothing
    /// waits or `deadline` passes.
    async fn drain_until(&mut self, deadline: Instant) -> FlushReport {
        let closed = self.flush();
        if closed.durable {
            return FlushReport {
                waiting: self.dispatch.len(),
                timed_out: false,
                durable: true,
            };
        }
        self.send_until(deadline).await;
        FlushReport {
            waiting: self.dispatch.len(),
            timed_out: !self.dispatch.is_empty(),
            durable: self.dispatch.is_empty(),
        }
    }

    /// Sends until nothing waits or `deadline` passes.
    async fn send_until(&mut self, deadline: Instant) {
        loop {
            if self.dispatch.is_empty() || Instant::now() >= deadline {
                return;
            }
            let wake = match self.start_due(Some(deadline)) {
                Wait::Until(t) => t.min(deadline),
                Wait::InFlight | Wait::Idle => deadline,
            };
            let has_tasks = self.dispatch.has_tasks();
            tokio::select! {
                Some(finished) = self.dispatch.next_finished(), if has_tasks => self.finished(finished),
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    // ----- shutdown -----

    /// Delivers until `deadline`, usage recorded meanwhile included, then hands back what
    /// is left. Accounts for every unit its last drain took.
    async fn shutdown(&mut self, deadline: Instant) -> ShutdownReport {
        // Drain again each time the outbox empties, so usage other threads record while
        // the shutdown runs is delivered too; under a steady load this runs to the deadline.
        loop {
            let found = self.flush().found;
            self.send_until(deadline).await;
            if !found || Instant::now() >= deadline {
                break;
            }
        }
        let deadline_reached = !self.dispatch.is_empty();
        // Requests still out at the deadline are abandoned; they may have been applied.
        let (events, abandoned) = self.dispatch.abandon_in_flight().await;
        for event in events {
            self.finished(Some(event));
        }
        // The last drain: what other threads recorded up to here is in the report, and
        // what they record after it is reported as `MeterError::AfterShutdown`.
        let last = self.shared.registry.drain_final();
        let recorded = self.shared.registry.taken_delta();
        self.push_drained(last);
        let deadline_reached = deadline_reached || !self.dispatch.is_empty();
        let Left { kept, unsent: left } = self.dispatch.take_left(abandoned);
        self.dispatch.close_journal();
        self.journal_health();
        self.publish_waiting();
        if !left.is_empty() {
            tracing::warn!(
                target: "kinde_meter",
                records = left.len(),
                value = delta_of(&left),
                "shutdown deadline reached with usage undelivered; it is passed to `on_unsent` and the report"
            );
        }
        if !kept.is_empty() {
            tracing::info!(
                target: "kinde_meter",
                records = kept.len(),
                value = delta_of(&kept),
                "shutdown deadline reached with usage undelivered; the journal keeps it for the next start"
            );
        }
        self.accounts.hand_back(&left);
        self.accounts.keep(&kept);
        ShutdownReport {
            stats: self.shared.stats_with(recorded),
            left,
            kept,
            deadline_reached,
            failure: None,
        }
    }

    /// After a panic inside [`Worker::run`]: hands every record this worker held to
    /// `on_unsent` (its state may be inconsistent, so it is not trusted to send them),
    /// and starts afresh. Usage still in the cells is not affected.
    pub(crate) fn salvage(&mut self) {
        let held = self.dispatch.salvage();
        tracing::error!(
            target: "kinde_meter",
            records = held.len(),
            value = delta_of(&held),
            "the kinde-meter worker panicked (a bug; please report it); the records it held are passed to \
             `on_unsent` and it restarts"
        );
        self.publish_waiting();
        self.accounts.hand_back(&held);
        self.dispatch.write_changes();
    }
}

impl<S> Drop for Worker<S> {
    fn drop(&mut self) {
        if let Some(f) = self.on_stop.take() {
            f();
        }
    }
}
