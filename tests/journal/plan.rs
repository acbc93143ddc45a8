//! The campaign's workload, shared by the child that records it (`child.rs`) and the
//! test that checks what Kinde ended up holding (`journal_kill.rs`).

/// The one feature every key records.
pub(crate) const FEATURE: &str = "units";

/// `record_for` calls per key per round.
pub(crate) const CALLS_PER_ROUND: u64 = 4;

/// The agreement id of key `key`.
pub(crate) fn agreement(key: u64) -> String {
    format!("agreement_k{key:02}")
}

/// The value of call `call` of key `key` in round `round`: 1 to 50, known in advance.
pub(crate) fn amount(round: u64, key: u64, call: u64) -> u64 {
    1 + (round * 7 + key * 13 + call * 5) % 50
}
