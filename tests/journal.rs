//! The journal through the reporter, against the emulator over real HTTP: what one
//! reporter leaves (shut down at its deadline, or with requests abandoned in flight) the
//! next one on the same directory delivers, by the delivery policy, and a full journal
//! keeps metering in memory and says so. Kills of real processes are `journal_kill.rs`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kinde_meter::{
    Delivery, FeatureCode, JournalFailure, JournalIssue, MeterError, Reporter, UnsentReason,
    UnsentRecord,
};
use kinde_meter_emulator::{Emulator, Faults};
use kinde_meter_workspace::reporter::{Expected, agreements, fast_config, wait_until};

const API_CALLS: FeatureCode = FeatureCode::from_static("api_calls");

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "kinde-meter-test-{name}-{}-{:x}",
            std::process::id(),
            fastrand_seed()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fastrand_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// The report's books balance: everything recorded or read back is delivered, rejected,
/// handed back or kept.
#[track_caller]
fn assert_balanced(report: &kinde_meter::ShutdownReport) {
    let s = &report.stats;
    assert_eq!(
        u128::from(s.recorded) + u128::from(s.replayed),
        u128::from(s.delivered)
            + u128::from(s.rejected)
            + u128::from(s.unsent)
            + u128::from(s.kept),
        "{s:?}"
    );
}

/// What the hooks were given.
#[derive(Clone, Default)]
struct Seen {
    errors: Arc<Mutex<Vec<String>>>,
    ambiguous: Arc<Mutex<Vec<(String, u64)>>>,
    journal: Arc<Mutex<Vec<String>>>,
    unsent: Arc<Mutex<Vec<UnsentRecord>>>,
}

impl Seen {
    fn config(&self, config: kinde_meter::Config) -> kinde_meter::Config {
        let (errors, ambiguous, journal, unsent) = (
            self.errors.clone(),
            self.ambiguous.clone(),
            self.journal.clone(),
            self.unsent.clone(),
        );
        config
            .on_error(move |e| match e {
                MeterError::Ambiguous { record, .. } => ambiguous
                    .lock()
                    .expect("lock")
                    .push((record.idempotency_key.clone(), record.value)),
                MeterError::Journal(issue) => journal.lock().expect("lock").push(issue.to_string()),
                other => errors.lock().expect("lock").push(other.to_string()),
            })
            .on_unsent(move |records| unsent.lock().expect("lock").extend_from_slice(records))
    }
}

#[test]
fn usage_left_at_the_deadline_is_kept_and_delivered_by_the_next_start() {
    let emulator = Emulator::start().expect("emulator");
    let dir = TempDir::new("kept");
    let ids = agreements(20);
    let mut expected = Expected::default();
    emulator.unavailable_for(Duration::from_secs(3600));
    let seen = Seen::default();
    let first =
        Reporter::start(seen.config(fast_config(&emulator).journal(&dir.0))).expect("first");
    for (i, id) in ids.iter().enumerate() {
        first.record_for(id, &API_CALLS, i as u64 + 1);
        expected.add(id, &API_CALLS, i as u64 + 1);
    }
    let flushed = first.flush_blocking(Duration::from_secs(5));
    assert!(flushed.durable, "{flushed:?}");
    assert!(
        !flushed.timed_out,
        "a durable flush does not wait for delivery"
    );
    let report = first.shutdown_blocking(Duration::from_millis(300));
    assert_balanced(&report);
    assert!(
        report.left.is_empty(),
        "nothing to `on_unsent`: {:?}",
        report.left
    );
    assert_eq!(report.kept.len(), 20, "{report}");
    assert_eq!(u128::from(report.stats.kept), expected.sum());
    assert!(seen.unsent.lock().expect("lock").is_empty());
    assert_eq!(emulator.ledger_sum().whole(), Some(0));

    emulator.unavailable_for(Duration::ZERO);
    let second =
        Reporter::start(seen.config(fast_config(&emulator).journal(&dir.0))).expect("second");
    let report = second.shutdown_blocking(Duration::from_secs(15));
    assert_balanced(&report);
    assert!(report.is_complete(), "{report}");
    assert_eq!(u128::from(report.stats.replayed), expected.sum());
    assert_eq!(u128::from(report.stats.delivered), expected.sum());
    expected.assert_ledger(&emulator);
    // Each record went out under the key it was first given.
    let keys: Vec<String> = report_keys(&emulator);
    assert_eq!(keys.len(), 20);
    let third = Reporter::start(fast_config(&emulator).journal(&dir.0)).expect("third");
    assert_eq!(
        third
            .shutdown_blocking(Duration::from_secs(5))
            .stats
            .replayed,
        0,
        "delivered once"
    );
    expected.assert_ledger(&emulator);
}

fn report_keys(emulator: &Emulator) -> Vec<String> {
    let mut keys: Vec<String> = emulator
        .accepted()
        .into_iter()
        .filter_map(|a| a.idempotency_key)
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Requests abandoned in flight at the deadline may have been applied: the next start
/// resends them under at-least-once, and says so per record with its key.
#[test]
fn an_attempt_in_flight_at_the_end_is_resent_as_ambiguous_under_at_least_once() {
    let emulator = Emulator::builder()
        .faults(Faults::none().latency(Duration::from_millis(1500)))
        .start()
        .expect("emulator");
    let dir = TempDir::new("in-flight");
    let id = &agreements(1)[0];
    let seen = Seen::default();
    let first =
        Reporter::start(seen.config(fast_config(&emulator).journal(&dir.0))).expect("first");
    first.record_for(id, &API_CALLS, 7);
    assert!(first.flush_blocking(Duration::from_secs(5)).durable);
    assert!(wait_until(Duration::from_secs(5), || emulator.in_flight() > 0));
    let report = first.shutdown_blocking(Duration::ZERO);
    assert_balanced(&report);
    assert_eq!(report.kept.len(), 1, "{report}");
    assert!(report.kept[0].maybe_applied, "abandoned in flight");
    assert!(emulator.wait_idle(Duration::from_secs(5)));

    emulator.set_faults(Faults::none());
    let second =
        Reporter::start(seen.config(fast_config(&emulator).journal(&dir.0))).expect("second");
    let report = second.shutdown_blocking(Duration::from_secs(10));
    assert_balanced(&report);
    assert!(report.is_complete(), "{report}");
    let ambiguous = seen.ambiguous.lock().expect("lock").clone();
    assert_eq!(
        ambiguous.len(),
        1,
        "reported once, by the start that resent it"
    );
    assert_eq!(ambiguous[0].1, 7);
    let accepted = emulator.accepted();
    assert!(
        accepted
            .iter()
            .all(|a| a.idempotency_key.as_deref() == Some(ambiguous[0].0.as_str())),
        "every copy Kinde holds carries the reported key"
    );
    // Applied by the abandoned request (the emulator finished it) and by the resend.
    assert_eq!(emulator.total(id.as_str(), "api_calls").whole(), Some(14));
    assert_eq!(report.stats.ambiguous, 7);
}

#[test]
fn an_attempt_in_flight_at_the_end_is_handed_back_under_at_most_once() {
    let emulator = Emulator::builder()
        .faults(Faults::none().latency(Duration::from_millis(1500)))
        .start()
        .expect("emulator");
    let dir = TempDir::new("at-most-once");
    let id = &agreements(1)[0];
    let seen = Seen::default();
    let config = || {
        seen.config(
            fast_config(&emulator)
                .journal(&dir.0)
                .delivery(Delivery::AtMostOnce),
        )
    };
    let first = Reporter::start(config()).expect("first");
    first.record_for(id, &API_CALLS, 7);
    assert!(first.flush_blocking(Duration::from_secs(5)).durable);
    assert!(wait_until(Duration::from_secs(5), || emulator.in_flight() > 0));
    assert_eq!(first.shutdown_blocking(Duration::ZERO).kept.len(), 1);
    assert!(emulator.wait_idle(Duration::from_secs(5)));
    emulator.set_faults(Faults::none());

    let second = Reporter::start(config()).expect("second");
    let report = second.shutdown_blocking(Duration::from_secs(10));
    assert_balanced(&report);
    let unsent = seen.unsent.lock().expect("lock").clone();
    assert_eq!(unsent.len(), 1, "{unsent:?}");
    assert_eq!(unsent[0].reason, UnsentReason::Ambiguous);
    assert!(unsent[0].maybe_applied);
    assert_eq!(unsent[0].record.value, 7);
    assert_eq!(report.stats.requests, 0, "not resent");
    assert_eq!(emulator.total(id.as_str(), "api_calls").whole(), Some(7));
    let third = Reporter::start(config()).expect("third");
    third.shutdown_blocking(Duration::from_secs(5));
    assert_eq!(
        seen.unsent.lock().expect("lock").len(),
        1,
        "handed back once"
    );
}

/// A full journal keeps metering in memory: usage is delivered when Kinde comes back,
/// and what was not durable is counted and reported, once per episode in the log.
#[test]
fn a_full_journal_meters_in_memory_and_says_so() {
    kinde_meter_workspace::logs::recorded();
    let emulator = Emulator::start().expect("emulator");
    let dir = TempDir::new("full");
    emulator.unavailable_for(Duration::from_secs(3600));
    let seen = Seen::default();
    let reporter = Reporter::start(
        seen.config(
            fast_config(&emulator)
                .journal(&dir.0)
                .journal_max_bytes(64 * 1024)
                .max_pending_keys(100_000)
                // Only the flushes below close windows, each too big for the journal:
                // one episode of failures.
                .flush_interval(Duration::from_secs(3600)),
        ),
    )
    .expect("reporter");
    let ids = agreements(3000);
    let mut expected = Expected::default();
    let mut not_durable_flushes = 0;
    for round in 0..4 {
        for id in &ids {
            reporter.record_for(id, &API_CALLS, round + 1);
            expected.add(id, &API_CALLS, round + 1);
        }
        if !reporter.flush_blocking(Duration::from_millis(200)).durable {
            not_durable_flushes += 1;
        }
    }
    assert!(not_durable_flushes > 0, "64 KiB cannot hold 3000 keys");
    let stats = reporter.stats();
    assert!(stats.not_durable > 0, "{stats:?}");
    assert!(
        u128::from(stats.not_durable) <= expected.sum(),
        "each unit counted once, in the window that added it: {stats:?}"
    );
    let issues = seen.journal.lock().expect("lock").clone();
    assert!(
        issues
            .iter()
            .any(|i| i.contains("journal is full") && i.contains("journal_max_bytes")),
        "{issues:?}"
    );
    assert!(
        issues.len() >= 2,
        "each window that is not durable is reported: {issues:?}"
    );
    let logged = kinde_meter_workspace::logs::count(&["ERROR kinde_meter", "journal is full"]);
    assert_eq!(logged, 1, "logged once per episode: {issues:?}");
    emulator.unavailable_for(Duration::ZERO);
    let report = reporter.shutdown_blocking(Duration::from_secs(30));
    assert_balanced(&report);
    assert!(report.is_complete(), "{report}");
    expected.assert_ledger(&emulator);
    assert!(
        seen.errors.lock().expect("lock").is_empty(),
        "{:?}",
        seen.errors.lock().expect("lock")
    );
}

#[test]
fn a_journal_it_cannot_create_is_refused_at_start_naming_the_option() {
    let emulator = Emulator::start().expect("emulator");
    let dir = TempDir::new("not-a-dir");
    let file = dir.0.join("file");
    std::fs::write(&file, b"not a directory").expect("file");
    let e = Reporter::start(fast_config(&emulator).journal(&file)).expect_err("refused");
    let message = e.to_string();
    assert!(
        message.contains("KINDE_METER_JOURNAL_DIR") && message.contains("file"),
        "{message}"
    );
}

#[test]
fn a_damaged_journal_file_is_quarantined_and_what_it_may_have_settled_handed_back() {
    let emulator = Emulator::start().expect("emulator");
    let dir = TempDir::new("damaged");
    let first = Reporter::start(fast_config(&emulator).journal(&dir.0)).expect("first");
    let ids = agreements(3);
    for id in &ids {
        first.record_for(id, &API_CALLS, 5);
    }
    // A zero deadline sends nothing: one window of three `Put`s, kept.
    assert_eq!(first.shutdown_blocking(Duration::ZERO).kept.len(), 3);
    let segment = find_segments(&dir.0).pop().expect("a segment");
    let mut bytes = std::fs::read(&segment).expect("read");
    // Inside the second of three equal entries (not the last, which would read as a
    // torn write): the first may have been settled by what it said, the third is whole.
    let entry = (bytes.len() - 16) / 3;
    bytes[16 + entry + 30] ^= 0x04;
    std::fs::write(&segment, &bytes).expect("write");

    let seen = Seen::default();
    let second =
        Reporter::start(seen.config(fast_config(&emulator).journal(&dir.0))).expect("second");
    let report = second.shutdown_blocking(Duration::from_secs(10));
    assert_balanced(&report);
    let unsent = seen.unsent.lock().expect("lock").clone();
    assert_eq!(unsent.len(), 1, "{report}: {unsent:?}");
    assert!(
        unsent
            .iter()
            .all(|u| u.reason == UnsentReason::JournalDamaged && u.maybe_applied)
    );
    assert_eq!(report.stats.unsent, 5);
    assert_eq!(
        report.stats.delivered, 5,
        "the entry after the damage is read and resumed"
    );
    let issues = seen.journal.lock().expect("lock").clone();
    assert!(
        issues
            .iter()
            .any(|i| i.contains("quarantine") && i.contains("1 record (value 5)")),
        "{issues:?}"
    );
    let quarantined: Vec<_> = std::fs::read_dir(dir.0.join("quarantine"))
        .expect("dir")
        .flatten()
        .collect();
    assert_eq!(quarantined.len(), 1, "the damaged file is kept");
    assert_eq!(
        std::fs::read(quarantined[0].path()).expect("read"),
        bytes,
        "as it was found"
    );
    let third =
        Reporter::start(seen.config(fast_config(&emulator).journal(&dir.0))).expect("third");
    third.shutdown_blocking(Duration::from_secs(5));
    assert_eq!(
        seen.unsent.lock().expect("lock").len(),
        1,
        "handed back once"
    );
}

fn find_segments(root: &std::path::Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "kmj") {
                found.push(p);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn journal_issues_name_the_fix() {
    let full = JournalIssue::NotDurable {
        value: 3,
        cause: JournalFailure::Full { max_bytes: 65_536 },
    };
    let text = full.to_string();
    assert!(
        text.contains("KINDE_METER_JOURNAL_MAX_BYTES") && text.contains("value 3"),
        "{text}"
    );
}
