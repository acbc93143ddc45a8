//! Helpers for reporter tests: a fast configuration, workloads with known totals, waits.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kinde_meter_emulator::Emulator;

use crate::EmulatorExt;
use kinde_meter::{AgreementId, Config, FeatureCode};

/// A configuration for tests: short flush interval and backoff, no client-side rate limit
/// to speak of, so failures and recoveries play out in seconds.
pub fn fast_config(emulator: &Emulator) -> Config {
    emulator
        .config()
        .flush_interval(Duration::from_millis(100))
        .backoff(Duration::from_millis(10), Duration::from_millis(300))
        .requests_per_second(10_000.0)
        .request_timeout(Duration::from_secs(2))
}

/// `n` agreement ids, `agreement_000`, `agreement_001`, ...
pub fn agreements(n: usize) -> Vec<AgreementId> {
    (0..n)
        .map(|i| format!("agreement_{i:03}").parse().expect("valid id"))
        .collect()
}

/// Expected totals per (agreement, feature), built while a workload records.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expected(pub BTreeMap<(String, String), u128>);

impl Expected {
    /// Notes `value` for a key.
    pub fn add(&mut self, agreement: &AgreementId, feature: &FeatureCode, value: u64) {
        *self
            .0
            .entry((agreement.to_string(), feature.to_string()))
            .or_default() += u128::from(value);
    }

    /// Merges another set of totals into this one.
    pub fn merge(&mut self, other: Expected) {
        for (k, v) in other.0 {
            *self.0.entry(k).or_default() += v;
        }
    }

    /// The sum over all keys.
    pub fn sum(&self) -> u128 {
        self.0.values().sum()
    }

    /// Asserts the emulator's ledger holds exactly these totals.
    #[track_caller]
    pub fn assert_ledger(&self, emulator: &Emulator) {
        let ledger: BTreeMap<(String, String), u128> = emulator
            .ledger()
            .into_iter()
            .map(|(k, v)| (k, v.whole().expect("whole units")))
            .filter(|(_, v)| *v != 0)
            .collect();
        let expected: BTreeMap<_, _> = self
            .0
            .iter()
            .filter(|(_, v)| **v != 0)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        assert_eq!(
            ledger, expected,
            "the emulator's ledger differs from what was recorded"
        );
    }
}

impl Expected {
    /// Asserts what DESIGN allows under at-least-once delivery when some attempts were
    /// ambiguous (a connection reset after the request was sent, which an outage causes):
    /// every key holds at least what was recorded, and the total excess is at most the
    /// delta the reporter counted as ambiguous. With no ambiguous attempt, that is
    /// equality.
    #[track_caller]
    pub fn assert_ledger_within(&self, emulator: &Emulator, ambiguous: u64) {
        let ledger = emulator.ledger();
        let mut excess = 0u128;
        for ((agreement, feature), recorded) in &self.0 {
            let held = ledger
                .get(&(agreement.clone(), feature.clone()))
                .map_or(0, |a| a.whole().expect("whole units"));
            assert!(
                held >= *recorded,
                "{agreement}/{feature}: Kinde holds {held}, {recorded} were recorded"
            );
            excess += held - recorded;
        }
        let unexpected: Vec<_> = ledger.keys().filter(|k| !self.0.contains_key(*k)).collect();
        assert!(
            unexpected.is_empty(),
            "billed to keys nobody recorded: {unexpected:?}"
        );
        assert!(
            excess <= u128::from(ambiguous),
            "Kinde holds {excess} more than recorded, beyond the {ambiguous} counted as ambiguous"
        );
    }
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
