//! Accounting: what each delivery outcome means for the counters, the hooks and the logs
//! (warned once per failure episode, rejections logged once per feature and status).

use std::collections::HashSet;
use std::sync::Arc;

use super::outbox::Event;
use super::shared::{Shared, saturating_add};
use crate::usage::{MeterError, UnsentRecord};

pub(crate) struct Accounts {
    shared: Arc<Shared>,
    /// In a failure episode: warned once, quiet until a success.
    failing: bool,
    /// (feature, status) pairs already logged as rejected.
    rejections_logged: HashSet<(String, Option<u16>)>,
}

impl Accounts {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            failing: false,
            rejections_logged: HashSet::new(),
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
                ambiguous,
                throttled,
                error,
            } => {
                saturating_add(&c.retried, 1);
                if let Some(value) = ambiguous {
                    saturating_add(&c.ambiguous, value);
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
                let usage = &record.usage;
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
                    record: record.usage,
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
