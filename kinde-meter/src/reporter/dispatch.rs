//! Dispatch: the [`Outbox`] policy joined to a [`Sink`] and, when there is one, to the
//! [`Journal`]. Starts every request the policy allows as a task, and feeds each outcome
//! back to the policy; writes what the policy changed to the journal, a closed window and
//! every attempt's start synced before anything is sent. No counters and no logs: what an
//! outcome means for them is `accounting.rs`'s concern.
//!
//! An outcome's journal write waits until the caller has reported it
//! ([`Dispatch::write_changes`]): the write erases the evidence (an attempt in flight, a
//! record not settled) from which a restart would report it again, so a process that dies
//! between the two must die before the write, never after it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;

use super::outbox::{Change, Event, Outbox, Policy, Record, Wait};
use crate::api::{AgreementId, ApiError, Customer, CustomerId, StatusCode, Timestamp};
use crate::config::{AgreementEnded, Delivery};
use crate::journal::format::Stored;
use crate::journal::{Journal, Recovered};
use crate::resolve::{Cached, Lookup, ResolveError, Unresolved};
use crate::sink::{SendResult, Sink};
use crate::usage::{
    JournalFailure, JournalIssue, RecordId, UnsentReason, UnsentRecord, UsageRecord,
};

/// A request is not started with less time than this left before a deadline.
const MIN_ATTEMPT: Duration = Duration::from_millis(20);

/// An outcome that came back: what the policy made of it.
pub(crate) type Finished = Option<Event>;

/// How many times one record is sent to a re-resolved agreement after Kinde said the
/// one before had ended; past that it is handed back (a plan changing faster than a
/// record can be delivered is not one to chase).
const MAX_RERESOLVED: u32 = 3;

/// How usage recorded for customers finds its agreement.
pub(crate) struct Resolution {
    /// The cached resolver; `None` when there is none (a sink without one configured).
    pub(crate) cache: Option<Arc<Cached>>,
    pub(crate) agreement_ended: AgreementEnded,
}

/// What a task of the dispatcher did: sent a record, or looked up its customer.
enum Task {
    Sent(SendResult),
    Resolved(Result<Arc<crate::resolve::CustomerAgreements>, Arc<ResolveError>>),
}

/// Why a record of a customer goes back to the resolver: Kinde said its agreement ended.
#[derive(Debug)]
struct Reresolving(ApiError);

impl std::fmt::Display for Reresolving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; looking up the customer's agreement again", self.0)
    }
}

impl std::error::Error for Reresolving {}

/// Whether Kinde refused a record because its agreement is gone (cancelled, expired,
/// unknown). Kinde does not document the answer: a 400 or 404 with an error whose code
/// names the agreement and its end (`AGREEMENT_CANCELLED`, `AGREEMENT_NOT_FOUND`, ...),
/// or whose message says the agreement was cancelled, expired, ended or is unknown (an
/// assumption the README names). Any other refusal is a plain rejection.
fn agreement_gone(error: &ApiError) -> bool {
    const ENDS: [&str; 6] = [
        "cancel",
        "not found",
        "not_found",
        "expired",
        "ended",
        "inactive",
    ];
    let ApiError::Rejected { status, errors } = error else {
        return false;
    };
    let says_gone = |text: &str| {
        let text = text.to_ascii_lowercase();
        text.contains("agreement")
            && (ENDS.iter().any(|end| text.contains(end)) || text.contains("no customer agreement"))
    };
    (*status == StatusCode::BAD_REQUEST || *status == StatusCode::NOT_FOUND)
        && errors.iter().any(|e| {
            e.code.as_deref().is_some_and(says_gone) || e.message.as_deref().is_some_and(says_gone)
        })
}

pub(crate) struct Dispatch<S> {
    sink: Arc<S>,
    policy: Policy,
    request_timeout: Duration,
    outbox: Outbox,
    /// Records out with the sink, by the task carrying them.
    sending: HashMap<Id, Record>,
    /// Records whose customer is being looked up, by the task doing it.
    resolving: HashMap<Id, Record>,
    tasks: JoinSet<Task>,
    resolution: Resolution,
    journal: Option<Journal>,
    /// A journal write that failed outside a window (an outcome, a start), not yet reported.
    journal_failure: Option<JournalFailure>,
    /// What resuming will write, once its records have been reported.
    resumed: Option<(Vec<Stored>, Vec<RecordId>)>,
    /// Records handed back after a panic, to settle once reported.
    salvaged: Vec<RecordId>,
}

/// What resuming the journal at start did.
#[derive(Debug, Default)]
pub(crate) struct Resumption {
    /// Delta usage read back: taken back for delivery, or handed back.
    pub(crate) replayed: u64,
    /// Records that may have been applied, resent under at-least-once: (record,
    /// attempts, whether the attempt was in flight when its process died, so is new here).
    pub(crate) ambiguous: Vec<(UsageRecord, u32, bool)>,
    /// Records not resent: ambiguous under at-most-once, or possibly settled by damage.
    pub(crate) handed_back: Vec<UnsentRecord>,
    /// Damage found.
    pub(crate) issues: Vec<JournalIssue>,
}

/// Records left at shutdown: those the journal keeps for the next start, and the rest.
pub(crate) struct Left {
    pub(crate) kept: Vec<UnsentRecord>,
    pub(crate) unsent: Vec<UnsentRecord>,
}

impl<S: Sink> Dispatch<S> {
    pub(crate) fn new(
        sink: Arc<S>,
        policy: Policy,
        request_timeout: Duration,
        journal: Option<Journal>,
        resolution: Resolution,
    ) -> Self {
        Self {
            outbox: new_outbox(&policy, journal.as_ref()),
            sink,
            policy,
            request_timeout,
            sending: HashMap::new(),
            resolving: HashMap::new(),
            tasks: JoinSet::new(),
            resolution,
            journal,
            journal_failure: None,
            resumed: None,
            salvaged: Vec::new(),
        }
    }

    /// Takes back what the journal's adopted runs left, by the delivery policy: a
    /// record that may have been applied (its attempt was in flight, or an earlier one
    /// was ambiguous) is resent and reported again under at-least-once (the report
    /// before may have died with its process), and handed back under at-most-once; one
    /// that damage may have settled is handed back. Call [`Dispatch::finish_resume`]
    /// once the result is reported.
    pub(crate) fn resume(&mut self, recovered: Recovered) -> Resumption {
        if self.journal.is_none() {
            return Resumption::default();
        }
        let now = Instant::now();
        let mut done = Resumption {
            issues: recovered.issues,
            ..Resumption::default()
        };
        let mut keep = Vec::new();
        let mut settle = Vec::new();
        for resumed in recovered.live {
            let mut stored = resumed.stored;
            done.replayed = done.replayed.saturating_add(stored.usage.delta());
            if resumed.in_flight {
                let a = &mut stored.attempts;
                a.count = a.count.saturating_add(1);
                a.maybe_applied = true;
                a.last_error = Some("in flight when the process sending it stopped".to_owned());
            }
            if stored.attempts.maybe_applied {
                if self.policy.delivery == Delivery::AtMostOnce {
                    settle.push(stored.id);
                    done.handed_back
                        .push(unsent(&stored, UnsentReason::Ambiguous));
                    continue;
                }
                done.ambiguous
                    .push((billed(&stored), stored.attempts.count, resumed.in_flight));
            }
            keep.push(stored.clone());
            self.outbox.restore(stored, now);
        }
        for mut stored in recovered.damaged {
            done.replayed = done.replayed.saturating_add(stored.usage.delta());
            stored.attempts.maybe_applied = true;
            settle.push(stored.id);
            done.handed_back
                .push(unsent(&stored, UnsentReason::JournalDamaged));
        }
        self.resumed = Some((keep, settle));
        done
    }

    /// Writes what [`Dispatch::resume`] decided, and removes the adopted runs.
    pub(crate) fn finish_resume(&mut self) {
        let (Some(journal), Some((keep, settle))) = (&mut self.journal, self.resumed.take()) else {
            return;
        };
        if let Err(e) = journal.resume(&keep, &settle) {
            self.journal_failure = Some(JournalFailure::Io(e));
        }
    }

    /// Writes the window just pushed and syncs it, with any record the journal does not
    /// hold yet (from a window it could not write). `Ok(true)` when it wrote something;
    /// `Ok(false)` when there was nothing to write, or no journal. A window it could not
    /// write is taken back out of the records it merged into, so what the journal holds
    /// of a record is always what it is.
    pub(crate) fn commit_window(&mut self) -> Result<bool, JournalFailure> {
        let changes = self.outbox.take_changes();
        let merges = self.outbox.take_merges();
        let Some(journal) = &mut self.journal else {
            return Ok(false);
        };
        let mut records: Vec<Stored> = changes
            .into_iter()
            .filter_map(|c| match c {
                Change::Put(s) => Some(s),
                // A window only adds and merges.
                Change::Settle(_) => None,
            })
            .collect();
        let in_window: HashSet<RecordId> = records.iter().map(|s| s.id).collect();
        records.extend(
            self.outbox
                .waiting_records()
                .chain(self.resolving.values())
                .filter(|r| !journal.holds(r.id) && !in_window.contains(&r.id))
                .map(Record::stored),
        );
        let in_flight: Vec<Stored> = self
            .sending
            .values()
            .filter(|r| !journal.holds(r.id))
            .map(Record::stored)
            .collect();
        if records.is_empty() && in_flight.is_empty() {
            // Nothing new, but what it holds may not all be on disk since a failure.
            if journal.needs_rewrite() {
                return journal.rewrite().map(|()| true).map_err(JournalFailure::Io);
            }
            return Ok(false);
        }
        match journal.put_window(&records, &in_flight) {
            Ok(()) => Ok(true),
            Err(failure) => {
                if !failure.tracked {
                    let now = Instant::now();
                    for before in merges {
                        if journal.holds(before.id) {
                            self.outbox.unmerge(before, now);
                        }
                    }
                }
                Err(failure.cause)
            }
        }
    }

    /// Whether every record held is in the journal (so nothing is in memory only).
    pub(crate) fn all_journaled(&self) -> bool {
        let Some(journal) = &self.journal else {
            return false;
        };
        !journal.needs_rewrite()
            && self.outbox.waiting_records().all(|r| journal.holds(r.id))
            && self.sending.values().all(|r| journal.holds(r.id))
            && self.resolving.values().all(|r| journal.holds(r.id))
    }

    /// A journal write that failed since the last call (outside windows).
    pub(crate) fn take_journal_failure(&mut self) -> Option<JournalFailure> {
        self.journal_failure.take()
    }

    /// Writes outcomes to the journal (not synced), once they have been reported.
    pub(crate) fn write_changes(&mut self) {
        let mut changes = self.outbox.take_changes();
        changes.extend(self.salvaged.drain(..).map(Change::Settle));
        let Some(journal) = &mut self.journal else {
            return;
        };
        for change in changes {
            let written = match &change {
                Change::Put(stored) => journal.put(stored),
                Change::Settle(id) => journal.settle(*id),
            };
            if let Err(e) = written {
                self.journal_failure = Some(JournalFailure::Io(e));
            }
        }
    }

    /// Ends the journal's run (removed if nothing in it is live).
    pub(crate) fn close_journal(&mut self) {
        self.write_changes();
        if let Some(journal) = self.journal.take() {
            journal.close();
        }
    }

    /// Records waiting or in flight: what counts toward the pending-key bound.
    pub(crate) fn len(&self) -> usize {
        // Records waiting for a lookup hold no slot (see `Outbox::lookup_started`), but
        // count toward the bound.
        self.outbox.len()
            + self
                .resolving
                .values()
                .filter(|r| r.usage.meter_type == crate::api::MeterType::Delta)
                .count()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.outbox.is_empty() && self.resolving.is_empty()
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
        let mut due = Vec::new();
        // Records resolved here: the agreement each goes to is written before it leaves.
        let mut newly_bound = Vec::new();
        let mut wait = loop {
            let now = Instant::now();
            let timeout = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(now);
                    if left < MIN_ATTEMPT {
                        break Wait::Until(d);
                    }
                    left.min(self.request_timeout)
                }
                None => self.request_timeout,
            };
            match self.outbox.next(now) {
                Ok(mut record) => match record.unresolved_customer().cloned() {
                    None => due.push((record, timeout)),
                    Some(customer) => match self.bind(&mut record, &customer) {
                        Some(()) => {
                            newly_bound.push(record.stored());
                            due.push((record, timeout));
                        }
                        None => self.resolve(record, customer, timeout),
                    },
                },
                Err(wait) => break wait,
            }
        };
        if due.is_empty() {
            return (wait, 0);
        }
        // Synced before any of them leaves, so a restart knows they may have been sent.
        // When it cannot be, the journal's records wait (a restart would resend them
        // unreported); records it does not hold go, from memory.
        if let Some(journal) = &mut self.journal {
            newly_bound.retain(|s| journal.holds(s.id));
            for stored in &newly_bound {
                if let Err(e) = journal.put(stored) {
                    self.journal_failure = Some(JournalFailure::Io(e));
                }
            }
            let ids: Vec<RecordId> = due.iter().map(|(r, _)| r.id).collect();
            if let Err(e) = journal.start(&ids) {
                self.journal_failure = Some(JournalFailure::Io(e));
                let now = Instant::now();
                let (held, free): (Vec<_>, Vec<_>) =
                    due.into_iter().partition(|(r, _)| journal.holds(r.id));
                due = free;
                for (record, _) in held {
                    let again = self.outbox.hold(record, now);
                    // Woken for it, whatever else the worker waits for.
                    wait = match wait {
                        Wait::Until(t) => Wait::Until(t.min(again)),
                        Wait::InFlight | Wait::Idle => Wait::Until(again),
                    };
                }
            }
        }
        let started = due.len() as u64;
        for (record, timeout) in due {
            let sink = Arc::clone(&self.sink);
            let usage = record.billed();
            // The timeout is enforced here, not left to the sink: a sink that never
            // answers would otherwise hold its in-flight slot for good.
            let handle = self.tasks.spawn(async move {
                Task::Sent(
                    match tokio::time::timeout(timeout, sink.send(&usage, timeout)).await {
                        Ok(outcome) => outcome,
                        Err(_) => Err(ApiError::Timeout { after: timeout }),
                    },
                )
            });
            self.sending.insert(handle.id(), record);
        }
        (wait, started)
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

    fn finished(&mut self, joined: Result<(Id, Task), JoinError>) -> Finished {
        let (id, outcome) = match joined {
            Ok((id, Task::Resolved(answer))) => return self.resolved(id, answer),
            Ok((id, Task::Sent(outcome))) => (id, outcome),
            // A lookup task that panicked: nothing was sent; look again after a backoff.
            Err(e) if self.resolving.contains_key(&e.id()) => {
                let record = self.resolving.remove(&e.id())?;
                let customer = record.usage.customer.clone();
                self.outbox.lookup_failed(record, Instant::now());
                return customer.map(|customer| Event::LookupRetrying {
                    customer,
                    error: "the agreement resolver panicked".to_owned(),
                });
            }
            // The request task panicked or was aborted: whether it was sent is unknown.
            Err(e) => {
                let id = e.id();
                let outcome = Err(ApiError::Transport {
                    source: Box::new(e),
                });
                (id, outcome)
            }
        };
        let mut record = self.sending.remove(&id)?;
        let now = Instant::now();
        if let (Some(customer), Err(error)) = (record.usage.customer.clone(), &outcome)
            && record.attempts.bound.is_some()
            && agreement_gone(error)
        {
            if let Some(cache) = &self.resolution.cache {
                cache.invalidate(&customer);
            }
            let chase = self.resolution.agreement_ended == AgreementEnded::Reresolve
                && record.reresolved < MAX_RERESOLVED
                // An earlier attempt may have reached the old agreement: sending the
                // usage to another one could bill it twice.
                && !record.attempts.maybe_applied;
            if chase {
                record.reresolved += 1;
                record.attempts.bound = None;
                let Err(error) = outcome else { return None };
                let again = Err(ApiError::NotSent {
                    source: Box::new(Reresolving(error)),
                });
                return Some(self.outbox.complete(record, again, now));
            }
            record.attempts.count = record.attempts.count.saturating_add(1);
            record.attempts.last_error = Some(error.to_string());
            self.outbox.give_up(&record, false);
            let unresolved = Unresolved {
                customer,
                feature: record.usage.feature.clone(),
                reason: format!(
                    "the agreement {} ended ({error})",
                    record
                        .attempts
                        .bound
                        .as_ref()
                        .map_or("", AgreementId::as_str)
                ),
            };
            return Some(Event::Unresolved {
                unsent: record.unsent(crate::usage::UnsentReason::AgreementEnded),
                unresolved,
            });
        }
        Some(self.outbox.complete(record, outcome, now))
    }

    /// Binds a customer's record from what the cache holds, without waiting.
    fn bind(&mut self, record: &mut Record, customer: &Customer) -> Option<()> {
        let cache = self.resolution.cache.as_ref()?;
        let Lookup::Found(agreements) = cache.cached(customer) else {
            return None;
        };
        let agreement = agreements
            .pick(&record.usage.feature, record.usage.timestamp)
            .ok()?;
        record.attempts.bound = Some(agreement.clone());
        Some(())
    }

    /// Looks `customer` up in a task of its own; the record waits with it.
    fn resolve(&mut self, record: Record, customer: Customer, timeout: Duration) {
        let cache = self.resolution.cache.clone();
        let handle = self.tasks.spawn(async move {
            let Some(cache) = cache else {
                return Task::Resolved(Err(Arc::new(ResolveError::UnknownCustomer {
                    customer,
                    reason: "the reporter has no agreement resolver (set `Config::resolver`)"
                        .to_owned(),
                })));
            };
            match tokio::time::timeout(timeout, cache.get(&customer)).await {
                Ok(answer) => Task::Resolved(answer),
                Err(_) => Task::Resolved(Err(Arc::new(ResolveError::Lookup(ApiError::Timeout {
                    after: timeout,
                })))),
            }
        });
        self.outbox.lookup_started(&record);
        self.resolving.insert(handle.id(), record);
    }

    /// A lookup came back: the record is bound and goes (due at once), waits a backoff
    /// (a failure that may pass), or is handed back with the reason (no agreement).
    fn resolved(
        &mut self,
        id: Id,
        answer: Result<Arc<crate::resolve::CustomerAgreements>, Arc<ResolveError>>,
    ) -> Finished {
        let mut record = self.resolving.remove(&id)?;
        let now = Instant::now();
        let Some(customer) = record.usage.customer.clone() else {
            // Only a customer's records are looked up; put anything else back as it was.
            self.outbox.requeue(record, now);
            return None;
        };
        let unresolved = match answer {
            Ok(agreements) => {
                match agreements.pick(&record.usage.feature, record.usage.timestamp) {
                    Ok(agreement) => {
                        record.lookup_failures = 0;
                        record.attempts.bound = Some(agreement.clone());
                        self.outbox.requeue(record, now);
                        return None;
                    }
                    Err(why) => Unresolved::no_agreement(&customer, &record.usage.feature, &why),
                }
            }
            Err(error) if error.is_transient() => {
                record.attempts.last_error = Some(error.to_string());
                self.outbox.lookup_failed(record, now);
                return Some(Event::LookupRetrying {
                    customer,
                    error: error.to_string(),
                });
            }
            Err(error) => Unresolved::failed(&customer, &record.usage.feature, &error),
        };
        record.attempts.last_error = Some(unresolved.reason.clone());
        self.outbox.give_up(&record, true);
        Some(Event::Unresolved {
            unsent: record.unsent(crate::usage::UnsentReason::NoAgreement),
            unresolved,
        })
    }

    /// Binds the waiting records of the customers that `billing_changed` names to the
    /// agreements the cache holds for them now, then forgets those: the usage recorded
    /// before the change goes to the agreement it was recorded under, the usage after
    /// it to the one the customer has next.
    pub(crate) fn billing_changed(&mut self, id: Option<&CustomerId>, named: &[Customer]) {
        let Some(cache) = self.resolution.cache.clone() else {
            return;
        };
        let now = Instant::now();
        self.outbox.bind_waiting(now, |record| {
            let customer = record.usage.customer.as_ref()?;
            let Lookup::Found(agreements) = cache.cached(customer) else {
                return None;
            };
            // Named as it was recorded (`named` holds the billing customer id too), or
            // resolved to the billing customer the webhook names.
            let affected =
                named.contains(customer) || (id.is_some() && agreements.customer_id.as_ref() == id);
            if !affected {
                return None;
            }
            agreements
                .pick(&record.usage.feature, record.usage.timestamp)
                .ok()
                .cloned()
        });
        cache.invalidate_billing(id, named);
    }

    /// Questions the resolver was asked (not answered from its cache).
    pub(crate) fn resolver_lookups(&self) -> u64 {
        self.resolution.cache.as_ref().map_or(0, |c| c.lookups())
    }

    /// The earliest end of a billing cycle after `after`, among the customers resolved.
    pub(crate) fn next_period_end(&self, after: Timestamp) -> Option<Timestamp> {
        self.resolution.cache.as_ref()?.next_period_end(after)
    }

    /// At the deadline: abandons the requests still out and waits for their tasks to
    /// end. Returns the outcomes of those that finished first, and the records of those
    /// abandoned (counted as possibly applied).
    pub(crate) async fn abandon_in_flight(
        &mut self,
    ) -> (Vec<Event>, Vec<(RecordId, UnsentRecord)>) {
        self.tasks.abort_all();
        let mut events = Vec::new();
        let mut left = Vec::new();
        while let Some(joined) = self.tasks.join_next_with_id().await {
            match joined {
                Ok(done) => events.extend(self.finished(Ok(done))),
                Err(e) => {
                    if let Some(mut record) = self.resolving.remove(&e.id()) {
                        // Never sent: handed back as not applied.
                        self.outbox.abandon_in_flight(&record, true);
                        record.attempts.last_error = Some(
                            "its customer was being looked up at the shutdown deadline".to_owned(),
                        );
                        left.push((record.id, record.unsent(UnsentReason::DeadlineExceeded)));
                    } else if let Some(mut record) = self.sending.remove(&e.id()) {
                        self.outbox.abandon_in_flight(&record, false);
                        record.attempts.count = record.attempts.count.saturating_add(1);
                        record.attempts.maybe_applied = true;
                        record.attempts.last_error =
                            Some("abandoned in flight at the shutdown deadline".to_owned());
                        left.push((record.id, record.unsent(UnsentReason::DeadlineExceeded)));
                    }
                }
            }
        }
        (events, left)
    }

    /// Takes every waiting record out at the shutdown deadline, with those abandoned in
    /// flight: what the journal holds stays there for the next start, the rest is unsent.
    pub(crate) fn take_left(&mut self, abandoned: Vec<(RecordId, UnsentRecord)>) -> Left {
        let mut left: Vec<(RecordId, UnsentRecord)> = self
            .outbox
            .take_all()
            .iter()
            .map(|r| (r.id, r.unsent(UnsentReason::DeadlineExceeded)))
            .collect();
        left.extend(abandoned);
        let (kept, unsent) = match &self.journal {
            Some(journal) => left.into_iter().partition(|(id, _)| journal.holds(*id)),
            None => (Vec::new(), left),
        };
        Left {
            kept: kept.into_iter().map(|(_, u)| u).collect(),
            unsent: unsent.into_iter().map(|(_, u)| u).collect(),
        }
    }

    /// After a panic: takes every record out (those in flight as possibly applied, since
    /// their requests may still complete) and starts the policy afresh.
    pub(crate) fn salvage(&mut self) -> Vec<UnsentRecord> {
        let mut ids: Vec<RecordId> = self.sending.values().map(|r| r.id).collect();
        let mut held: Vec<UnsentRecord> = self
            .sending
            .drain()
            .map(|(_, mut r)| {
                r.attempts.maybe_applied = true;
                r.unsent(UnsentReason::WorkerFailed)
            })
            .collect();
        for (_, record) in self.resolving.drain() {
            ids.push(record.id);
            held.push(record.unsent(UnsentReason::WorkerFailed));
        }
        let waiting = self.outbox.take_all();
        ids.extend(waiting.iter().map(|r| r.id));
        held.extend(waiting.iter().map(|r| r.unsent(UnsentReason::WorkerFailed)));
        let next_seq = self.outbox.next_seq();
        self.outbox = new_outbox(&self.policy, self.journal.as_ref()).numbered_from(next_seq);
        // Handed back, so done with once reported: the next start must not send them.
        self.salvaged = ids;
        held
    }
}

fn new_outbox(policy: &Policy, journal: Option<&Journal>) -> Outbox {
    let outbox = Outbox::new(policy.clone(), Instant::now(), fastrand::Rng::new());
    match journal {
        Some(j) => outbox.journaled(j.run()),
        None => outbox,
    }
}

/// What is billed of a stored record: its usage, with the agreement a customer's usage
/// was bound to in place of the customer's stand-in.
fn billed(stored: &Stored) -> UsageRecord {
    let mut usage = stored.usage.clone();
    if let Some(bound) = &stored.attempts.bound {
        usage.agreement = bound.clone();
    }
    usage
}

fn unsent(stored: &Stored, reason: UnsentReason) -> UnsentRecord {
    UnsentRecord {
        record: billed(stored),
        reason,
        maybe_applied: stored.attempts.maybe_applied,
        attempts: stored.attempts.count,
        last_error: stored.attempts.last_error.clone(),
    }
}
