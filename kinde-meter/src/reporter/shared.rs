//! The state one reporter shares between the threads that record and its worker:
//! cells, counters, hooks.

use std::cell::Cell;
use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, RwLock};

use super::cells::{AgreementRef, Problem, Registry};
use super::events::Stats;
use crate::api::{FeatureCode, MeterType};
use crate::config::{ErrorHook, UnsentHook};
use crate::usage::{InvalidValue, MeterError, UnsentRecord, delta};

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
    pub(crate) unresolved: AtomicU64,
    pub(crate) resolver_lookups: AtomicU64,
    pub(crate) after_shutdown: AtomicU64,
    pub(crate) hook_panics: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) kept: AtomicU64,
    pub(crate) not_durable: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
}

/// What a billing webhook said changed (see [`crate::billing_changed`]): whose pending
/// usage goes out now, and whose agreements are forgotten.
#[derive(Clone, Debug)]
pub(crate) struct BillingChange {
    pub(crate) customer_id: Option<crate::api::CustomerId>,
    pub(crate) named: Vec<crate::api::Customer>,
}

#[derive(Clone, Default)]
struct Hooks {
    on_error: Option<ErrorHook>,
    on_unsent: Option<UnsentHook>,
}

/// Why a metered call's usage needs reporting.
#[derive(Debug)]
pub(crate) enum CallProblem {
    /// No agreement in scope. `hidden`: another task's thread scope was passed over.
    Unattributed { hidden: bool },
    /// The cells refused it, or took it after the reporter stopped.
    Cells(Problem),
}

impl From<Problem> for CallProblem {
    fn from(p: Problem) -> Self {
        CallProblem::Cells(p)
    }
}

thread_local! {
    // Set while this thread runs a hook: what the hook's own metered calls raise is
    // counted but not passed to the hook again, so a hook cannot recurse into itself.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// Cells, counters and hooks of one reporter (the global one, or a `Reporter::start`).
pub(crate) struct Shared {
    pub(crate) registry: Registry,
    pub(crate) counters: Counters,
    hooks: RwLock<Hooks>,
    /// Features already warned about as unattributed or invalid: one warning each.
    warned: Mutex<HashSet<(&'static str, String)>>,
    /// The running worker's ear for billing webhooks.
    billing: Mutex<Option<tokio::sync::mpsc::UnboundedSender<BillingChange>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

/// Adds to a counter, saturating at `u64::MAX` rather than wrapping to a small number.
pub(crate) fn saturating_add(counter: &AtomicU64, value: u64) {
    let _ = counter.fetch_update(Relaxed, Relaxed, |c| Some(c.saturating_add(value)));
}

impl Shared {
    pub(crate) fn new(max_pending_keys: usize) -> Self {
        Self::with_registry(Registry::new(max_pending_keys))
    }

    /// The state behind `record` and `#[meter]`.
    pub(crate) fn global(max_pending_keys: usize) -> Self {
        Self::with_registry(Registry::global(max_pending_keys))
    }

    fn with_registry(registry: Registry) -> Self {
        Self {
            registry,
            counters: Counters::default(),
            hooks: RwLock::default(),
            warned: Mutex::default(),
            billing: Mutex::default(),
        }
    }

    /// Where [`Shared::billing_changed`] sends, while a worker runs.
    pub(crate) fn set_billing(
        &self,
        to: Option<tokio::sync::mpsc::UnboundedSender<BillingChange>>,
    ) {
        *self.billing.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }

    /// Tells the worker; `false` when none runs.
    pub(crate) fn billing_changed(&self, change: BillingChange) -> bool {
        let billing = self.billing.lock().unwrap_or_else(|e| e.into_inner());
        billing.as_ref().is_some_and(|to| to.send(change).is_ok())
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

    /// Adds usage for an explicit agreement, reporting what goes wrong.
    #[inline]
    pub(crate) fn record(
        &self,
        agreement: AgreementRef<'_>,
        feature: &FeatureCode,
        meter_type: MeterType,
        value: u64,
    ) {
        if let Err(problem) = self.registry.record(agreement, feature, meter_type, value) {
            self.report(problem.into(), feature, meter_type, value);
        }
    }

    /// A value that cannot be billed (negative, too large).
    #[cold]
    pub(crate) fn invalid_value(&self, feature: &FeatureCode, invalid: InvalidValue) {
        self.invalid(feature.as_str(), &invalid.to_string());
    }

    /// Counts, logs (once per kind and feature) and passes to the error hook what went
    /// wrong with a call.
    #[cold]
    pub(crate) fn report(
        &self,
        problem: CallProblem,
        feature: &FeatureCode,
        meter_type: MeterType,
        value: u64,
    ) {
        match problem {
            CallProblem::Unattributed { hidden } => {
                saturating_add(&self.counters.unattributed, delta(meter_type, value));
                if hidden {
                    crate::context::warn_hidden();
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
            CallProblem::Cells(Problem::Overflow {
                agreement,
                max_pending_keys,
            }) => {
                saturating_add(&self.counters.refused_overflow, delta(meter_type, value));
                if self.first_time("overflow", "") {
                    tracing::warn!(
                        target: "kinde_meter",
                        max_pending_keys = max_pending_keys,
                        "usage for new keys is refused: the pending-key bound is reached (warned once; see \
                         `Stats::refused_overflow`)"
                    );
                }
                self.error(MeterError::Overflow {
                    agreement,
                    feature: feature.clone(),
                    value,
                    max_pending_keys,
                });
            }
            CallProblem::Cells(Problem::InvalidFeature(e) | Problem::InvalidAgreement(e)) => {
                self.invalid(feature.as_str(), &e.to_string());
            }
            CallProblem::Cells(Problem::PendingSumTooLarge) => {
                self.invalid(
                    feature.as_str(),
                    &format!(
                        "the value {value} would take this key's usage pending in one window past u64::MAX; \
                         record such amounts in smaller units"
                    ),
                );
            }
            CallProblem::Cells(Problem::AfterShutdown { agreement }) => {
                saturating_add(&self.counters.after_shutdown, delta(meter_type, value));
                if self.first_time("after_shutdown", "") {
                    tracing::warn!(
                        target: "kinde_meter",
                        "usage recorded after the reporter shut down waits in memory for the next `init` \
                         (warned once; see `Stats::after_shutdown`)"
                    );
                }
                self.error(MeterError::AfterShutdown {
                    agreement,
                    feature: feature.clone(),
                    value,
                });
            }
        }
    }

    #[cold]
    fn invalid(&self, feature: &str, reason: &str) {
        saturating_add(&self.counters.invalid, 1);
        if self.first_time("invalid", feature) {
            tracing::warn!(
                target: "kinde_meter",
                feature,
                reason,
                "invalid usage is refused (warned once per feature; see `Stats::invalid`)"
            );
        }
        self.error(MeterError::Invalid {
            feature: feature.to_owned(),
            reason: reason.to_owned(),
        });
    }

    fn first_time(&self, kind: &'static str, what: &str) -> bool {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.len() > 10_000 {
            // Bounded like everything else: forget and possibly warn again.
            warned.clear();
        }
        warned.insert((kind, what.to_owned()))
    }

    /// Runs a hook: never re-entered on one thread, and a panic in it is contained,
    /// counted and logged (once), never passed on to the caller or the worker.
    fn run_hook(&self, hook: impl FnOnce()) {
        if IN_HOOK.replace(true) {
            return;
        }
        let outcome = catch_unwind(AssertUnwindSafe(hook));
        IN_HOOK.set(false);
        if outcome.is_err() {
            saturating_add(&self.counters.hook_panics, 1);
            if self.first_time("hook_panic", "") {
                tracing::error!(
                    target: "kinde_meter",
                    "an `on_error`/`on_unsent` hook panicked; the panic was contained and metering goes on \
                     (logged once; see `Stats::hook_panics`)"
                );
            }
        }
    }

    /// Passes an event to the error hook.
    pub(crate) fn error(&self, event: MeterError) {
        if let Some(hook) = self.hooks().on_error {
            self.run_hook(|| hook(&event));
        }
    }

    /// Passes undelivered records to the unsent hook.
    pub(crate) fn unsent(&self, records: &[UnsentRecord]) {
        if records.is_empty() {
            return;
        }
        if let Some(hook) = self.hooks().on_unsent {
            self.run_hook(|| hook(records));
        }
    }

    pub(crate) fn set_last_error(&self, error: String) {
        *self
            .counters
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    /// The counters, with `recorded` as given (the report of a shutdown counts only what
    /// its final drain took).
    pub(crate) fn stats_with(&self, recorded: u128) -> Stats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Relaxed);
        Stats {
            recorded: u64::try_from(recorded).unwrap_or(u64::MAX),
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
            unresolved: get(&c.unresolved),
            resolver_lookups: get(&c.resolver_lookups),
            after_shutdown: get(&c.after_shutdown),
            hook_panics: get(&c.hook_panics),
            replayed: get(&c.replayed),
            kept: get(&c.kept),
            not_durable: get(&c.not_durable),
            pending_keys: self.registry.pending_keys() as u64,
            last_error: c
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        self.stats_with(self.registry.recorded_delta())
    }
}
