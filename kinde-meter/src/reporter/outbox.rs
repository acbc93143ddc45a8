//! The delivery policy, without I/O: which record to send next and when, and what each
//! outcome does to it. The worker feeds it time and outcomes; tests feed it directly.
//!
//! - Records wait in one list that counts toward the pending-key bound. A new record of
//!   a key merges into a waiting one of the same coalescing bucket (never across buckets,
//!   never into one that may have been applied); an absolute one replaces it.
//! - At most `concurrency` requests in flight (halved on 429, regained one by one), at
//!   most `rate` per second (token bucket), none while a 429 pause lasts, and never two
//!   absolute records of one key at once (their order would be lost).
//! - Outcomes: accepted; not applied → retry after full-jitter backoff (429: after the
//!   pause); ambiguous → retry (at-least-once) or hand back (at-most-once); rejected →
//!   dropped and reported.
//!
//! A record's data ([`UsageRecord`]: what is billed, its window's timestamp and its
//! idempotency key) is kept apart from its delivery history ([`Attempts`]) and from the
//! scheduling state (when it may go next, an `Instant` that means nothing outside this
//! process). The first two are what the journal keeps: with one, the outbox logs every
//! change to them ([`Change`]) for the dispatcher to write, and [`Outbox::restore`] takes
//! them back at start.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::cells::Key;
use crate::api::{AgreementId, ApiError, Disposition, FeatureCode, MeterType, Timestamp};
use crate::config::Delivery;
use crate::journal::format::Stored;
use crate::sink::SendResult;
use crate::usage::{Attempts, RecordId, UnsentReason, UnsentRecord, UsageRecord};

/// Longest 429 pause honoured, whatever the server says.
const MAX_PAUSE: Duration = Duration::from_secs(600);
/// Pause after a 429 that names no reset time.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub(crate) struct Policy {
    pub(crate) delivery: Delivery,
    pub(crate) max_in_flight: usize,
    pub(crate) requests_per_second: f64,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) coalesce_secs: u64,
}

/// A record and its delivery history: what the outbox hands out and takes back.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    pub(crate) id: RecordId,
    pub(crate) usage: UsageRecord,
    pub(crate) attempts: Attempts,
    /// The coalescing bucket of `usage.timestamp`.
    bucket: u64,
    /// Lookups of its customer that failed since it was last sent, for their backoff.
    pub(crate) lookup_failures: u32,
    /// Times it was sent to a re-resolved agreement after Kinde said one had ended.
    pub(crate) reresolved: u32,
}

impl Record {
    /// What the journal keeps of it.
    pub(crate) fn stored(&self) -> Stored {
        Stored {
            id: self.id,
            usage: self.usage.clone(),
            attempts: self.attempts.clone(),
        }
    }

    /// What is billed: the usage, with the agreement a customer's usage was resolved to
    /// in place of the customer's stand-in.
    pub(crate) fn billed(&self) -> UsageRecord {
        let mut usage = self.usage.clone();
        if let Some(bound) = &self.attempts.bound {
            usage.agreement = bound.clone();
        }
        usage
    }

    /// The customer whose agreement is still to be found, if it is one.
    pub(crate) fn unresolved_customer(&self) -> Option<&crate::api::Customer> {
        self.usage
            .customer
            .as_ref()
            .filter(|_| self.attempts.bound.is_none())
    }

    pub(crate) fn unsent(&self, reason: UnsentReason) -> UnsentRecord {
        UnsentRecord {
            record: self.billed(),
            reason,
            maybe_applied: self.attempts.maybe_applied,
            attempts: self.attempts.count,
            last_error: self.attempts.last_error.clone(),
        }
    }

    /// The value as delta usage (0 for absolute records), for the counters.
    pub(crate) fn delta(&self) -> u64 {
        self.usage.delta()
    }

    fn is_absolute(&self) -> bool {
        self.usage.meter_type == MeterType::Absolute
    }

    /// The key absolute values are ordered by: (agreement, feature).
    fn absolute_key(&self) -> (AgreementId, FeatureCode) {
        (self.usage.agreement.clone(), self.usage.feature.clone())
    }

    fn same_key(&self, other: &Record) -> bool {
        let (a, b) = (&self.usage, &other.usage);
        a.agreement == b.agreement && a.feature == b.feature && a.meter_type == b.meter_type
    }
}

/// A waiting record and when it may be sent: the scheduling state, which stays here.
#[derive(Debug)]
struct Entry {
    record: Record,
    not_before: Instant,
}

/// A change to what the journal keeps, in the order it happened.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// A record is new, merged, or back from a failed attempt.
    Put(Stored),
    /// A record is done with (delivered, rejected, superseded or handed back).
    Settle(RecordId),
}

/// What an outcome led to, for counters, hooks and logs.
#[derive(Debug)]
pub(crate) enum Event {
    Delivered(Record),
    /// Will be retried. `ambiguous`: the delta of an attempt that may have been applied;
    /// `throttled`: the cause was a 429.
    Retrying {
        record: Record,
        ambiguous: Option<u64>,
        throttled: bool,
        error: String,
    },
    Rejected(Record, ApiError),
    Unsent(UnsentRecord),
    /// A lookup of a customer failed for a reason that may pass: its records wait.
    LookupRetrying {
        customer: crate::api::Customer,
        error: String,
    },
    /// A customer's record that no agreement could take: handed back with the reason.
    Unresolved {
        unsent: UnsentRecord,
        unresolved: crate::resolve::Unresolved,
    },
    /// An absolute record that a newer value of its key replaced while it was out.
    Superseded,
}

/// Why `next` has nothing to send now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Until this instant (a pause, the rate limit, or a backoff ends).
    Until(Instant),
    /// Until a request in flight completes.
    InFlight,
    /// Nothing is waiting.
    Idle,
}

struct TokenBucket {
    tokens: f64,
    capacity: f64,
    rate: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: f64, now: Instant) -> Self {
        let capacity = rate.max(1.0);
        Self {
            tokens: capacity,
            capacity,
            rate,
            at: now,
        }
    }

    fn refund(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.capacity);
    }

    fn take(&mut self, now: Instant) -> Result<(), Instant> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            // `rate` is validated to at least 0.01/s, so this is at most 100 s.
            let wait =
                Duration::try_from_secs_f64((1.0 - self.tokens) / self.rate).unwrap_or(MAX_PAUSE);
            Err(now + wait)
        }
    }
}

pub(crate) struct Outbox {
    policy: Policy,
    waiting: Vec<Entry>,
    in_flight: usize,
    /// (agreement, feature) of absolute records in flight.
    absolute_in_flight: HashSet<(AgreementId, FeatureCode)>,
    concurrency: usize,
    successes: usize,
    paused_until: Option<Instant>,
    bucket: TokenBucket,
    rng: fastrand::Rng,
    /// The first half of new records' ids (the journal's run), and the next second half.
    run: u64,
    next_seq: u64,
    /// Changes not yet taken, when a journal takes them.
    changes: Option<Vec<Change>>,
    /// With a journal: records merged into since the last window was taken, as they
    /// were before, so a window the journal could not write can be taken back out.
    merges: Vec<Stored>,
}

impl Outbox {
    pub(crate) fn new(policy: Policy, now: Instant, rng: fastrand::Rng) -> Self {
        Self {
            bucket: TokenBucket::new(policy.requests_per_second, now),
            concurrency: policy.max_in_flight,
            policy,
            waiting: Vec::new(),
            in_flight: 0,
            absolute_in_flight: HashSet::new(),
            successes: 0,
            paused_until: None,
            rng,
            run: 0,
            next_seq: 0,
            changes: None,
            merges: Vec::new(),
        }
    }

    /// Logs every change for a journal, and numbers new records within its `run`.
    pub(crate) fn journaled(mut self, run: u64) -> Self {
        self.run = run;
        self.changes = Some(Vec::new());
        self
    }

    /// Numbers new records from `seq` on (a new outbox for a run already numbered).
    pub(crate) fn numbered_from(mut self, seq: u64) -> Self {
        self.next_seq = seq;
        self
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The changes since the last call, oldest first.
    pub(crate) fn take_changes(&mut self) -> Vec<Change> {
        self.changes
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The records merged into since the last call, as they were before.
    pub(crate) fn take_merges(&mut self) -> Vec<Stored> {
        let mut merges = std::mem::take(&mut self.merges);
        // A record merged into twice was, before the first, as the first says.
        let mut seen = HashSet::new();
        merges.retain(|m| seen.insert(m.id));
        merges
    }

    /// Takes a merge back: the record returns to `before` (what the journal holds of it),
    /// and what the merge added waits as a record of its own, which the journal does not
    /// hold.
    pub(crate) fn unmerge(&mut self, before: Stored, now: Instant) {
        let Some(entry) = self.waiting.iter_mut().find(|e| e.record.id == before.id) else {
            return;
        };
        let r = &mut entry.record;
        let added = match r.usage.meter_type {
            MeterType::Delta => r.usage.value.saturating_sub(before.usage.value),
            MeterType::Absolute => r.usage.value,
        };
        let timestamp = r.usage.timestamp;
        let key = Key {
            agreement: r.usage.agreement.clone(),
            feature: r.usage.feature.clone(),
            meter_type: r.usage.meter_type,
        };
        r.usage = before.usage;
        r.attempts = before.attempts;
        if r.usage.meter_type == MeterType::Delta && added == 0 {
            return;
        }
        let record = self.fresh(key, added, timestamp);
        self.next_seq += 1;
        // Not merged back: it stands apart until the journal holds it.
        self.waiting.push(Entry {
            record,
            not_before: now,
        });
    }

    /// Every record held, waiting or not, by id.
    pub(crate) fn waiting_records(&self) -> impl Iterator<Item = &Record> {
        self.waiting.iter().map(|e| &e.record)
    }

    fn log(&mut self, change: impl FnOnce() -> Change) {
        if let Some(changes) = &mut self.changes {
            changes.push(change());
        }
    }

    /// Records waiting plus in flight: what counts toward the bound.
    pub(crate) fn len(&self) -> usize {
        self.waiting.len() + self.in_flight
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[cfg(test)]
    fn concurrency(&self) -> usize {
        self.concurrency
    }

    fn bucket_of(&self, timestamp: Timestamp) -> u64 {
        timestamp.unix_seconds() / self.policy.coalesce_secs
    }

    fn mergeable(&self, record: &Record) -> Option<usize> {
        self.waiting.iter().position(|e| {
            let r = &e.record;
            r.same_key(record)
                && r.bucket == record.bucket
                && (!r.attempts.maybe_applied || record.is_absolute())
                // A customer's record bound to an agreement keeps only what was bound
                // with it: newer usage is resolved on its own (the agreement may have
                // ended, or its cycle). A newer absolute value replaces it whole, as it
                // would any waiting one, so one value of a key waits at a time.
                && (r.attempts.bound.is_none() || record.is_absolute())
        })
    }

    /// Whether an absolute `record` taken out (sent, or looked up) was overtaken by a
    /// newer value of its key waiting in its coalescing bucket: the newer one stands.
    fn newer_value_waits(&self, record: &Record) -> bool {
        record.is_absolute()
            && self
                .waiting
                .iter()
                .any(|e| e.record.same_key(record) && e.record.bucket == record.bucket)
    }

    fn idempotency_key(&mut self) -> String {
        format!("{:016x}{:016x}", self.rng.u64(..), self.rng.u64(..))
    }

    /// A record with the next id, a fresh idempotency key and no attempts (the id is
    /// taken only when the caller keeps it: `next_seq += 1`).
    fn fresh(&mut self, key: Key, value: u64, timestamp: Timestamp) -> Record {
        Record {
            id: RecordId {
                run: self.run,
                seq: self.next_seq,
            },
            bucket: self.bucket_of(timestamp),
            usage: UsageRecord {
                customer: key.agreement.customer(),
                agreement: key.agreement,
                feature: key.feature,
                meter_type: key.meter_type,
                value,
                timestamp,
                idempotency_key: self.idempotency_key(),
            },
            attempts: Attempts::default(),
            lookup_failures: 0,
            reresolved: 0,
        }
    }

    /// Adds a new record (merging it into a waiting one when allowed), with a fresh
    /// idempotency key and no attempts.
    pub(crate) fn push(&mut self, key: Key, value: u64, timestamp: Timestamp, now: Instant) {
        let record = self.fresh(key, value, timestamp);
        if let Some(i) = self.mergeable(&record) {
            let before = self
                .changes
                .is_some()
                .then(|| self.waiting[i].record.stored());
            let r = &mut self.waiting[i].record;
            let merged = match record.usage.meter_type {
                MeterType::Delta => r.usage.value.checked_add(value),
                MeterType::Absolute => Some(value),
            };
            if let Some(merged) = merged {
                r.usage.value = merged;
                r.usage.timestamp = r.usage.timestamp.max(timestamp);
                // A merged record is a new request: a key Kinde might have stored for the
                // old content must not swallow the new part.
                r.usage.idempotency_key = record.usage.idempotency_key;
                r.attempts.maybe_applied = false;
                let stored = r.stored();
                self.log(|| Change::Put(stored));
                self.merges.extend(before);
                return;
            }
        }
        self.next_seq += 1;
        let stored = record.stored();
        self.log(|| Change::Put(stored));
        self.waiting.push(Entry {
            record,
            not_before: now,
        });
    }

    /// Takes back a record from the journal: its id, idempotency key and attempts are
    /// kept, and it is never merged, since that would change what the key stands for.
    pub(crate) fn restore(&mut self, stored: Stored, now: Instant) {
        let record = Record {
            bucket: self.bucket_of(stored.usage.timestamp),
            id: stored.id,
            usage: stored.usage,
            attempts: stored.attempts,
            lookup_failures: 0,
            reresolved: 0,
        };
        self.waiting.push(Entry {
            record,
            not_before: now,
        });
    }

    /// The next record to send now, or why there is none. The caller must report its
    /// outcome with [`Outbox::complete`].
    pub(crate) fn next(&mut self, now: Instant) -> Result<Record, Wait> {
        if self.waiting.is_empty() {
            return Err(if self.in_flight > 0 {
                Wait::InFlight
            } else {
                Wait::Idle
            });
        }
        if let Some(until) = self.paused_until {
            if now < until {
                return Err(Wait::Until(until));
            }
            self.paused_until = None;
        }
        if self.in_flight >= self.concurrency {
            return Err(Wait::InFlight);
        }
        // Absolute values of a key reach Kinde in the order they were recorded: one at a
        // time, oldest first (a retried older value must not land after a newer one).
        let mut oldest_absolute: HashMap<(&AgreementId, &FeatureCode), Timestamp> = HashMap::new();
        for e in &self.waiting {
            let u = &e.record.usage;
            if u.meter_type == MeterType::Absolute {
                oldest_absolute
                    .entry((&u.agreement, &u.feature))
                    .and_modify(|t| *t = (*t).min(u.timestamp))
                    .or_insert(u.timestamp);
            }
        }
        let sendable = |e: &Entry| {
            let u = &e.record.usage;
            u.meter_type == MeterType::Delta
                || (!self
                    .absolute_in_flight
                    .contains(&(u.agreement.clone(), u.feature.clone()))
                    && oldest_absolute.get(&(&u.agreement, &u.feature)) == Some(&u.timestamp))
        };
        // Oldest due record first (the list is in arrival order).
        let Some(i) = self
            .waiting
            .iter()
            .position(|e| e.not_before <= now && sendable(e))
        else {
            let next_due = self
                .waiting
                .iter()
                .filter(|e| sendable(e))
                .map(|e| e.not_before)
                .min();
            return Err(next_due.map_or(Wait::InFlight, Wait::Until));
        };
        self.bucket.take(now).map_err(Wait::Until)?;
        let record = self.waiting.remove(i).record;
        self.in_flight += 1;
        if record.is_absolute() {
            self.absolute_in_flight.insert(record.absolute_key());
        }
        Ok(record)
    }

    fn backoff(&mut self, attempts: u32) -> Duration {
        let exp = self
            .policy
            .backoff_initial
            .saturating_mul(1u32 << attempts.min(20));
        let cap = exp.min(self.policy.backoff_max);
        // Full jitter: anywhere between zero and the cap.
        cap.mul_f64(self.rng.f64())
    }

    /// Feeds back the outcome of a record taken with [`Outbox::next`].
    pub(crate) fn complete(&mut self, record: Record, outcome: SendResult, now: Instant) -> Event {
        let id = record.id;
        let event = self.outcome(record, outcome, now);
        match &event {
            Event::Retrying { record, .. } => {
                let stored = record.stored();
                self.log(|| Change::Put(stored));
            }
            _ => self.log(|| Change::Settle(id)),
        }
        event
    }

    fn outcome(&mut self, mut record: Record, outcome: SendResult, now: Instant) -> Event {
        self.in_flight = self.in_flight.saturating_sub(1);
        if record.is_absolute() {
            self.absolute_in_flight.remove(&record.absolute_key());
        }
        record.attempts.count = record.attempts.count.saturating_add(1);
        let error = match outcome {
            Ok(()) => {
                self.regain_concurrency();
                return Event::Delivered(record);
            }
            Err(e) => e,
        };
        let message = error.to_string();
        record.attempts.last_error = Some(message.clone());
        let disposition = error.disposition();
        if disposition == Disposition::Rejected {
            return Event::Rejected(record, error);
        }
        let mut ambiguous = None;
        if disposition == Disposition::Ambiguous {
            record.attempts.maybe_applied = true;
            ambiguous = Some(record.delta());
            if self.policy.delivery == Delivery::AtMostOnce {
                return Event::Unsent(record.unsent(UnsentReason::Ambiguous));
            }
        }
        let throttled = matches!(error, ApiError::Throttled { .. });
        let not_before = if let ApiError::Throttled { retry_after, .. } = error {
            let wait = retry_after.unwrap_or(DEFAULT_PAUSE).min(MAX_PAUSE);
            // Plus up to a second of jitter so many clients do not return at once.
            let until = now + wait + Duration::from_secs_f64(self.rng.f64());
            self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
            self.concurrency = (self.concurrency / 2).max(1);
            self.successes = 0;
            until
        } else {
            now + self.backoff(record.attempts.count - 1)
        };
        if self.newer_value_waits(&record) {
            // A newer value of this key is waiting; this one must not overwrite it later.
            return Event::Superseded;
        }
        let retrying = record.clone();
        self.waiting.push(Entry { record, not_before });
        Event::Retrying {
            record: retrying,
            ambiguous,
            throttled,
            error: message,
        }
    }

    /// Puts back a record taken with [`Outbox::next`] that was not sent (its attempt's
    /// start could not be journaled): no attempt is counted, and it waits a backoff.
    /// Returns when it may go again.
    pub(crate) fn hold(&mut self, record: Record, now: Instant) -> Instant {
        self.in_flight = self.in_flight.saturating_sub(1);
        // Its rate token goes back: nothing was sent, and records that can go must not
        // wait behind it.
        self.bucket.refund();
        if record.is_absolute() {
            self.absolute_in_flight.remove(&record.absolute_key());
        }
        // Not sooner than the first backoff step: a failing disk is not retried in a spin.
        let delay = self
            .backoff(record.attempts.count)
            .max(self.policy.backoff_initial);
        let not_before = now + delay;
        // At the front, where it was due from: ahead of any newer value of its key.
        self.waiting.insert(0, Entry { record, not_before });
        not_before
    }

    /// A record taken with [`Outbox::next`] waits for a lookup of its customer, which is
    /// not a request: its delivery slot and rate token go back, so deliveries to other
    /// keys do not wait behind a slow lookup. An absolute record keeps both (and its
    /// place in its key's order) until it is sent.
    pub(crate) fn lookup_started(&mut self, record: &Record) {
        if !record.is_absolute() {
            self.in_flight = self.in_flight.saturating_sub(1);
            self.bucket.refund();
        }
    }

    /// Gives back what a record taken with [`Outbox::next`] holds: its slot, and for an
    /// absolute one its key's turn. `looked_up`: it was waiting for a lookup
    /// ([`Outbox::lookup_started`]), so only an absolute one still holds a slot.
    fn release(&mut self, record: &Record, looked_up: bool) {
        if !looked_up || record.is_absolute() {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        if record.is_absolute() {
            self.absolute_in_flight.remove(&record.absolute_key());
        }
    }

    /// Puts back a record whose customer was looked up ([`Outbox::lookup_started`]): no
    /// attempt is counted, and it is due at `not_before`, ahead of newer records of its key.
    pub(crate) fn requeue(&mut self, record: Record, not_before: Instant) {
        if record.is_absolute() {
            self.bucket.refund();
        }
        self.release(&record, true);
        if self.newer_value_waits(&record) {
            // A newer value of its key came while it was looked up (it could not merge
            // into a record that was out): that one stands, as after a failed attempt.
            let id = record.id;
            self.log(|| Change::Settle(id));
            return;
        }
        let stored = record.stored();
        self.log(|| Change::Put(stored));
        self.waiting.insert(0, Entry { record, not_before });
    }

    /// [`Outbox::requeue`] after a lookup of its customer failed for a reason that may
    /// pass: it waits a backoff that grows with each failure, as a delivery does.
    pub(crate) fn lookup_failed(&mut self, mut record: Record, now: Instant) -> Instant {
        record.lookup_failures = record.lookup_failures.saturating_add(1);
        let delay = self
            .backoff(record.lookup_failures - 1)
            .max(self.policy.backoff_initial);
        self.requeue(record, now + delay);
        now + delay
    }

    /// Settles a record taken with [`Outbox::next`] that will not be sent again
    /// (`looked_up`: see [`Outbox::release`]).
    pub(crate) fn give_up(&mut self, record: &Record, looked_up: bool) {
        self.release(record, looked_up);
        let id = record.id;
        self.log(|| Change::Settle(id));
    }

    /// Binds the waiting records of customers not yet resolved, where `bind` gives an
    /// agreement; they are due at once.
    pub(crate) fn bind_waiting(
        &mut self,
        now: Instant,
        mut bind: impl FnMut(&Record) -> Option<AgreementId>,
    ) {
        let mut bound = Vec::new();
        for entry in &mut self.waiting {
            if entry.record.unresolved_customer().is_none() {
                continue;
            }
            if let Some(agreement) = bind(&entry.record) {
                entry.record.attempts.bound = Some(agreement);
                entry.not_before = entry.not_before.min(now);
                bound.push(entry.record.stored());
            }
        }
        for stored in bound {
            self.log(|| Change::Put(stored));
        }
    }

    /// Additive increase after a 429 halved the concurrency.
    fn regain_concurrency(&mut self) {
        if self.concurrency < self.policy.max_in_flight {
            self.successes += 1;
            if self.successes >= self.concurrency {
                self.concurrency += 1;
                self.successes = 0;
            }
        }
    }

    /// Takes every waiting record out (at the shutdown deadline).
    pub(crate) fn take_all(&mut self) -> Vec<Record> {
        self.waiting.drain(..).map(|e| e.record).collect()
    }

    /// Forgets records that were in flight, or waiting for a lookup (`looked_up`), when
    /// they were abandoned (at the deadline).
    pub(crate) fn abandon_in_flight(&mut self, record: &Record, looked_up: bool) {
        self.release(record, looked_up);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgreementId, FeatureCode};
    use http::StatusCode;

    fn policy() -> Policy {
        Policy {
            delivery: Delivery::AtLeastOnce,
            max_in_flight: 4,
            requests_per_second: 1000.0,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            coalesce_secs: 3600,
        }
    }

    fn key(agreement: &str, meter_type: MeterType) -> Key {
        Key {
            agreement: AgreementId::new(agreement).expect("id"),
            feature: FeatureCode::from_static("f"),
            meter_type,
        }
    }

    fn ts(secs: u64) -> Timestamp {
        Timestamp::from_unix_seconds(secs).expect("ts")
    }

    fn server(status: u16) -> ApiError {
        ApiError::Server {
            status: StatusCode::from_u16(status).expect("status"),
            errors: vec![],
        }
    }

    #[test]
    fn merges_only_within_a_bucket_and_never_into_maybe_applied_records() {
        let now = Instant::now();
        let mut o = Outbox::new(policy(), now, fastrand::Rng::with_seed(1));
        let k = key("agreement_a", MeterType::Delta);
        o.push(k.clone(), 1, ts(7200), now);
        o.push(k.clone(), 2, ts(7201), now);
        assert_eq!(o.len(), 1, "same hour: merged");
        o.push(k.clone(), 4, ts(10_800), now);
        assert_eq!(o.len(), 2, "next hour: separate");
        let first = o.next(now).expect("due");
        assert_eq!((first.usage.value, first.usage.timestamp), (3, ts(7201)));
        assert!(matches!(
            o.complete(first, Err(server(502)), now),
            Event::Retrying {
                ambiguous: Some(3),
                ..
            }
        ));
        o.push(k.clone(), 8, ts(7202), now);
        let values: Vec<u64> = o.waiting.iter().map(|e| e.record.usage.value).collect();
        assert_eq!(
            values,
            vec![4, 3, 8],
            "a maybe-applied record takes no more usage"
        );
    }

    #[test]
    fn a_merge_taken_back_leaves_the_record_as_journaled_and_the_rest_apart() {
        let now = Instant::now();
        let mut o = Outbox::new(policy(), now, fastrand::Rng::with_seed(9)).journaled(5);
        let k = key("agreement_a", MeterType::Delta);
        o.push(k.clone(), 1, ts(7200), now);
        let journaled = o.waiting[0].record.stored();
        assert_eq!(o.take_changes(), vec![Change::Put(journaled.clone())]);
        assert!(
            o.take_merges().is_empty(),
            "a new record merges into nothing"
        );
        o.push(k.clone(), 2, ts(7201), now);
        o.push(k.clone(), 4, ts(7202), now);
        let merges = o.take_merges();
        assert_eq!(
            merges,
            vec![journaled.clone()],
            "the state before the first merge"
        );
        for before in merges {
            o.unmerge(before, now);
        }
        let records: Vec<&Record> = o.waiting_records().collect();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].stored(), journaled, "as the journal holds it");
        assert_eq!(records[1].usage.value, 6, "what the merges added, apart");
        assert_ne!(records[1].id, journaled.id);
        assert_ne!(
            records[1].usage.idempotency_key,
            journaled.usage.idempotency_key
        );
    }

    #[test]
    fn attempt_counts_saturate() {
        let now = Instant::now();
        let mut o = Outbox::new(policy(), now, fastrand::Rng::with_seed(10));
        let mut stored = {
            o.push(key("agreement_a", MeterType::Delta), 1, ts(1), now);
            o.take_all().remove(0).stored()
        };
        stored.attempts.count = u32::MAX;
        o.restore(stored, now);
        let r = o.next(now).expect("due");
        o.complete(r, Err(server(503)), now);
        let r = o.next(now + Duration::from_secs(60)).expect("due");
        assert_eq!(r.attempts.count, u32::MAX);
    }

    #[test]
    fn same_idempotency_key_across_retries() {
        let now = Instant::now();
        let mut o = Outbox::new(policy(), now, fastrand::Rng::with_seed(2));
        o.push(key("agreement_a", MeterType::Delta), 1, ts(1), now);
        let r = o.next(now).expect("due");
        let idem = r.usage.idempotency_key.clone();
        assert_eq!(idem.len(), 32);
        o.complete(r, Err(server(503)), now);
        let later = now + Duration::from_secs(10);
        let r = o.next(later).expect("due after backoff");
        assert_eq!(r.usage.idempotency_key, idem);
        assert_eq!(r.attempts.count, 1);
    }

    #[test]
    fn a_restored_record_keeps_its_key_and_attempts() {
        let now = Instant::now();
        let mut o = Outbox::new(policy(), now, fastrand::Rng::with_seed(8));
        let usage = UsageRecord {
            agreement: AgreementId::new("agreement_a").expect("id"),
            customer: None,
            feature: FeatureCode::from_static("f"),
            meter_type: MeterType::Delta,
            value: 7,
            timestamp: ts(7200),
            idempotency_key: "journal-key-1".to_owned(),
        };
        let before = Attempts {
            count: 2,
            maybe_applied: true,
            last_error: Some("timed out".to_owned()),
            bound: None,
        };
        o.restore(
            Stored {
                id: RecordId { run: 9, seq: 4 },
                usage: usage.clone(),
                attempts: before.clone(),
            },
            now,
        );
        // A new record of the same key and hour is not merged into one that may have
        // been applied, so the restored key keeps standing for exactly its content.
        o.push(key("agreement_a", MeterType::Delta), 1, ts(7201), now);
        assert_eq!(o.len(), 2);
        let r = o.next(now).expect("due");
        assert_eq!(r.usage, usage, "data and idempotency key as restored");
        assert_eq!(r.attempts, before);
        o.complete(r, Err(server(503)), now);
        let later = now + Duration::from_secs(60);
        let mut sent = Vec::new();
        while let Ok(r) = o.next(later) {
            sent.push(r);
        }
        let again = sent
            .iter()
            .find(|r| r.usage.idempotency_key == "journal-key-1")
            .expect("retried under its key");
        assert_eq!(
            again.attempts.count, 3,
            "attempts go on from the restored count"
        );
        assert!(again.attempts.maybe_applied);
        let unsent = again.unsent(UnsentReason::DeadlineExceeded);
        assert_eq!((unsent.attempts, unsent.record.value), (3, 7));
    }

    #[test]
    fn throttling_pauses_everything_and_halves_concurrency() {
        let now = Instant::now();
        let mut o = Outbox::new(policy(), now, fastrand::Rng::with_seed(3));
        for i in 0..6 {
            o.push(
                key(&format!("agreement_{i}"), MeterType::Delta),
                1,
                ts(1),
                now,
            );
        }
        let r = o.next(now).expect("due");
        let throttled = ApiError::Throttled {
            retry_after: Some(Duration::from_secs(3)),
            errors: vec![],
        };
        assert!(matches!(
            o.complete(r, Err(throttled), now),
            Event::Retrying {
                throttled: true,
                ..
            }
        ));
        assert_eq!(o.concurrency(), 2);
        match o.next(now + Duration::from_millis(2_999)) {
            Err(Wait::Until(t)) => assert!(t >= now + Duration::from_secs(3)),
            other => panic!("still paused, got {other:?}"),
        }
        let after = now + Duration::from_secs(5);
        let a = o.next(after).expect("resumed");
        let b = o.next(after).expect("second slot");
        assert_eq!(o.next(after).unwrap_err(), Wait::InFlight, "halved to 2");
        o.complete(a, Ok(()), after);
        o.complete(b, Ok(()), after);
        assert_eq!(
            o.concurrency(),
            3,
            "regained one after a full round of successes"
        );
    }

    #[test]
    fn ambiguous_under_at_most_once_is_handed_back() {
        let now = Instant::now();
        let mut p = policy();
        p.delivery = Delivery::AtMostOnce;
        let mut o = Outbox::new(p, now, fastrand::Rng::with_seed(4));
        o.push(key("agreement_a", MeterType::Delta), 5, ts(1), now);
        let r = o.next(now).expect("due");
        let timeout = ApiError::Timeout {
            after: Duration::from_secs(1),
        };
        match o.complete(r, Err(timeout), now) {
            Event::Unsent(u) => {
                assert_eq!(u.reason, UnsentReason::Ambiguous);
                assert!(u.maybe_applied);
                assert_eq!(u.record.value, 5);
            }
            other => panic!("{other:?}"),
        }
        assert!(o.is_empty());
    }

    #[test]
    fn a_customers_absolute_value_that_came_during_its_lookup_wins() {
        let now = Instant::now();
        let customer = crate::api::Customer::org("org_a").expect("code");
        let k = Key {
            agreement: AgreementId::for_customer(&customer),
            feature: FeatureCode::from_static("f"),
            meter_type: MeterType::Absolute,
        };
        for lookup_fails in [false, true] {
            let mut o = Outbox::new(policy(), now, fastrand::Rng::with_seed(6));
            // Both in one second: the stamps cannot order them.
            o.push(k.clone(), 7, ts(5), now);
            let older = o.next(now).expect("due");
            o.lookup_started(&older);
            o.push(k.clone(), 6, ts(5), now);
            assert_eq!(
                o.next(now).unwrap_err(),
                Wait::InFlight,
                "its key is still out"
            );
            if lookup_fails {
                o.lookup_failed(older, now);
            } else {
                let mut older = older;
                older.attempts.bound = Some(AgreementId::new("agreement_a").expect("id"));
                o.requeue(older, now);
            }
            let values: Vec<u64> = o.waiting_records().map(|r| r.usage.value).collect();
            assert_eq!(values, [6], "lookup failed: {lookup_fails}");
            assert_eq!(o.len(), 1);
        }
    }

    #[test]
    fn absolute_records_of_one_key_are_never_in_flight_together() {
        let now = Instant::now();
        let mut o = Outbox::new(policy(), now, fastrand::Rng::with_seed(5));
        let k = key("agreement_a", MeterType::Absolute);
        o.push(k.clone(), 10, ts(1), now);
        let first = o.next(now).expect("due");
        o.push(k.clone(), 20, ts(2), now);
        assert_eq!(o.next(now).unwrap_err(), Wait::InFlight);
        // The older value fails; the newer one must win.
        assert!(matches!(
            o.complete(first, Err(server(503)), now),
            Event::Superseded
        ));
        assert_eq!(o.next(now).expect("newer").usage.value, 20);
    }

    #[test]
    fn absolute_values_of_a_key_are_sent_oldest_first_across_buckets() {
        let now = Instant::now();
        let mut o = Outbox::new(policy(), now, fastrand::Rng::with_seed(6));
        let k = key("agreement_a", MeterType::Absolute);
        o.push(k.clone(), 10, ts(3599), now);
        let older = o.next(now).expect("due");
        // A newer value, in the next coalescing bucket, arrives while the older is out.
        o.push(k.clone(), 20, ts(3600), now);
        assert!(o.next(now).is_err(), "one value of a key at a time");
        // The older one fails and must be retried before the newer one is sent.
        o.complete(older, Err(server(503)), now);
        let later = now + Duration::from_secs(60);
        let first = o.next(later).expect("due after backoff");
        assert_eq!(first.usage.value, 10, "the older value goes first");
        assert!(o.next(later).is_err(), "the newer waits for it");
        assert!(matches!(
            o.complete(first, Ok(()), later),
            Event::Delivered(_)
        ));
        assert_eq!(o.next(later).expect("then the newer").usage.value, 20);
    }

    #[test]
    fn rate_limit_spaces_requests() {
        let now = Instant::now();
        let mut p = policy();
        p.requests_per_second = 2.0;
        let mut o = Outbox::new(p, now, fastrand::Rng::with_seed(7));
        for i in 0..3 {
            o.push(
                key(&format!("agreement_{i}"), MeterType::Delta),
                1,
                ts(1),
                now,
            );
        }
        let a = o.next(now).expect("burst 1");
        let b = o.next(now).expect("burst 2");
        match o.next(now) {
            Err(Wait::Until(t)) => assert_eq!(t, now + Duration::from_millis(500)),
            other => panic!("{other:?}"),
        }
        o.complete(a, Ok(()), now);
        o.complete(b, Ok(()), now);
        assert!(o.next(now + Duration::from_millis(500)).is_ok());
    }
}

/// Random interleavings of new records, sends, outcomes and time, under both delivery
/// policies: no unit of delta usage is ever lost or counted twice by the outbox, and its
/// limits hold at every step.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::api::{AgreementId, FeatureCode};
    use http::StatusCode;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Push {
            key: usize,
            absolute: bool,
            value: u64,
            hour: u64,
        },
        Send,
        Complete {
            which: usize,
            outcome: u8,
        },
        Advance {
            millis: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4usize, any::<bool>(), 1..1_000u64, 0..3u64).prop_map(
                |(key, absolute, value, hour)| Op::Push {
                    key,
                    absolute,
                    value,
                    hour
                }
            ),
            Just(Op::Send),
            (any::<usize>(), 0..7u8).prop_map(|(which, outcome)| Op::Complete { which, outcome }),
            (0..3_000u64).prop_map(|millis| Op::Advance { millis }),
        ]
    }

    fn outcome(code: u8) -> SendResult {
        let server = |s: u16| ApiError::Server {
            status: StatusCode::from_u16(s).expect("status"),
            errors: vec![],
        };
        match code {
            0 | 1 => Ok(()),
            2 => Err(server(503)),
            3 => Err(server(502)),
            4 => Err(ApiError::Throttled {
                retry_after: Some(Duration::from_secs(1)),
                errors: vec![],
            }),
            5 => Err(ApiError::Timeout {
                after: Duration::from_secs(1),
            }),
            _ => Err(ApiError::Rejected {
                status: StatusCode::BAD_REQUEST,
                errors: vec![],
            }),
        }
    }

    #[derive(Default)]
    struct Ledger {
        pushed: u128,
        delivered: u128,
        rejected: u128,
        unsent: u128,
    }

    impl Ledger {
        fn account(&mut self, event: Event) {
            match event {
                Event::Delivered(r) => self.delivered += u128::from(r.delta()),
                Event::Rejected(r, _) => self.rejected += u128::from(r.delta()),
                Event::Unsent(u) | Event::Unresolved { unsent: u, .. }
                    if u.record.meter_type == MeterType::Delta =>
                {
                    self.unsent += u128::from(u.record.value)
                }
                Event::Unsent(_)
                | Event::Unresolved { .. }
                | Event::LookupRetrying { .. }
                | Event::Retrying { .. }
                | Event::Superseded => {}
            }
        }
    }

    fn delta_of(records: &[Record]) -> u128 {
        records.iter().map(|r| u128::from(r.delta())).sum()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn the_outbox_conserves_delta_usage(
            ops in proptest::collection::vec(op(), 1..120),
            at_most_once in any::<bool>(),
        ) {
            let policy = Policy {
                delivery: if at_most_once { Delivery::AtMostOnce } else { Delivery::AtLeastOnce },
                max_in_flight: 3,
                requests_per_second: 50.0,
                backoff_initial: Duration::from_millis(50),
                backoff_max: Duration::from_secs(2),
                coalesce_secs: 3600,
            };
            let mut now = Instant::now();
            let mut o = Outbox::new(policy, now, fastrand::Rng::with_seed(42));
            let mut sending: Vec<Record> = Vec::new();
            let mut ledger = Ledger::default();
            let keys: Vec<AgreementId> = (0..4).map(|i| AgreementId::new(format!("agreement_{i}")).expect("id")).collect();
            for op in ops {
                match op {
                    Op::Push { key, absolute, value, hour } => {
                        let meter_type = if absolute { MeterType::Absolute } else { MeterType::Delta };
                        let key = Key { agreement: keys[key].clone(), feature: FeatureCode::from_static("f"), meter_type };
                        if !absolute {
                            ledger.pushed += u128::from(value);
                        }
                        let ts = Timestamp::from_unix_seconds(1_700_000_000 + hour * 3600).expect("ts");
                        o.push(key, value, ts, now);
                    }
                    Op::Send => {
                        if let Ok(r) = o.next(now) {
                            sending.push(r);
                        }
                    }
                    Op::Complete { which, outcome: code } => {
                        if !sending.is_empty() {
                            let r = sending.swap_remove(which % sending.len());
                            ledger.account(o.complete(r, outcome(code), now));
                        }
                    }
                    Op::Advance { millis } => now += Duration::from_millis(millis),
                }
                // Limits hold at every step.
                prop_assert!(sending.len() <= 3);
                let mut absolute_out: Vec<_> = sending.iter().filter(|r| r.is_absolute()).map(Record::absolute_key).collect();
                absolute_out.sort();
                let n = absolute_out.len();
                absolute_out.dedup();
                prop_assert_eq!(n, absolute_out.len(), "two absolute records of one key in flight");
                // Conservation holds at every step, counting what is still out.
                prop_assert_eq!(
                    ledger.pushed,
                    ledger.delivered + ledger.rejected + ledger.unsent + delta_of(&o.waiting.iter().map(|e| e.record.clone()).collect::<Vec<_>>()) + delta_of(&sending)
                );
            }
            // Finally let everything succeed: the outbox drains and nothing is missing.
            for r in sending.drain(..) {
                ledger.account(o.complete(r, Ok(()), now));
            }
            for _ in 0..10_000 {
                if o.is_empty() {
                    break;
                }
                now += Duration::from_secs(5);
                while let Ok(r) = o.next(now) {
                    ledger.account(o.complete(r, Ok(()), now));
                }
            }
            prop_assert!(o.is_empty());
            prop_assert_eq!(ledger.pushed, ledger.delivered + ledger.rejected + ledger.unsent);
            if !at_most_once {
                prop_assert_eq!(ledger.unsent, 0);
            }
        }
    }
}
