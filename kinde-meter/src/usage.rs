//! What hooks and reports carry about usage: the record of one key in one window, the
//! errors the error hook receives, and records handed back undelivered.
//!
//! Below [`config`](crate::config) (whose hooks take these types) and the reporter (which
//! produces them); it depends only on [`api`](crate::api).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

pub use crate::resolve::Unresolved;

use crate::api::{
    AgreementId, ApiError, CreateMeterUsageRecordRequest, Customer, FeatureCode, MAX_ID_LEN,
    MeterType, Timestamp,
};

/// A value given to `#[meter(value = ...)]` that cannot be billed: negative, or larger
/// than `u64::MAX`. It is refused (counted in [`Stats::invalid`](crate::Stats::invalid) and passed to the error
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
///
/// Serializes to and from JSON (or any serde format) with every field checked on the way
/// in, as a journal or a hand-off needs: an invalid agreement id, feature code, timestamp
/// or idempotency key is an error naming it; a value of the wrong type is serde's error,
/// with its position in the input.
///
/// ```
/// use kinde_meter::UsageRecord;
///
/// let json = r#"{"agreement":"agreement_acme","feature":"api_calls","meter_type":"delta",
///     "value":3,"timestamp":"2024-11-18T02:32:03Z","idempotency_key":"0123abcd"}"#;
/// let record: UsageRecord = serde_json::from_str(json)?;
/// assert_eq!(record.value, 3);
/// let bad = json.replace("agreement_acme", "not an id");
/// assert!(serde_json::from_str::<UsageRecord>(&bad).unwrap_err().to_string().contains("agreement id"));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UsageRecord {
    /// The agreement billed. For usage recorded for a [`customer`](Self::customer): the
    /// agreement it was resolved to, or, if it never was (handed back with
    /// [`UnsentReason::NoAgreement`], or at a deadline before its lookup answered), a
    /// stand-in naming the customer (`org:org_acme`) that is never sent. Deserializing
    /// takes both.
    #[serde(deserialize_with = "agreement_or_stand_in")]
    pub agreement: AgreementId,
    /// The customer the usage was recorded for, when it was recorded in a customer
    /// scope ([`with_customer`](crate::with_customer)) rather than for an agreement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<Customer>,
    /// The feature.
    pub feature: FeatureCode,
    /// Delta (summed) or absolute (last value).
    pub meter_type: MeterType,
    /// The value.
    pub value: u64,
    /// When the window closed; sent as `meter_usage_timestamp` on every attempt.
    pub timestamp: Timestamp,
    /// Sent as `Idempotency-Key` on every attempt of this record.
    #[serde(deserialize_with = "idempotency_key")]
    pub idempotency_key: String,
}

/// An agreement id, or a customer's stand-in (see [`UsageRecord::agreement`]).
fn agreement_or_stand_in<'de, D: Deserializer<'de>>(d: D) -> Result<AgreementId, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    if text.contains(':') {
        return AgreementId::from_stored(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid customer agreement id {text:?}: neither an agreement id nor a customer \
                 (`org:<code>`, `user:<id>`, `customer:<id>`)"
            ))
        });
    }
    AgreementId::new(&*text).map_err(serde::de::Error::custom)
}

/// An idempotency key as the client sends one: 1 to 255 bytes of visible ASCII.
fn idempotency_key<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let key = String::deserialize(d)?;
    if !is_idempotency_key(&key) {
        return Err(serde::de::Error::custom(format_args!(
            "invalid idempotency key: it must be 1 to {MAX_ID_LEN} bytes of visible ASCII (no spaces)"
        )));
    }
    Ok(key)
}

/// Whether `key` is an idempotency key the client sends: 1 to 255 bytes of visible
/// ASCII. Checked wherever a record comes back in (deserialization, the journal).
pub(crate) fn is_idempotency_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_ID_LEN && key.bytes().all(|b| b.is_ascii_graphic())
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
    /// The body of the `POST /api/v1/billing/meter_usage` that delivers this record (its
    /// idempotency key goes in a header: [`RequestOptions::idempotency_key`](crate::api::RequestOptions::idempotency_key)).
    pub fn request(&self) -> CreateMeterUsageRecordRequest {
        CreateMeterUsageRecordRequest::new(self.agreement.clone(), self.feature.clone(), self.value)
            .with_meter_type(self.meter_type)
            .with_timestamp(self.timestamp)
    }

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
    /// An attempt may have been applied: a timeout or a dropped connection after the
    /// request was sent, a 500/502/504, an unreadable answer, or (with a journal) an
    /// attempt that was in flight when the process that made it died. Under at-least-once
    /// delivery the record is sent again under the same idempotency key, so Kinde may
    /// count `record.value` twice; reconcile by that key. Under at-most-once it is handed
    /// to `on_unsent` instead. With a journal, a start reports again every record it
    /// resumes that may have been applied (the first report may have died with its
    /// process), so a record can be reported more than once: count each key once.
    Ambiguous {
        /// The record, with the idempotency key every attempt carried.
        record: UsageRecord,
        /// Attempts made so far, this one included.
        attempts: u32,
        /// What happened to the attempt.
        error: String,
    },
    /// The journal could not keep usage durable (full, or the disk failing), or found a
    /// damaged file at start. Metering goes on in memory; see [`JournalIssue`].
    Journal(JournalIssue),
    /// Usage recorded for a customer could not be billed to any of its agreements: it
    /// has none with the feature, several, or Kinde does not know it. The record goes to
    /// `on_unsent` ([`UnsentReason::NoAgreement`]); it is never sent to a guessed agreement.
    Unresolved(Unresolved),
    /// Fleet mode: the fleet's Redis could not be reached, so records wait in this
    /// replica's outbox (and journal) and are handed off when it is back. Reported once
    /// per episode, when it starts.
    FleetUnavailable {
        /// What failed.
        error: String,
    },
}

impl fmt::Display for MeterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MeterError::Unresolved(unresolved) => write!(f, "{unresolved}"),
            MeterError::FleetUnavailable { error } => write!(
                f,
                "the fleet's Redis is unavailable ({error}); usage waits in this replica's outbox and is handed off \
                 when Redis is back (check the server, and `Config::fleet`'s URL)"
            ),
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
            MeterError::Ambiguous {
                record,
                attempts,
                error,
            } => write!(
                f,
                "usage of `{}` for {} (value {}, idempotency key {}) may have been applied by Kinde (attempt \
                 {attempts}: {error}); it is sent again under at-least-once delivery, so reconcile by that key",
                record.feature, record.agreement, record.value, record.idempotency_key
            ),
            MeterError::Journal(issue) => issue.fmt(f),
        }
    }
}

impl std::error::Error for MeterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MeterError::Rejected { error, .. } => Some(error),
            MeterError::Journal(issue) => issue.source(),
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
    /// With a journal: read at start from a damaged journal file whose unreadable part
    /// may have settled it (delivered it, or handed it back), so it is neither resent nor
    /// dropped. The file is kept in the journal's `quarantine` folder.
    JournalDamaged,
    /// It was recorded for a customer that has no agreement with its feature, several,
    /// or none Kinde knows of (see [`MeterError::Unresolved`]).
    NoAgreement,
    /// Kinde refused it because the agreement it was resolved to has ended, and
    /// [`AgreementEnded::HandBack`](crate::AgreementEnded::HandBack) is set (or it was
    /// re-resolved as often as allowed).
    AgreementEnded,
}

impl fmt::Display for UnsentReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnsentReason::DeadlineExceeded => "the shutdown deadline passed",
            UnsentReason::Ambiguous => {
                "an attempt may have been applied and at-most-once delivery forbids resending"
            }
            UnsentReason::WorkerFailed => "the reporter's worker failed while holding it",
            UnsentReason::JournalDamaged => {
                "it was read from a damaged journal file that may also have settled it"
            }
            UnsentReason::NoAgreement => "its customer has no agreement to bill it to",
            UnsentReason::AgreementEnded => "the agreement it was resolved to has ended",
        })
    }
}

/// A record handed back undelivered (to `on_unsent` and in the [`ShutdownReport`](crate::ShutdownReport)).
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

/// What went wrong with the journal ([`Config::journal`](crate::Config::journal)).
///
/// Each is counted in [`Stats`](crate::Stats), passed to the error hook as
/// [`MeterError::Journal`] and logged (a failure once per episode, until a write succeeds).
#[derive(Debug)]
#[non_exhaustive]
pub enum JournalIssue {
    /// A window could not be made durable: its usage is delivered from memory only, and a
    /// crash before delivery would lose it.
    NotDurable {
        /// The delta usage of the window's records that are not on disk.
        value: u64,
        /// Why.
        cause: JournalFailure,
    },
    /// A journal file was damaged (a checksum failed before its end): it was moved to the
    /// `quarantine` folder beside the runs, and the usage it may have settled was handed to
    /// `on_unsent` ([`UnsentReason::JournalDamaged`]).
    Quarantined {
        /// Where the file is now.
        path: std::path::PathBuf,
        /// Bytes of it that could not be read.
        unreadable_bytes: u64,
        /// Records handed back because of it.
        records: usize,
        /// Their delta usage.
        value: u64,
    },
    /// A journal file ended in a partial write (the process died writing it). The
    /// partial entry was dropped: it was never reported durable.
    TornTail {
        /// The file.
        path: std::path::PathBuf,
        /// Bytes dropped.
        bytes: u64,
    },
}

/// Why the journal could not write.
#[derive(Debug)]
#[non_exhaustive]
pub enum JournalFailure {
    /// The journal holds `Config::journal_max_bytes` already (usage is waiting because
    /// delivery is failing): raise the limit or restore delivery.
    Full {
        /// The limit.
        max_bytes: u64,
    },
    /// The file system refused (no space, an I/O error, read-only).
    Io(std::io::Error),
}

impl fmt::Display for JournalIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalIssue::NotDurable {
                value,
                cause: JournalFailure::Full { max_bytes },
            } => write!(
                f,
                "the kinde-meter journal is full ({max_bytes} bytes of undelivered usage): usage (value {value}) is \
                 kept in memory only until it is delivered; raise `Config::journal_max_bytes` \
                 (KINDE_METER_JOURNAL_MAX_BYTES) or restore delivery"
            ),
            JournalIssue::NotDurable {
                value,
                cause: JournalFailure::Io(e),
            } => write!(
                f,
                "the kinde-meter journal could not write ({e}): usage (value {value}) is kept in memory only until \
                 it is delivered; check the journal directory's disk"
            ),
            JournalIssue::Quarantined {
                path,
                unreadable_bytes,
                records,
                value,
            } => write!(
                f,
                "a damaged kinde-meter journal file was moved to {} ({unreadable_bytes} bytes unreadable); {records} \
                 record{} (value {value}) it may have settled {} handed to `on_unsent` instead of being resent",
                path.display(),
                if *records == 1 { "" } else { "s" },
                if *records == 1 { "was" } else { "were" },
            ),
            JournalIssue::TornTail { path, bytes } => write!(
                f,
                "a kinde-meter journal file ended in a partial write ({bytes} bytes, dropped): {}",
                path.display()
            ),
        }
    }
}

impl JournalIssue {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JournalIssue::NotDurable {
                cause: JournalFailure::Io(e),
                ..
            } => Some(e),
            _ => None,
        }
    }
}

impl std::error::Error for JournalIssue {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        JournalIssue::source(self)
    }
}

/// Which record a journal entry is about: the run that first wrote it and its number
/// there, so records of adopted runs keep their identity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RecordId {
    pub(crate) run: u64,
    pub(crate) seq: u64,
}

/// What delivery has done to a record so far: kept with it across retries, and across
/// restarts by the journal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Attempts {
    /// Attempts made.
    pub(crate) count: u32,
    /// Whether an attempt may have been applied by Kinde.
    pub(crate) maybe_applied: bool,
    /// The last error, if an attempt failed.
    pub(crate) last_error: Option<String>,
    /// For usage recorded for a customer: the agreement it was resolved to, which every
    /// attempt goes to (a retry must not land on another agreement than an attempt that
    /// may have been applied). `None` until resolved, and again after Kinde said it ended.
    pub(crate) bound: Option<AgreementId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> UsageRecord {
        UsageRecord {
            agreement: AgreementId::new("agreement_acme").unwrap(),
            customer: None,
            feature: FeatureCode::from_static("api_calls"),
            meter_type: MeterType::Absolute,
            value: 12,
            timestamp: Timestamp::from_unix_seconds(1_731_897_123).unwrap(),
            idempotency_key: "0123456789abcdef0123456789abcdef".to_owned(),
        }
    }

    #[test]
    fn records_round_trip_through_json() {
        let r = record();
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "agreement": "agreement_acme",
                "feature": "api_calls",
                "meter_type": "absolute",
                "value": 12,
                "timestamp": "2024-11-18T02:32:03Z",
                "idempotency_key": "0123456789abcdef0123456789abcdef",
            })
        );
        assert_eq!(serde_json::from_value::<UsageRecord>(json).unwrap(), r);
    }

    #[test]
    fn invalid_records_are_refused_naming_the_field() {
        let good = serde_json::to_value(record()).unwrap();
        let cases = [
            (
                "agreement",
                serde_json::json!("agreement acme"),
                "customer agreement id",
            ),
            (
                "feature",
                serde_json::json!("api calls"),
                "billing feature code",
            ),
            ("meter_type", serde_json::json!("sum"), "unknown variant"),
            ("value", serde_json::json!(-1), "invalid value"),
            (
                "timestamp",
                serde_json::json!("2024-02-30T00:00:00Z"),
                "meter usage timestamp",
            ),
            (
                "idempotency_key",
                serde_json::json!("has space"),
                "idempotency key",
            ),
            ("idempotency_key", serde_json::json!(""), "idempotency key"),
        ];
        for (field, value, named) in cases {
            let mut bad = good.clone();
            bad[field] = value;
            let e = serde_json::from_value::<UsageRecord>(bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains(named), "{field}: {e}");
        }
        let mut missing = good;
        missing.as_object_mut().unwrap().remove("timestamp");
        assert!(serde_json::from_value::<UsageRecord>(missing).is_err());
    }
}
