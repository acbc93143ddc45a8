//! The journal under a failing disk, through a whole reporter: metering goes on in
//! memory, each window that is not durable is said to be, a record on disk is not sent
//! while its attempt cannot be journaled, and what was in memory only is journaled once
//! the disk heals.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Reporter, SendResult, Sink};
use crate::api::{AgreementId, ApiError, Credentials, Domain, FeatureCode};
use crate::config::Config;
use crate::journal::fs::faulty::FaultyFs;
use crate::journal::tests::TempDir;
use crate::usage::{JournalFailure, JournalIssue, MeterError, UsageRecord};

/// Delivers while `up`, else fails as if Kinde could not be reached. Notes every
/// attempt's agreement.
#[derive(Clone, Default)]
struct Switch {
    up: Arc<AtomicBool>,
    delivered: Arc<Mutex<Vec<UsageRecord>>>,
    attempts: Arc<Mutex<Vec<String>>>,
}

impl Sink for Switch {
    async fn send(&self, record: &UsageRecord, _timeout: Duration) -> SendResult {
        self.attempts
            .lock()
            .expect("lock")
            .push(record.agreement.to_string());
        if !self.up.load(Ordering::SeqCst) {
            return Err(ApiError::NotSent {
                source: "down".into(),
            });
        }
        self.delivered.lock().expect("lock").push(record.clone());
        Ok(())
    }
}

fn config(dir: &TempDir) -> Config {
    Config::new(
        Domain::parse("acme.kinde.com").expect("domain"),
        Credentials::access_token("unused"),
    )
    .flush_interval(Duration::from_secs(3600))
    .backoff(Duration::from_millis(5), Duration::from_millis(20))
    .journal(&dir.0)
}

#[test]
fn a_failing_disk_keeps_metering_in_memory_and_says_so_per_window() {
    let dir = TempDir::new("reporter-faulty");
    let fs = FaultyFs::default();
    let issues: Arc<Mutex<Vec<(u64, io::ErrorKind)>>> = Arc::default();
    let seen = Arc::clone(&issues);
    let sink = Switch::default();
    let reporter = Reporter::start_with_sink(
        config(&dir)
            .journal_fs(Arc::new(fs.clone()))
            .on_error(move |e| {
                if let MeterError::Journal(JournalIssue::NotDurable {
                    value,
                    cause: JournalFailure::Io(io),
                }) = e
                {
                    seen.lock().expect("lock").push((*value, io.kind()));
                }
            }),
        sink.clone(),
    )
    .expect("reporter");
    let f = FeatureCode::from_static("api_calls");
    let id = |n: u32| AgreementId::new(format!("agreement_{n}")).expect("id");
    reporter.record_for(&id(1), &f, 1);
    assert!(reporter.flush_blocking(Duration::from_secs(5)).durable);
    fs.fail(io::ErrorKind::StorageFull);
    reporter.record_for(&id(2), &f, 20);
    assert!(!reporter.flush_blocking(Duration::from_millis(100)).durable);
    reporter.record_for(&id(3), &f, 300);
    assert!(!reporter.flush_blocking(Duration::from_millis(100)).durable);
    let failed: Vec<(u64, io::ErrorKind)> = issues
        .lock()
        .expect("lock")
        .iter()
        .filter(|(v, _)| *v > 0)
        .copied()
        .collect();
    assert_eq!(
        failed,
        vec![
            (20, io::ErrorKind::StorageFull),
            (300, io::ErrorKind::StorageFull)
        ]
    );
    assert_eq!(reporter.stats().not_durable, 320);
    // Retries go on meanwhile (backoff 5 to 20 ms): from memory for what is in memory
    // only; not for the record on disk, whose attempt the journal cannot record.
    sink.attempts.lock().expect("lock").clear();
    std::thread::sleep(Duration::from_millis(300));
    let tried = sink.attempts.lock().expect("lock").clone();
    assert!(
        tried.iter().any(|a| a == "agreement_2"),
        "{tried:?} {:?}",
        reporter.stats()
    );
    assert!(
        !tried.iter().any(|a| a == "agreement_1"),
        "sent unjournaled: {tried:?}"
    );
    fs.heal();
    reporter.record_for(&id(4), &f, 4000);
    assert!(reporter.flush_blocking(Duration::from_secs(5)).durable);
    let report = reporter.shutdown_blocking(Duration::ZERO);
    let value =
        |records: &[crate::UnsentRecord]| records.iter().map(|u| u.record.value).sum::<u64>();
    assert_eq!(
        value(&report.kept),
        4321,
        "on disk, what was in memory only included once the disk healed: {report}"
    );
    assert!(report.left.is_empty(), "{report}");

    sink.up.store(true, Ordering::SeqCst);
    let next = Reporter::start_with_sink(config(&dir), sink.clone()).expect("next");
    let report = next.shutdown_blocking(Duration::from_secs(5));
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.stats.replayed, 4321);
    let delivered: u64 = sink
        .delivered
        .lock()
        .expect("lock")
        .iter()
        .map(|r| r.value)
        .sum();
    assert_eq!(delivered, 4321, "each unit delivered once");
}
