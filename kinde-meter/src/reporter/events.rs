//! What the reporter tells the application: counters and reports.

use std::fmt;

use crate::usage::UnsentRecord;

/// Counters of a reporter since it started, in units of delta usage unless noted.
/// Absolute values are not summed: they show in the record counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Delta usage accepted for delivery (attributed and valid).
    pub recorded: u64,
    /// Delta usage Kinde accepted.
    pub delivered: u64,
    /// Records (delta and absolute) Kinde accepted.
    pub records_delivered: u64,
    /// Requests sent, retries included.
    pub requests: u64,
    /// Attempts retried.
    pub retried: u64,
    /// Delta usage in attempts that may have been applied (timeouts after sending,
    /// 500/502/504, unreadable answers), counted once per such attempt. Under
    /// at-least-once delivery, Kinde may hold up to this much more than `delivered`.
    pub ambiguous: u64,
    /// 429 answers.
    pub throttled: u64,
    /// Delta usage Kinde rejected.
    pub rejected: u64,
    /// Delta usage recorded with no agreement in scope (not sent).
    pub unattributed: u64,
    /// Delta usage refused because `max_pending_keys` keys were pending.
    pub refused_overflow: u64,
    /// Calls refused because their feature code, agreement id or value was invalid.
    pub invalid: u64,
    /// Delta usage handed to `on_unsent`.
    pub unsent: u64,
    /// Of `unsent`: delta usage recorded for customers that could not be billed to any
    /// agreement (see [`MeterError::Unresolved`](crate::MeterError::Unresolved)), or whose
    /// agreement ended ([`AgreementEnded::HandBack`](crate::AgreementEnded::HandBack)).
    pub unresolved: u64,
    /// Customer lookups the resolver answered from Kinde (or its own source), not from
    /// its cache: one per customer per time to live when all is well.
    pub resolver_lookups: u64,
    /// Delta usage recorded after the reporter shut down, which waits in memory for the
    /// next start (see [`MeterError::AfterShutdown`](crate::MeterError::AfterShutdown)).
    pub after_shutdown: u64,
    /// Panics of the `on_error` and `on_unsent` hooks, contained.
    pub hook_panics: u64,
    /// With a journal: delta usage read back at start from the runs of processes that
    /// died (or shut down with usage undelivered): delivered by this reporter, or handed
    /// to `on_unsent` when it must not be resent.
    pub replayed: u64,
    /// With a journal: delta usage left undelivered at shutdown that the journal keeps
    /// for the next start (not passed to `on_unsent`).
    pub kept: u64,
    /// With a journal: delta usage of windows that could not be made durable (the journal
    /// full or its disk failing), delivered from memory only. See
    /// [`JournalIssue::NotDurable`](crate::JournalIssue::NotDurable).
    pub not_durable: u64,
    /// What counts toward `max_pending_keys`: keys that took usage since the last flush
    /// plus records waiting for delivery.
    pub pending_keys: u64,
    /// The last delivery error.
    pub last_error: Option<String>,
}

/// What [`Guard::flush`](crate::Guard::flush) achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlushReport {
    /// Records still waiting for delivery when the flush returned (0 when everything it
    /// closed was delivered).
    pub waiting: usize,
    /// Whether the time allowed ran out first.
    pub timed_out: bool,
    /// Whether the usage the flush closed is safe from a crash: on disk (with a journal;
    /// the flush then returns without waiting for delivery) or delivered.
    pub durable: bool,
}

/// What shutting the reporter down achieved.
///
/// Exact: `stats.recorded` counts the delta usage the shutdown's last drain took (usage
/// recorded by other threads while it ran included), and `stats.recorded +
/// stats.replayed` equals `stats.delivered + stats.rejected + stats.unsent + stats.kept`,
/// where `unsent` includes [`ShutdownReport::left`] and `kept` is
/// [`ShutdownReport::kept`]. Usage recorded after that drain is reported as
/// [`MeterError::AfterShutdown`](crate::MeterError::AfterShutdown).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// The counters at the end.
    pub stats: Stats,
    /// Records not delivered, also passed to `on_unsent`.
    pub left: Vec<UnsentRecord>,
    /// With a journal: records not delivered that the journal keeps, delivered by the next
    /// start on the same directory (not passed to `on_unsent`).
    pub kept: Vec<UnsentRecord>,
    /// Whether the deadline passed before everything was delivered.
    pub deadline_reached: bool,
    /// Set when the reporter's thread could not answer (it panicked or did not finish
    /// in time): its records are then unknown.
    pub failure: Option<String>,
}

impl ShutdownReport {
    /// Whether everything recorded was delivered.
    pub fn is_complete(&self) -> bool {
        self.left.is_empty() && self.kept.is_empty() && self.failure.is_none()
    }

    /// The delta usage left undelivered.
    pub fn left_value(&self) -> u128 {
        self.left.iter().map(|u| u128::from(u.record.delta())).sum()
    }
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "delivered {} (in {} records, {} requests, {} retried), left {} records",
            s.delivered,
            s.records_delivered,
            s.requests,
            s.retried,
            self.left.len()
        )?;
        if !self.kept.is_empty() {
            write!(
                f,
                ", {} kept in the journal for the next start",
                self.kept.len()
            )?;
        }
        if let Some(failure) = &self.failure {
            write!(f, "; {failure}")?;
        }
        Ok(())
    }
}
