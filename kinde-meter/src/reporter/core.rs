//! The state one reporter shares between the threads that record and its worker:
//! cells, counters, hooks.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, RwLock};

use super::cells::{AgreementRef, Lookup, Refusal, Registry};
use super::events::{InvalidValue, MeterError, Stats, UnsentRecord};
use crate::api::{FeatureCode, MeterType};
use crate::config::{ErrorHook, UnsentHook};

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) delivered: AtomicU64,
    pub(crate) records_delivered: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) ambiguous: AtomicU64,
    pub(crate) throttled: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) unattributed: AtomicU64,
    pub(crate) refused_overflow: AtomicU64,
    pub(crate) invalid: AtomicU64,
    pub(crate) unsent: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
}

#[derive(Clone, Default)]
struct Hooks {
    on_error: Option<ErrorHook>,
    on_unsent: Option<UnsentHook>,
}

/// Cells, counters and hooks of one reporter (the global one, or a `Reporter::start`).
pub(crate) struct Core {
    pub(crate) registry: Registry,
    pub(crate) counters: Counters,
    hooks: RwLock<Hooks>,
    /// Features already warned about as unattributed or invalid: one warning each.
    warned: Mutex<HashSet<(&'static str, String)>>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

fn add(counter: &AtomicU64, value: u64) {
    counter.fetch_add(value, Relaxed);
}

impl Core {
    pub(crate) fn new(max_keys: usize) -> Self {
        Self::with_registry(Registry::new(max_keys))
    }

    /// The core behind `record` and `#[meter]`.
    pub(crate) fn global(max_keys: usize) -> Self {
        Self::with_registry(Registry::global(max_keys))
    }

    fn with_registry(registry: Registry) -> Self {
        Self {
            registry,
            counters: Counters::default(),
            hooks: RwLock::default(),
            warned: Mutex::default(),
        }
    }

    pub(crate) fn set_hooks(&self, on_error: Option<ErrorHook>, on_unsent: Option<UnsentHook>) {
        *self.hooks.write().unwrap_or_else(|e| e.into_inner()) = Hooks {
            on_error,
            on_unsent,
        };
    }

    fn hooks(&self) -> Hooks {
        self.hooks.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Adds usage for an agreement: the hot path.
    #[inline]
    pub(crate) fn add(
        &self,
        agreement: AgreementRef<'_>,
        feature: &FeatureCode,
        meter_type: MeterType,
        value: u64,
    ) {
        if let Err(refusal) = self.registry.add(agreement, feature, meter_type, value) {
            self.refused(refusal, agreement, feature, meter_type, value);
        }
    }

    /// The slow half of [`Core::add`], for a caller that already missed the cache.
    #[cold]
    pub(crate) fn add_uncached(
        &self,
        agreement: AgreementRef<'_>,
        feature: &FeatureCode,
        meter_type: MeterType,
        value: u64,
        lookup: Lookup,
    ) {
        if let Err(refusal) = self
            .registry
            .add_slow(agreement, feature, meter_type, value, lookup)
        {
            self.refused(refusal, agreement, feature, meter_type, value);
        }
    }

    /// A value that cannot be billed (negative, too large).
    #[cold]
    pub(crate) fn invalid_value(&self, feature: &FeatureCode, invalid: InvalidValue) {
        self.invalid(feature, &invalid.to_string());
    }

    /// Usage with no agreement in scope.
    #[cold]
    pub(crate) fn unattributed(&self, feature: &FeatureCode, meter_type: MeterType, value: u64) {
        if meter_type == MeterType::Delta {
            add(&self.counters.unattributed, value);
        }
        if self.first_time("unattributed", feature.as_str()) {
            tracing::warn!(
                target: "kinde_meter",
                feature = feature.as_str(),
                "usage recorded with no customer agreement in scope is not sent (warned once per feature; \
                 see `Stats::unattributed`)"
            );
        }
        self.error(MeterError::Unattributed {
            feature: feature.clone(),
            value,
        });
    }

    #[cold]
    fn refused(
        &self,
        refusal: Refusal,
        agreement: AgreementRef<'_>,
        feature: &FeatureCode,
        meter_type: MeterType,
        value: u64,
    ) {
        let delta = if meter_type == MeterType::Delta {
            value
        } else {
            0
        };
        match refusal {
            Refusal::Overflow { max_keys } => {
                add(&self.counters.refused_overflow, delta);
                let Ok(agreement) = (match agreement {
                    AgreementRef::Id(id) => Ok(id.clone()),
                    AgreementRef::Str(s) => crate::AgreementId::new(s),
                }) else {
                    return;
                };
                if self.first_time("overflow", "") {
                    tracing::warn!(
                        target: "kinde_meter",
                        max_pending_keys = max_keys,
                        "usage for new keys is refused: the pending-key bound is reached (warned once; see \
                         `Stats::refused_overflow`)"
                    );
                }
                self.error(MeterError::Overflow {
                    agreement,
                    feature: feature.clone(),
                    value,
                    max_pending_keys: max_keys,
                });
            }
            Refusal::InvalidFeature(e) | Refusal::InvalidAgreement(e) => {
                add(&self.counters.invalid, 1);
                self.warn_invalid(feature.as_str(), &e.to_string());
                self.error(MeterError::invalid_input(feature.as_str(), &e));
            }
        }
    }

    #[cold]
    fn invalid(&self, feature: &FeatureCode, reason: &str) {
        add(&self.counters.invalid, 1);
        self.warn_invalid(feature.as_str(), reason);
        self.error(MeterError::Invalid {
            feature: feature.to_string(),
            reason: reason.to_owned(),
        });
    }

    fn warn_invalid(&self, feature: &str, reason: &str) {
        if self.first_time("invalid", feature) {
            tracing::warn!(
                target: "kinde_meter",
                feature,
                reason,
                "invalid usage is refused (warned once per feature; see `Stats::invalid`)"
            );
        }
    }

    fn first_time(&self, kind: &'static str, what: &str) -> bool {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.len() > 10_000 {
            // Bounded like everything else: forget and possibly warn again.
            warned.clear();
        }
        warned.insert((kind, what.to_owned()))
    }

    /// Passes an event to the error hook.
    pub(crate) fn error(&self, event: MeterError) {
        if let Some(hook) = self.hooks().on_error {
            hook(&event);
        }
    }

    /// Passes undelivered records to the unsent hook.
    pub(crate) fn unsent(&self, records: &[UnsentRecord]) {
        if records.is_empty() {
            return;
        }
        if let Some(hook) = self.hooks().on_unsent {
            hook(records);
        }
    }

    pub(crate) fn set_last_error(&self, error: String) {
        *self
            .counters
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    pub(crate) fn stats(&self) -> Stats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Relaxed);
        Stats {
            recorded: u64::try_from(self.registry.recorded_delta()).unwrap_or(u64::MAX),
            delivered: get(&c.delivered),
            records_delivered: get(&c.records_delivered),
            requests: get(&c.requests),
            retried: get(&c.retried),
            ambiguous: get(&c.ambiguous),
            throttled: get(&c.throttled),
            rejected: get(&c.rejected),
            unattributed: get(&c.unattributed),
            refused_overflow: get(&c.refused_overflow),
            invalid: get(&c.invalid),
            unsent: get(&c.unsent),
            pending_keys: self.registry.occupancy() as u64,
            last_error: c
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}
