//! The names of the fleet's keys in Redis, all under one hash tag (`km:{namespace}:`), so
//! a Redis Cluster keeps them in one slot and the scripts may touch any of them.

use crate::api::MeterType;
use crate::usage::UsageRecord;

/// One key and coalescing bucket of a delta meter, `<agreement>|<feature>|d|<bucket>`,
/// or one key of an absolute meter, `<agreement>|<feature>|a|-`: an absolute value
/// replaces any older one, in whichever bucket. Neither an agreement id nor a feature code
/// can hold a `|`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct EntryId(pub(crate) String);

impl EntryId {
    pub(crate) fn of(record: &UsageRecord, coalesce_secs: u64) -> Self {
        let (agreement, feature) = (record.agreement.as_str(), record.feature.as_str());
        Self(match record.meter_type {
            MeterType::Absolute => format!("{agreement}|{feature}|a|-"),
            _ => format!(
                "{agreement}|{feature}|d|{}",
                record.timestamp.unix_seconds() / coalesce_secs.max(1)
            ),
        })
    }

    /// The idempotency key of a flight: the same for every attempt of it, from any
    /// deliverer, and new for each flight (`lineage` is the fencing token of its first
    /// claim, which Redis hands out once).
    pub(crate) fn idempotency_key(&self, lineage: &str) -> String {
        // FNV-1a: stable across builds and platforms, unlike `std`'s hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.0.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("km-{hash:016x}-{lineage}")
    }
}

pub(crate) fn meter_type_code(meter_type: MeterType) -> &'static str {
    match meter_type {
        MeterType::Absolute => "a",
        _ => "d",
    }
}

/// The key names of one namespace.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(namespace: &str) -> Self {
        Self {
            prefix: format!("km:{{{namespace}}}:"),
        }
    }

    /// The prefix of entry hashes (the scripts add the entry id).
    pub(crate) fn entry_prefix(&self) -> String {
        format!("{}e:", self.prefix)
    }

    pub(crate) fn entry(&self, id: &EntryId) -> String {
        format!("{}e:{}", self.prefix, id.0)
    }

    /// Marks a record's hand-off as applied, by its idempotency key.
    pub(crate) fn marker(&self, idempotency_key: &str) -> String {
        format!("{}h:{idempotency_key}", self.prefix)
    }

    fn named(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Entries with usage to claim, by the time they may be claimed.
    pub(crate) fn due(&self) -> String {
        self.named("due")
    }

    /// Entries with usage not yet delivered, by when it was first handed off.
    pub(crate) fn since(&self) -> String {
        self.named("since")
    }

    /// Claimed entries, by the end of their lease.
    pub(crate) fn inflight(&self) -> String {
        self.named("inflight")
    }

    /// Closed while Kinde throttles (its time to live is the wait).
    pub(crate) fn gate(&self) -> String {
        self.named("gate")
    }

    /// The fleet's token bucket.
    pub(crate) fn bucket(&self) -> String {
        self.named("bucket")
    }

    /// The fencing-token counter.
    pub(crate) fn fence(&self) -> String {
        self.named("fence")
    }

    /// The fleet's counters.
    pub(crate) fn stats(&self) -> String {
        self.named("stats")
    }

    /// The window stamp of the last value delivered, per absolute entry: an older value
    /// handed off later is superseded.
    pub(crate) fn absolute_stamps(&self) -> String {
        self.named("absolute")
    }

    /// Records rejected or handed back, newest first (the last 10,000).
    pub(crate) fn dead(&self) -> String {
        self.named("dead")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_depend_on_the_entry_and_the_lineage_only() {
        let a = EntryId("agr_1|api|d|7".to_owned());
        let b = EntryId("agr_1|api|d|8".to_owned());
        assert_eq!(a.idempotency_key("12"), a.clone().idempotency_key("12"));
        assert_ne!(a.idempotency_key("12"), a.idempotency_key("13"));
        assert_ne!(a.idempotency_key("12"), b.idempotency_key("12"));
        let key = a.idempotency_key("12");
        assert!(
            key.starts_with("km-") && key.ends_with("-12") && key.len() == 22,
            "{key}"
        );
    }

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = Keys::new("prod");
        for key in [
            keys.due(),
            keys.since(),
            keys.inflight(),
            keys.gate(),
            keys.stats(),
        ] {
            assert!(key.starts_with("km:{prod}:"), "{key}");
        }
    }
}
