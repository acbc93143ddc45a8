//! Accounting: what each delivery outcome means for the counters, the hooks and the logs
//! (warned once per failure episode, rejections logged once per feature and status).

use std::collections::HashSet;
use std::sync::Arc;

use super::dispatch::Resumption;
use super::outbox::Event;
use super::shared::{Shared, saturating_add};
use crate::usage::{JournalFailure, JournalIssue, MeterError, UnsentRecord};

pub(crate) struct Accounts {
    shared: Arc<Shared>,
    /// In a failure episode: warned once, quiet until a success.
    failing: bool,
    /// In a journal failure episode: warned once, quiet until a write succeeds.
    journal_failing: bool,
    /// (feature, status) pairs already logged as rejected.
    rejections_logged: HashSet<(String, Option<u16>)>,
    /// (customer, feature) pairs already warned of as unresolved (at most 1,000).
    unresolved_logged: HashSet<(crate::api::Customer, crate::api::FeatureCode)>,
}

impl Accounts {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            failing: false,
            journal_failing: false,
            rejections_logged: HashSet::new(),
            unresolved_logged: HashSet::new(),
        }
    }

    /// Counts `started` requests (retries included).
    pub(crate) fn requests(&self, started: u64) {
        if started > 0 {
            saturating_add(&self.shared.counters.requests, started);
        }
    }

    pub(crate) fn account(&mut self, event: Event) {
        let c = &self.shared.counters;
        match event {
            Event::Delivered(record) => {
                saturating_add(&c.delivered, record.delta());
                saturating_add(&c.records_delivered, 1);
                if self.failing {
                    self.failing = false;
                    tracing::info!(target: "kinde_meter", "delivery to Kinde recovered");
                }
            }
            Event::Retrying {
                record,
                ambiguous,
                throttled,
                error,
            } => {
                saturating_add(&c.retried, 1);
                if let Some(value) = ambiguous {
                    saturating_add(&c.ambiguous, value);
                    self.shared.error(MeterError::Ambiguous {
                        record: record.billed(),
                        attempts: record.attempts.count,
                        error: error.clone(),
                    });
                }
                if throttled {
                    saturating_add(&c.throttled, 1);
                }
                self.episode_failure(error);
            }
            Event::Rejected(record, error) => {
                saturating_add(&c.rejected, record.delta());
                let message = error.to_string();
                self.shared.set_last_error(message.clone());
                let usage = &record.billed();
                let first = self.rejections_logged.len() < 1000
                    && self.rejections_logged.insert((
                        usage.feature.to_string(),
                        error.status().map(|s| s.as_u16()),
                    ));
                if first {
                    tracing::error!(
                        target: "kinde_meter",
                        feature = usage.feature.as_str(),
                        agreement = usage.agreement.as_str(),
                        value = usage.value,
                        "Kinde rejected a usage record, which is dropped: {message} (logged once per feature and \
                         status; see `Stats::rejected`)"
                    );
                }
                self.shared.error(MeterError::Rejected {
                    record: record.billed(),
                    error,
                });
            }
            Event::Unsent(unsent) => {
                let delta = unsent.record.delta();
                saturating_add(&c.ambiguous, delta);
                saturating_add(&c.unsent, delta);
                self.episode_failure(unsent.last_error.clone().unwrap_or_default());
                self.shared.unsent(&[unsent]);
            }
            Event::LookupRetrying { customer, error } => {
                self.episode_failure(format!("looking up the agreements of {customer}: {error}"));
            }
            Event::Unresolved { unsent, unresolved } => {
                let delta = unsent.record.delta();
                saturating_add(&c.unsent, delta);
                saturating_add(&c.unresolved, delta);
                let message = unresolved.to_string();
                self.shared.set_last_error(message.clone());
                let first = self.unresolved_logged.len() < 1000
                    && self
                        .unresolved_logged
                        .insert((unresolved.customer.clone(), unresolved.feature.clone()));
                if first {
                    tracing::warn!(
                        target: "kinde_meter",
                        customer = %unresolved.customer,
                        feature = unresolved.feature.as_str(),
                        "{message} (logged once per customer and feature)"
                    );
                }
                self.shared.error(MeterError::Unresolved(unresolved));
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

    /// What resuming the journal did at start.
    pub(crate) fn resumed(&mut self, resumed: Resumption) {
        let c = &self.shared.counters;
        saturating_add(&c.replayed, resumed.replayed);
        for issue in resumed.issues {
            tracing::error!(target: "kinde_meter", "{issue}");
            self.shared.error(MeterError::Journal(issue));
        }
        for (record, attempts, in_flight) in resumed.ambiguous {
            // A new possibly-applied attempt only when it was in flight; else the process
            // that made the attempt counted it, and it is reported again here.
            let error = if in_flight {
                saturating_add(&c.ambiguous, record.delta());
                "in flight when the process sending it stopped"
            } else {
                "an earlier attempt may have been applied (reported again at start)"
            };
            self.shared.error(MeterError::Ambiguous {
                record,
                attempts,
                error: error.to_owned(),
            });
        }
        if !resumed.handed_back.is_empty() {
            tracing::warn!(
                target: "kinde_meter",
                records = resumed.handed_back.len(),
                value = delta_of(&resumed.handed_back),
                "records from the journal that must not be resent were passed to `on_unsent`"
            );
            self.hand_back(&resumed.handed_back);
        }
    }

    /// A journal write failed: `value` of delta usage is in memory only.
    pub(crate) fn journal_failed(&mut self, value: u64, cause: JournalFailure) {
        saturating_add(&self.shared.counters.not_durable, value);
        let issue = JournalIssue::NotDurable { value, cause };
        if !self.journal_failing {
            self.journal_failing = true;
            tracing::error!(
                target: "kinde_meter",
                "{issue} (logged once until the journal writes again; see `Stats::not_durable`)"
            );
        }
        self.shared.error(MeterError::Journal(issue));
    }

    /// A journal write succeeded: a failure episode, if any, is over.
    pub(crate) fn journal_ok(&mut self) {
        if self.journal_failing {
            self.journal_failing = false;
            tracing::info!(target: "kinde_meter", "the kinde-meter journal writes again");
        }
    }

    /// Records left at shutdown that the journal keeps for the next start.
    pub(crate) fn keep(&self, records: &[UnsentRecord]) {
        saturating_add(&self.shared.counters.kept, delta_of(records));
    }

    /// Records handed back undelivered: counted as unsent and passed to `on_unsent`.
    pub(crate) fn hand_back(&self, records: &[UnsentRecord]) -> u64 {
        let delta = delta_of(records);
        saturating_add(&self.shared.counters.unsent, delta);
        self.shared.unsent(records);
        delta
    }
}

/// The delta usage in `records` (absolute values do not add up).
pub(super) fn delta_of(records: &[UnsentRecord]) -> u64 {
    records
        .iter()
        .map(|u| u.record.delta())
        .fold(0, u64::saturating_add)
}
