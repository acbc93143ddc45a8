//! Dispatch: the [`Outbox`] policy joined to a [`Sink`]. Starts every request the policy
//! allows as a task, and feeds each outcome back to the policy. No counters and no logs:
//! what an outcome means for them is `accounting.rs`'s concern.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;

use super::outbox::{Event, Outbox, Policy, Record, Wait};
use super::sink::{SendResult, Sink};
use crate::api::{ApiError, Timestamp};
use crate::usage::{UnsentReason, UnsentRecord};

/// A request is not started with less time than this left before a deadline.
const MIN_ATTEMPT: Duration = Duration::from_millis(20);

/// An outcome that came back: what the policy made of it.
pub(crate) type Finished = Option<Event>;

pub(crate) struct Dispatch<S> {
    sink: Arc<S>,
    policy: Policy,
    request_timeout: Duration,
    outbox: Outbox,
    /// Records out with the sink, by the task carrying them.
    sending: HashMap<Id, Record>,
    tasks: JoinSet<SendResult>,
}

impl<S: Sink> Dispatch<S> {
    pub(crate) fn new(sink: Arc<S>, policy: Policy, request_timeout: Duration) -> Self {
        Self {
            outbox: Outbox::new(policy.clone(), Instant::now(), fastrand::Rng::new()),
            sink,
            policy,
            request_timeout,
            sending: HashMap::new(),
            tasks: JoinSet::new(),
        }
    }

    /// Records waiting or in flight: what counts toward the pending-key bound.
    pub(crate) fn len(&self) -> usize {
        self.outbox.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.outbox.is_empty()
    }

    /// Hands a window's usage of one key to the policy.
    pub(crate) fn push(
        &mut self,
        key: super::cells::Key,
        value: u64,
        timestamp: Timestamp,
        now: Instant,
    ) {
        self.outbox.push(key, value, timestamp, now);
    }

    /// Starts every request the policy allows now, each with at most the time left
    /// before `deadline`. Returns what to wait for next and how many it started.
    pub(crate) fn start_due(&mut self, deadline: Option<Instant>) -> (Wait, u64) {
        let mut started = 0;
        loop {
            let now = Instant::now();
            let timeout = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(now);
                    if left < MIN_ATTEMPT {
                        return (Wait::Until(d), started);
                    }
                    left.min(self.request_timeout)
                }
                None => self.request_timeout,
            };
            let record = match self.outbox.next(now) {
                Ok(record) => record,
                Err(wait) => return (wait, started),
            };
            let sink = Arc::clone(&self.sink);
            let usage = record.usage.clone();
            // The timeout is enforced here, not left to the sink: a sink that never
            // answers would otherwise hold its in-flight slot for good.
            let handle = self.tasks.spawn(async move {
                match tokio::time::timeout(timeout, sink.send(&usage, timeout)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(ApiError::Timeout { after: timeout }),
                }
            });
            started += 1;
            self.sending.insert(handle.id(), record);
        }
    }

    /// Waits for the next request to finish; `None` at once when none is out.
    pub(crate) async fn next_finished(&mut self) -> Option<Finished> {
        let joined = self.tasks.join_next_with_id().await?;
        Some(self.finished(joined))
    }

    /// Whether a request is out (so [`Dispatch::next_finished`] is worth awaiting).
    pub(crate) fn has_tasks(&self) -> bool {
        !self.tasks.is_empty()
    }

    fn finished(&mut self, joined: Result<(Id, SendResult), JoinError>) -> Finished {
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
        let record = self.sending.remove(&id)?;
        Some(self.outbox.complete(record, outcome, Instant::now()))
    }

    /// At the deadline: abandons the requests still out and waits for their tasks to
    /// end. Returns the outcomes of those that finished first, and the records of those
    /// abandoned (counted as possibly applied).
    pub(crate) async fn abandon_in_flight(&mut self) -> (Vec<Event>, Vec<UnsentRecord>) {
        self.tasks.abort_all();
        let mut events = Vec::new();
        let mut left = Vec::new();
        while let Some(joined) = self.tasks.join_next_with_id().await {
            match joined {
                Ok(done) => events.extend(self.finished(Ok(done))),
                Err(e) => {
                    if let Some(mut record) = self.sending.remove(&e.id()) {
                        self.outbox.abandon_in_flight(&record);
                        record.attempts.count += 1;
                        record.attempts.maybe_applied = true;
                        record.attempts.last_error =
                            Some("abandoned in flight at the shutdown deadline".to_owned());
                        left.push(record.unsent(UnsentReason::DeadlineExceeded));
                    }
                }
            }
        }
        (events, left)
    }

    /// Takes every waiting record out, as unsent for `reason`.
    pub(crate) fn take_waiting(&mut self, reason: UnsentReason) -> Vec<UnsentRecord> {
        self.outbox
            .take_all()
            .iter()
            .map(|r| r.unsent(reason))
            .collect()
    }

    /// After a panic: takes every record out (those in flight as possibly applied, since
    /// their requests may still complete) and starts the policy afresh.
    pub(crate) fn salvage(&mut self) -> Vec<UnsentRecord> {
        let mut held: Vec<UnsentRecord> = self
            .sending
            .drain()
            .map(|(_, mut r)| {
                r.attempts.maybe_applied = true;
                r.unsent(UnsentReason::WorkerFailed)
            })
            .collect();
        held.extend(self.take_waiting(UnsentReason::WorkerFailed));
        self.outbox = Outbox::new(self.policy.clone(), Instant::now(), fastrand::Rng::new());
        held
    }
}
