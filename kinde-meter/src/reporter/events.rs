//! What the reporter tells the application: hook events, records, reports.

use std::fmt;

use crate::api::{AgreementId, ApiError, FeatureCode, MeterType, Timestamp};

/// A value given to `#[meter(value = ...)]` that cannot be billed: negative, or larger
/// than `u64::MAX`. It is refused (counted in [`Stats::invalid`] and passed to the error
/// hook), never truncated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidValue(InvalidRepr);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InvalidRepr {
    /// Saturated at `i64::MIN` for smaller `i128` values.
    Negative(i64),
    TooLarge,
}

impl InvalidValue {
    pub(crate) fn negative(value: i128) -> Self {
        Self(InvalidRepr::Negative(
            i64::try_from(value).unwrap_or(i64::MIN),
        ))
    }

    pub(crate) fn too_large() -> Self {
        Self(InvalidRepr::TooLarge)
    }
}

impl fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            InvalidRepr::Negative(v) => {
                write!(
                    f,
                    "the value {v} is negative; usage values must be zero or more"
                )
            }
            InvalidRepr::TooLarge => f.write_str("the value is larger than u64::MAX"),
        }
    }
}

impl std::error::Error for InvalidValue {}

/// One unit of delivery: usage of one key in one flush window.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UsageRecord {
    /// The agreement billed.
    pub agreement: AgreementId,
    /// The feature.
    pub feature: FeatureCode,
    /// Delta (summed) or absolute (last value).
    pub meter_type: MeterType,
    /// The value.
    pub value: u64,
    /// When the window closed; sent as `meter_usage_timestamp` on every attempt.
    pub timestamp: Timestamp,
    /// Sent as `Idempotency-Key` on every attempt of this record.
    pub idempotency_key: String,
}

/// `value` as delta usage: 0 for an absolute value, which does not add up. The one
/// place the counters and reports turn a value into delta units.
pub(crate) fn delta(meter_type: MeterType, value: u64) -> u64 {
    match meter_type {
        MeterType::Delta => value,
        MeterType::Absolute => 0,
    }
}

impl UsageRecord {
    /// The value as delta usage (0 for absolute records).
    pub(crate) fn delta(&self) -> u64 {
        delta(self.meter_type, self.value)
    }
}

/// Usage that was recorded but will not be delivered, reported through
/// [`MeterError`] (`on_error`) as it happens. None of these stop the application.
#[derive(Debug)]
#[non_exhaustive]
pub enum MeterError {
    /// A metered call ran with no agreement in scope: nothing was sent.
    Unattributed {
        /// The feature.
        feature: FeatureCode,
        /// The value that was not billed.
        value: u64,
    },
    /// A new key arrived while `max_pending_keys` keys were pending: refused.
    Overflow {
        /// The agreement.
        agreement: AgreementId,
        /// The feature.
        feature: FeatureCode,
        /// The value that was not billed.
        value: u64,
        /// The bound.
        max_pending_keys: usize,
    },
    /// The feature code, agreement id or value of a call is invalid: refused.
    Invalid {
        /// The feature code as given.
        feature: String,
        /// What was wrong.
        reason: String,
    },
    /// Usage was recorded after the reporter shut down. It is kept in memory and
    /// delivered by the next [`init`](crate::init), but no report covers it until then.
    AfterShutdown {
        /// The agreement.
        agreement: AgreementId,
        /// The feature.
        feature: FeatureCode,
        /// The value.
        value: u64,
    },
    /// Kinde rejected a record (400, 401/403 after a fresh token, other 4xx): it is not
    /// retried.
    Rejected {
        /// The record.
        record: UsageRecord,
        /// Kinde's answer.
        error: ApiError,
    },
}

impl fmt::Display for MeterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MeterError::Unattributed { feature, value } => write!(
                f,
                "usage of `{feature}` (value {value}) had no customer agreement in scope and was not sent; run the \
                 call inside `with_agreement`/`enter_agreement`, or give `#[meter]` an `agreement = ...`"
            ),
            MeterError::Overflow {
                agreement,
                feature,
                value,
                max_pending_keys,
            } => write!(
                f,
                "usage of `{feature}` for {agreement} (value {value}) was refused: {max_pending_keys} keys are \
                 already pending; raise `Config::max_pending_keys`, or check that agreement ids are not unbounded"
            ),
            MeterError::Invalid { feature, reason } => {
                write!(f, "usage of `{feature}` was refused: {reason}")
            }
            MeterError::AfterShutdown {
                agreement,
                feature,
                value,
            } => write!(
                f,
                "usage of `{feature}` for {agreement} (value {value}) was recorded after the reporter shut down; it \
                 waits in memory for the next `init`: shut the reporter down after the work that records usage"
            ),
            MeterError::Rejected { record, error } => write!(
                f,
                "Kinde rejected usage of `{}` for {} (value {}), which will not be retried: {error}",
                record.feature, record.agreement, record.value
            ),
        }
    }
}

impl std::error::Error for MeterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MeterError::Rejected { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Why a record was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UnsentReason {
    /// The shutdown deadline passed before it could be delivered.
    DeadlineExceeded,
    /// Under [`Delivery::AtMostOnce`](crate::Delivery::AtMostOnce), an attempt may have
    /// been applied, so it is not resent.
    Ambiguous,
    /// The reporter's worker failed (a bug: it panicked) while it held the record. The
    /// worker restarts; the record is handed back rather than trusted to its state.
    WorkerFailed,
}

impl fmt::Display for UnsentReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnsentReason::DeadlineExceeded => "the shutdown deadline passed",
            UnsentReason::Ambiguous => {
                "an attempt may have been applied and at-most-once delivery forbids resending"
            }
            UnsentReason::WorkerFailed => "the reporter's worker failed while holding it",
        })
    }
}

/// A record handed back undelivered (to `on_unsent` and in the [`ShutdownReport`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct UnsentRecord {
    /// The record, with its original timestamp and idempotency key.
    pub record: UsageRecord,
    /// Why it was not delivered.
    pub reason: UnsentReason,
    /// Whether an earlier attempt may have been applied by Kinde: resending it later may
    /// count it twice.
    pub maybe_applied: bool,
    /// Attempts made.
    pub attempts: u32,
    /// The last error, if an attempt failed.
    pub last_error: Option<String>,
}

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
    /// Delta usage recorded after the reporter shut down, which waits in memory for the
    /// next start (see [`MeterError::AfterShutdown`]).
    pub after_shutdown: u64,
    /// Panics of the `on_error` and `on_unsent` hooks, contained.
    pub hook_panics: u64,
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
}

/// What shutting the reporter down achieved.
///
/// Exact: `stats.recorded` counts the delta usage the shutdown's last drain took (usage
/// recorded by other threads while it ran included), and equals `stats.delivered +
/// stats.rejected + stats.unsent`, where `unsent` includes [`ShutdownReport::left`]. Usage
/// recorded after that drain is reported as [`MeterError::AfterShutdown`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// The counters at the end.
    pub stats: Stats,
    /// Records not delivered, also passed to `on_unsent`.
    pub left: Vec<UnsentRecord>,
    /// Whether the deadline passed before everything was delivered.
    pub deadline_reached: bool,
    /// Set when the reporter's thread could not answer (it panicked or did not finish
    /// in time): its records are then unknown.
    pub failure: Option<String>,
}

impl ShutdownReport {
    /// Whether everything recorded was delivered.
    pub fn is_complete(&self) -> bool {
        self.left.is_empty() && self.failure.is_none()
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
        if let Some(failure) = &self.failure {
            write!(f, "; {failure}")?;
        }
        Ok(())
    }
}
