//! The reporter through a sink of the test's own: the delivery policy (retries,
//! ambiguity, rejections, accounting, shutdown) is the reporter's, whatever carries the
//! records. Real worker threads and runtimes; only what carries the records is the
//! test's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kinde_meter::api::{ApiError, Credentials, Domain, StatusCode};
use kinde_meter::{
    AgreementId, Config, Delivery, FeatureCode, MeterError, Reporter, SendResult, Sink,
    UnsentReason, UnsentRecord, Usage, UsageRecord,
};

const API_CALLS: FeatureCode = FeatureCode::from_static("api_calls");

fn config() -> Config {
    Config::new(
        Domain::parse("acme.kinde.com").expect("domain"),
        // Never used: the sink carries the records.
        Credentials::access_token("unused"),
    )
    .flush_interval(Duration::from_millis(100))
    .backoff(Duration::from_millis(1), Duration::from_millis(5))
}

fn agreement(i: usize) -> AgreementId {
    AgreementId::new(format!("agreement_{i}")).expect("id")
}

/// Errors to answer with, in order, per agreement.
type Script = HashMap<AgreementId, Vec<fn() -> ApiError>>;

/// Answers each record with the next outcome of its script (by agreement), then
/// accepts; keeps every record it was given.
#[derive(Clone, Default)]
struct Scripted {
    script: Arc<Mutex<Script>>,
    seen: Arc<Mutex<Vec<UsageRecord>>>,
}

impl Scripted {
    fn fail(self, agreement: &AgreementId, errors: Vec<fn() -> ApiError>) -> Self {
        self.script
            .lock()
            .expect("script")
            .insert(agreement.clone(), errors);
        self
    }

    fn seen(&self) -> Vec<UsageRecord> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Sink for Scripted {
    async fn send(&self, record: &UsageRecord, _timeout: Duration) -> SendResult {
        // Yield once, as real I/O would, so requests overlap.
        tokio::task::yield_now().await;
        self.seen.lock().expect("seen").push(record.clone());
        let mut script = self.script.lock().expect("script");
        match script.get_mut(&record.agreement) {
            Some(errors) if !errors.is_empty() => Err(errors.remove(0)()),
            _ => Ok(()),
        }
    }
}

fn unavailable() -> ApiError {
    ApiError::Server {
        status: StatusCode::SERVICE_UNAVAILABLE,
        errors: vec![],
    }
}

fn bad_gateway() -> ApiError {
    ApiError::Server {
        status: StatusCode::BAD_GATEWAY,
        errors: vec![],
    }
}

fn rejected() -> ApiError {
    ApiError::Rejected {
        status: StatusCode::BAD_REQUEST,
        errors: vec![],
    }
}

#[test]
fn a_recording_sink_receives_each_window_once_and_the_report_balances() {
    let sink = Scripted::default();
    let reporter = Reporter::start_with_sink(config(), sink.clone()).expect("reporter");
    let mut recorded = 0;
    for i in 0..50 {
        let value = (i % 5 + 1) as u64;
        reporter.record_for(&agreement(i % 7), &API_CALLS, value);
        recorded += value;
    }
    reporter.record_for(
        &agreement(0),
        &FeatureCode::from_static("seats"),
        Usage::Absolute(9),
    );
    let report = reporter.shutdown_blocking(Duration::from_secs(10));
    assert!(report.is_complete(), "{report}: {:?}", report.left);
    assert_eq!(report.stats.recorded, recorded);
    assert_eq!(report.stats.delivered, recorded);
    let seen = sink.seen();
    let delta: u64 = seen
        .iter()
        .filter(|r| r.meter_type == kinde_meter::MeterType::Delta)
        .map(|r| r.value)
        .sum();
    assert_eq!(delta, recorded, "the sink got exactly what was recorded");
    assert!(
        seen.iter()
            .any(|r| r.feature.as_str() == "seats" && r.value == 9)
    );
    let mut keys: Vec<_> = seen.iter().map(|r| r.idempotency_key.clone()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys.len(),
        seen.len(),
        "one key per record, none sent twice"
    );
    assert_eq!(report.stats.requests, seen.len() as u64);
}

#[test]
fn a_rejecting_sink_reports_the_record_to_the_error_hook_and_never_retries_it() {
    let refused = agreement(1);
    let sink = Scripted::default().fail(&refused, vec![rejected, rejected]);
    let errors: Arc<Mutex<Vec<UsageRecord>>> = Arc::default();
    let hook = Arc::clone(&errors);
    let config = config().on_error(move |e| {
        if let MeterError::Rejected { record, error } = e {
            assert_eq!(error.status(), Some(StatusCode::BAD_REQUEST));
            hook.lock().expect("hook").push(record.clone());
        }
    });
    let reporter = Reporter::start_with_sink(config, sink.clone()).expect("reporter");
    reporter.record_for(&refused, &API_CALLS, 4);
    reporter.record_for(&agreement(2), &API_CALLS, 6);
    let report = reporter.shutdown_blocking(Duration::from_secs(10));
    assert!(report.is_complete(), "{report}");
    let s = &report.stats;
    assert_eq!(
        (s.recorded, s.delivered, s.rejected, s.unsent),
        (10, 6, 4, 0)
    );
    let errors = errors.lock().expect("errors");
    assert_eq!(errors.len(), 1);
    assert_eq!((&errors[0].agreement, errors[0].value), (&refused, 4));
    let to_refused = sink
        .seen()
        .iter()
        .filter(|r| r.agreement == refused)
        .count();
    assert_eq!(to_refused, 1, "a rejected record is not sent again");
}

#[test]
fn retryable_failures_are_resent_under_the_same_key_and_timestamp() {
    let flaky = agreement(3);
    let sink = Scripted::default().fail(&flaky, vec![unavailable, bad_gateway, unavailable]);
    let reporter = Reporter::start_with_sink(config(), sink.clone()).expect("reporter");
    reporter.record_for(&flaky, &API_CALLS, 5);
    let report = reporter.shutdown_blocking(Duration::from_secs(10));
    assert!(report.is_complete(), "{report}");
    let s = &report.stats;
    assert_eq!((s.delivered, s.retried, s.ambiguous), (5, 3, 5));
    let seen = sink.seen();
    assert_eq!(seen.len(), 4, "three failures, then accepted");
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "every attempt is the same record: {seen:?}"
    );
}

#[tokio::test]
async fn at_most_once_hands_an_ambiguous_record_back_instead_of_resending_it() {
    let flaky = agreement(4);
    let sink = Scripted::default().fail(&flaky, vec![bad_gateway]);
    let unsent: Arc<Mutex<Vec<UnsentRecord>>> = Arc::default();
    let hook = Arc::clone(&unsent);
    let config = config()
        .delivery(Delivery::AtMostOnce)
        .on_unsent(move |records| hook.lock().expect("hook").extend_from_slice(records));
    let reporter = Reporter::start_with_sink(config, sink.clone()).expect("reporter");
    reporter.record_for(&flaky, &API_CALLS, 7);
    reporter.record_for(&agreement(5), &API_CALLS, 1);
    let report = reporter.shutdown(Duration::from_secs(10)).await;
    let s = &report.stats;
    assert_eq!((s.recorded, s.delivered, s.unsent), (8, 1, 7));
    let unsent = unsent.lock().expect("unsent");
    assert_eq!(unsent.len(), 1);
    assert_eq!(unsent[0].reason, UnsentReason::Ambiguous);
    assert!(unsent[0].maybe_applied);
    assert_eq!((unsent[0].attempts, unsent[0].record.value), (1, 7));
    assert_eq!(
        sink.seen().iter().filter(|r| r.agreement == flaky).count(),
        1
    );
}

/// Never answers.
struct Silent;

impl Sink for Silent {
    async fn send(&self, _: &UsageRecord, _: Duration) -> SendResult {
        std::future::pending().await
    }
}

/// Blocks the thread it runs on (which a sink must not do) before answering.
struct BlocksItsThread(Duration);

impl Sink for BlocksItsThread {
    async fn send(&self, _: &UsageRecord, _: Duration) -> SendResult {
        std::thread::sleep(self.0);
        Ok(())
    }
}

#[test]
fn a_sink_that_never_answers_is_timed_out_while_running_and_its_usage_is_handed_back() {
    let unsent = Arc::new(Mutex::new(Vec::<UnsentRecord>::new()));
    let hook = Arc::clone(&unsent);
    let config = config()
        .request_timeout(Duration::from_millis(50))
        .on_unsent(move |records| hook.lock().expect("hook").extend_from_slice(records));
    let reporter = Reporter::start_with_sink(config, Silent).expect("reporter");
    reporter.record_for(&agreement(1), &API_CALLS, 7);
    // Each attempt ends at the request timeout, whatever the sink does: the reporter keeps
    // trying, as for a request that timed out after it was sent.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while reporter.stats().ambiguous < 2 * 7 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        reporter.stats().ambiguous >= 2 * 7,
        "{:?}",
        reporter.stats()
    );
    let report = reporter.shutdown_blocking(Duration::from_millis(200));
    let stats = &report.stats;
    assert_eq!(
        stats.recorded,
        stats.delivered + stats.rejected + stats.unsent
    );
    let handed_back: u64 = unsent
        .lock()
        .expect("hook")
        .iter()
        .map(|u| u.record.value)
        .sum();
    assert_eq!(handed_back, 7);
}

#[tokio::test]
async fn an_async_shutdown_keeps_its_deadline_when_a_sink_blocks_the_reporters_thread() {
    let reporter = Reporter::start_with_sink(config(), BlocksItsThread(Duration::from_secs(4)))
        .expect("reporter");
    reporter.record_for(&agreement(1), &API_CALLS, 7);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Shutdown's deadline plus one second, as for `shutdown_blocking`, not the sink's 4 s.
    let report = tokio::time::timeout(
        Duration::from_millis(2_500),
        reporter.shutdown(Duration::from_millis(300)),
    )
    .await
    .expect("the shutdown returns within its deadline and the grace second");
    assert!(report.failure.is_some(), "{report}");
}
