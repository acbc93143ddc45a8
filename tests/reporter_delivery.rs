//! The reporter end to end: real threads and runtimes record, the worker delivers over
//! HTTP to the local emulator, and the emulator's ledger is compared with what was
//! recorded. Each test runs its own `Reporter` (not the global one) against its own
//! emulator, so they run in parallel.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kinde_meter::{
    AgreementId, Delivery, FeatureCode, MeterError, Reporter, UnsentReason, UnsentRecord, Usage,
};
use kinde_meter_emulator::{Emulator, Faults, RateLimit, RequestOutcome};
use kinde_meter_workspace::reporter::{Expected, agreements, fast_config, wait_until};

const API_CALLS: FeatureCode = FeatureCode::from_static("api_calls");
const EXPORTS: FeatureCode = FeatureCode::from_static("exports");

/// Records from `threads` OS threads: each thread `calls` calls spread over `keys`
/// agreements and two features, values 1..=5. Returns the expected totals.
fn workload(reporter: &Reporter, threads: usize, calls: usize, keys: usize) -> Expected {
    let ids = agreements(keys);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let ids = &ids;
                scope.spawn(move || {
                    let mut expected = Expected::default();
                    for i in 0..calls {
                        let agreement = &ids[(i * 7 + t) % ids.len()];
                        let feature = if i % 3 == 0 { &EXPORTS } else { &API_CALLS };
                        let value = (i % 5 + 1) as u64;
                        reporter.record_for(agreement, feature, value);
                        expected.add(agreement, feature, value);
                    }
                    expected
                })
            })
            .collect();
        let mut total = Expected::default();
        for h in handles {
            total.merge(h.join().expect("recording thread"));
        }
        total
    })
}

fn shutdown_complete(reporter: Reporter) -> kinde_meter::ShutdownReport {
    let report = reporter.shutdown_blocking(Duration::from_secs(15));
    assert!(
        report.is_complete(),
        "everything should be delivered: {report}, left {:?}",
        report.left
    );
    report
}

#[test]
fn many_threads_deliver_exactly_what_they_recorded() {
    let emulator = Emulator::start().expect("emulator");
    let reporter = Reporter::start(fast_config(&emulator)).expect("reporter");
    let expected = workload(&reporter, 8, 20_000, 25);
    let report = shutdown_complete(reporter);
    expected.assert_ledger(&emulator);
    assert_eq!(u128::from(report.stats.recorded), expected.sum());
    assert_eq!(u128::from(report.stats.delivered), expected.sum());
    assert_eq!(report.stats.ambiguous, 0);
}

/// Faults that Kinde does not apply (the emulator answers them without touching the
/// ledger): whatever the client concludes, the ledger must end up exact.
#[test]
fn status_faults_and_slow_responses_lose_and_invent_nothing() {
    let emulator = Emulator::builder()
        .seed(7)
        .faults(
            Faults::none()
                .status_500(0.1)
                .status_502(0.1)
                .status_503(0.15)
                .drop_before_apply(0.05)
                .latency(Duration::from_millis(20)),
        )
        .start()
        .expect("emulator");
    let reporter = Reporter::start(fast_config(&emulator)).expect("reporter");
    let mut expected = Expected::default();
    for _ in 0..5 {
        expected.merge(workload(&reporter, 4, 2_000, 30));
        std::thread::sleep(Duration::from_millis(150));
    }
    let counts = emulator.counts();
    assert!(
        counts.faults > 0 && counts.dropped > 0,
        "faults were injected: {counts:?}"
    );
    emulator.set_faults(Faults::default());
    let report = shutdown_complete(reporter);
    expected.assert_ledger(&emulator);
    assert!(report.stats.retried > 0, "{:?}", report.stats);
}

#[test]
fn a_server_down_for_seconds_loses_nothing() {
    let emulator = Emulator::start().expect("emulator");
    let reporter = Reporter::start(fast_config(&emulator)).expect("reporter");
    let mut expected = workload(&reporter, 2, 1_000, 10);
    emulator.down_for(Duration::from_secs(2));
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_millis(1_500) {
        expected.merge(workload(&reporter, 2, 500, 10));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        reporter.stats().last_error.is_some(),
        "the outage was noticed"
    );
    assert!(wait_until(Duration::from_secs(5), || emulator.is_up()));
    expected.merge(workload(&reporter, 2, 500, 10));
    let report = shutdown_complete(reporter);
    // Going down can cut a request that was already applied: ambiguous, and resent.
    expected.assert_ledger_within(&emulator, report.stats.ambiguous);
    assert_eq!(u128::from(report.stats.delivered), expected.sum());
}

#[test]
fn expired_tokens_are_replaced_without_losing_usage() {
    let emulator = Emulator::builder()
        .token_lifetime(Duration::from_secs(2))
        .start()
        .expect("emulator");
    let reporter = Reporter::start(fast_config(&emulator)).expect("reporter");
    let mut expected = Expected::default();
    for round in 0..6 {
        expected.merge(workload(&reporter, 2, 500, 5));
        if round == 2 {
            emulator.expire_tokens();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let report = shutdown_complete(reporter);
    expected.assert_ledger(&emulator);
    assert!(
        emulator.counts().tokens_issued >= 2,
        "{:?}",
        emulator.counts()
    );
    assert_eq!(report.stats.rejected, 0);
}

/// Ambiguous faults that Kinde *did* apply (the answer was lost). At-least-once resends
/// them, so the ledger exceeds what was recorded by exactly what the client counted as
/// ambiguous, and the emulator confirms each of those was applied.
#[test]
fn at_least_once_exceeds_only_by_what_it_counted_ambiguous() {
    let emulator = Emulator::builder()
        .seed(11)
        .faults(
            Faults::none()
                .drop_after_apply(0.1)
                .malformed_200(0.05)
                .status_500_after_apply(0.05),
        )
        .start()
        .expect("emulator");
    let reporter = Reporter::start(fast_config(&emulator)).expect("reporter");
    let mut expected = Expected::default();
    for _ in 0..4 {
        expected.merge(workload(&reporter, 4, 1_000, 40));
        std::thread::sleep(Duration::from_millis(150));
    }
    emulator.set_faults(Faults::default());
    let report = shutdown_complete(reporter);
    let ledger = emulator.ledger_sum().whole().expect("whole");
    let ambiguous = u128::from(report.stats.ambiguous);
    assert!(ambiguous > 0, "some attempts were ambiguous");
    assert_eq!(emulator.ambiguous_applied().whole(), Some(ambiguous));
    assert_eq!(ledger, expected.sum() + ambiguous);
    assert_eq!(u128::from(report.stats.delivered), expected.sum());
}

/// At-most-once never resends an ambiguous record: it goes to `on_unsent`. When Kinde
/// applied it anyway the ledger is exact; when it did not, the ledger falls short by
/// exactly what the hook received.
#[test]
fn at_most_once_falls_short_only_by_what_it_handed_back() {
    for (applied, faults) in [
        (true, Faults::none().drop_after_apply(0.15)),
        (false, Faults::none().drop_before_apply(0.15)),
    ] {
        let emulator = Emulator::builder()
            .seed(3)
            .faults(faults)
            .start()
            .expect("emulator");
        let unsent: Arc<Mutex<Vec<UnsentRecord>>> = Arc::default();
        let hook = Arc::clone(&unsent);
        let config = fast_config(&emulator)
            .delivery(Delivery::AtMostOnce)
            .on_unsent(move |records| hook.lock().expect("hook").extend_from_slice(records));
        let reporter = Reporter::start(config).expect("reporter");
        let mut expected = Expected::default();
        for _ in 0..4 {
            expected.merge(workload(&reporter, 2, 1_000, 40));
            std::thread::sleep(Duration::from_millis(150));
        }
        emulator.set_faults(Faults::default());
        let report = reporter.shutdown_blocking(Duration::from_secs(15));
        assert!(report.left.is_empty(), "nothing left at shutdown: {report}");
        let handed_back: u128 = unsent
            .lock()
            .expect("hook")
            .iter()
            .inspect(|u| assert_eq!(u.reason, UnsentReason::Ambiguous))
            .map(|u| u128::from(u.record.value))
            .sum();
        assert!(handed_back > 0, "faults were hit");
        assert_eq!(u128::from(report.stats.unsent), handed_back);
        let ledger = emulator.ledger_sum().whole().expect("whole");
        if applied {
            assert_eq!(
                ledger,
                expected.sum(),
                "applied-but-unanswered records count once"
            );
        } else {
            assert_eq!(ledger + handed_back, expected.sum());
        }
    }
}

#[test]
fn no_request_goes_out_before_rate_limit_reset() {
    let emulator = Emulator::builder()
        .rate_limit(RateLimit::new(5.0, 5))
        .start()
        .expect("emulator");
    let reporter = Reporter::start(fast_config(&emulator)).expect("reporter");
    let expected = workload(&reporter, 1, 15, 15);
    shutdown_complete(reporter);
    expected.assert_ledger(&emulator);
    let requests = emulator.requests();
    let throttles: Vec<_> = requests
        .iter()
        .filter(|r| r.outcome == RequestOutcome::Throttled)
        .collect();
    assert!(!throttles.is_empty(), "the limit was hit");
    // A request already on the wire when a 429 came back may arrive a little after it;
    // nothing the client sent after reading it may arrive before the reset.
    let slack = Duration::from_millis(50);
    for t in &throttles {
        let answered = t.responded_at.expect("answered");
        let reset = Duration::from_secs(t.rate_limit_reset.expect("RateLimit-Reset"));
        for r in &requests {
            assert!(
                !(r.arrived_at > answered + slack && r.arrived_at < answered + reset),
                "a request arrived {:?} after a 429 that said to wait {:?}",
                r.arrived_at - answered,
                reset
            );
        }
    }
}

#[test]
fn in_flight_requests_never_exceed_the_limit() {
    let emulator = Emulator::builder()
        .faults(Faults::none().latency(Duration::from_millis(60)))
        .start()
        .expect("emulator");
    let reporter = Reporter::start(fast_config(&emulator).max_in_flight(3)).expect("reporter");
    let expected = workload(&reporter, 2, 400, 40);
    shutdown_complete(reporter);
    expected.assert_ledger(&emulator);
    let seen = emulator.max_in_flight_seen();
    assert!((2..=3).contains(&seen), "max in flight seen: {seen}");
}

#[test]
fn a_429_storm_pauses_sending_and_then_delivers_everything() {
    let emulator = Emulator::start().expect("emulator");
    let reporter = Reporter::start(fast_config(&emulator)).expect("reporter");
    let mut expected = workload(&reporter, 2, 500, 10);
    emulator.throttle_for(Duration::from_secs(2));
    for _ in 0..5 {
        expected.merge(workload(&reporter, 2, 200, 10));
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = shutdown_complete(reporter);
    expected.assert_ledger(&emulator);
    assert!(report.stats.throttled > 0);
    // During the storm each 429 paused everything until its reset: a handful of probes,
    // not a retry per record per backoff step.
    assert!(
        emulator.counts().throttled <= 30,
        "too many requests during the storm: {:?}",
        emulator.counts()
    );
}

#[test]
fn shutdown_with_the_server_down_returns_in_time_and_reports_every_unit() {
    let emulator = Emulator::start().expect("emulator");
    let unsent: Arc<Mutex<Vec<UnsentRecord>>> = Arc::default();
    let hook = Arc::clone(&unsent);
    let config =
        fast_config(&emulator).on_unsent(move |r| hook.lock().expect("hook").extend_from_slice(r));
    let reporter = Reporter::start(config).expect("reporter");
    emulator.go_down();
    let expected = workload(&reporter, 3, 3_000, 20);
    let started = Instant::now();
    let report = reporter.shutdown_blocking(Duration::from_secs(2));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    assert!(report.deadline_reached);
    assert_eq!(report.left_value(), expected.sum());
    assert!(
        report
            .left
            .iter()
            .all(|u| u.reason == UnsentReason::DeadlineExceeded)
    );
    let hooked: u128 = unsent
        .lock()
        .expect("hook")
        .iter()
        .map(|u| u128::from(u.record.value))
        .sum();
    assert_eq!(hooked, expected.sum(), "the hook got the same records");
    assert_eq!(u128::from(report.stats.unsent), expected.sum());
    // Each left record still names its key, timestamp and idempotency key for a replay.
    let keys: std::collections::BTreeSet<_> = report
        .left
        .iter()
        .map(|u| &u.record.idempotency_key)
        .collect();
    assert_eq!(keys.len(), report.left.len());
}

#[test]
fn retries_keep_the_idempotency_key_and_the_window_timestamp() {
    let emulator = Emulator::start().expect("emulator");
    let reporter = Reporter::start(fast_config(&emulator)).expect("reporter");
    let agreement: AgreementId = "agreement_retry".parse().expect("id");
    emulator.go_down();
    reporter.record_for(&agreement, &API_CALLS, 42);
    // Let the window close while the server is down, then wait a visible while.
    std::thread::sleep(Duration::from_millis(1_300));
    let back_at = std::time::SystemTime::now();
    emulator.set_faults(Faults::none().status_503(1.0));
    emulator.come_up().expect("back up");
    assert!(wait_until(Duration::from_secs(5), || emulator
        .counts()
        .faults
        >= 2));
    emulator.set_faults(Faults::default());
    shutdown_complete(reporter);
    let accepted = emulator.accepted();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    let key = accepted[0]
        .idempotency_key
        .clone()
        .expect("idempotency key");
    let attempts: Vec<_> = emulator
        .requests()
        .into_iter()
        .map(|r| r.header("idempotency-key").map(str::to_owned))
        .collect();
    assert!(attempts.len() >= 3);
    assert!(
        attempts.iter().all(|k| k.as_deref() == Some(key.as_str())),
        "{attempts:?}"
    );
    let stamped = accepted[0].timestamp.clone().expect("timestamp");
    let back = kinde_meter::api::Timestamp::try_from(back_at)
        .expect("now")
        .to_string();
    assert!(
        stamped < back,
        "stamped {stamped} when the window closed, before the server came back at {back}"
    );
}

#[test]
fn waiting_records_of_a_key_merge_within_the_coalescing_window() {
    let emulator = Emulator::start().expect("emulator");
    let reporter = Reporter::start(fast_config(&emulator)).expect("reporter");
    let agreement: AgreementId = "agreement_merge".parse().expect("id");
    emulator.go_down();
    for _ in 0..8 {
        reporter.record_for(&agreement, &API_CALLS, 5);
        std::thread::sleep(Duration::from_millis(150));
    }
    emulator.come_up().expect("back up");
    shutdown_complete(reporter);
    let accepted = emulator.accepted();
    // Eight windows, one hour bucket: one record, or a second one if a window closed
    // while the first was being attempted, or the test straddled an hour boundary.
    assert!(accepted.len() <= 3, "{accepted:?}");
    assert_eq!(emulator.total("agreement_merge", "api_calls"), 40u64);
}

#[test]
fn absolute_values_are_last_write_wins_and_separate_from_delta() {
    let emulator = Emulator::start().expect("emulator");
    let config = fast_config(&emulator).flush_interval(Duration::from_secs(3600));
    let reporter = Reporter::start(config).expect("reporter");
    let agreement: AgreementId = "agreement_seats".parse().expect("id");
    let seats = FeatureCode::from_static("seats");
    for v in [5, 9, 7] {
        reporter.record_for(&agreement, &seats, Usage::Absolute(v));
    }
    reporter.record_for(&agreement, &API_CALLS, Usage::Delta(3));
    assert_eq!(reporter.flush_blocking(Duration::from_secs(5)).waiting, 0);
    reporter.record_for(&agreement, &seats, Usage::Absolute(4));
    reporter.record_for(&agreement, &seats, Usage::Absolute(6));
    shutdown_complete(reporter);
    assert_eq!(emulator.total("agreement_seats", "seats"), 6u64);
    assert_eq!(emulator.total("agreement_seats", "api_calls"), 3u64);
    let absolute: Vec<String> = emulator
        .accepted()
        .iter()
        .filter(|a| a.feature == "seats")
        .map(|a| a.value.to_string())
        .collect();
    assert_eq!(
        absolute,
        ["7", "6"],
        "one request per window carrying its last value"
    );
}

#[test]
fn rejected_records_are_not_retried_and_reach_the_hook() {
    let emulator = Emulator::builder()
        .known_features(["api_calls"])
        .start()
        .expect("emulator");
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let hook = Arc::clone(&errors);
    let config = fast_config(&emulator).on_error(move |e| {
        if let MeterError::Rejected { record, error } = e {
            assert_eq!(record.value, 9);
            let codes: Vec<_> = error
                .kinde_errors()
                .iter()
                .filter_map(|k| k.code.clone())
                .collect();
            hook.lock().expect("hook").push(codes.join(","));
        }
    });
    let reporter = Reporter::start(config).expect("reporter");
    let agreement: AgreementId = "agreement_reject".parse().expect("id");
    reporter.record_for(&agreement, &FeatureCode::from_static("unknown_feature"), 9);
    reporter.record_for(&agreement, &API_CALLS, 1);
    let report = shutdown_complete(reporter);
    assert_eq!(report.stats.rejected, 9);
    assert_eq!(report.stats.delivered, 1);
    assert_eq!(emulator.counts().rejected, 1, "sent once, never retried");
    assert_eq!(
        errors.lock().expect("hook").as_slice(),
        ["FEATURE_NOT_FOUND"]
    );
}

#[test]
fn new_keys_past_the_bound_are_refused_counted_and_reported() {
    let emulator = Emulator::start().expect("emulator");
    let refused: Arc<Mutex<u64>> = Arc::default();
    let hook = Arc::clone(&refused);
    let config = fast_config(&emulator)
        .max_pending_keys(8)
        .flush_interval(Duration::from_secs(3600))
        .on_error(move |e| {
            if let MeterError::Overflow {
                value,
                max_pending_keys,
                ..
            } = e
            {
                assert_eq!(*max_pending_keys, 8);
                *hook.lock().expect("hook") += value;
            }
        });
    let reporter = Reporter::start(config).expect("reporter");
    // Keep the server down so nothing leaves the table while the bound is tested.
    emulator.go_down();
    let ids = agreements(20);
    for id in &ids {
        reporter.record_for(id, &API_CALLS, 2);
    }
    let stats = reporter.stats();
    assert!(stats.refused_overflow > 0, "{stats:?}");
    assert_eq!(*refused.lock().expect("hook"), stats.refused_overflow);
    assert_eq!(
        stats.recorded + stats.refused_overflow,
        40,
        "every unit is either kept or refused"
    );
    // The bound applies to the table and to the waiting records: a key may be counted in
    // both while its value moves from one to the other.
    assert!(stats.pending_keys <= 16, "{stats:?}");
    emulator.come_up().expect("up");
    let report = shutdown_complete(reporter);
    assert_eq!(emulator.ledger_sum(), report.stats.recorded);
}

#[test]
fn reaching_the_high_water_mark_flushes_early() {
    let emulator = Emulator::start().expect("emulator");
    let config = fast_config(&emulator)
        .max_pending_keys(10)
        .flush_interval(Duration::from_secs(3600));
    let reporter = Reporter::start(config).expect("reporter");
    for id in agreements(6) {
        reporter.record_for(&id, &API_CALLS, 1);
    }
    assert!(
        wait_until(Duration::from_secs(5), || emulator.ledger_sum() == 6u64),
        "delivered without waiting for the hour-long interval: {:?}",
        emulator.ledger()
    );
    shutdown_complete(reporter);
}

#[test]
fn a_million_calls_over_a_hundred_keys_take_a_hundred_requests() {
    let emulator = Emulator::start().expect("emulator");
    let config = fast_config(&emulator).flush_interval(Duration::from_secs(3600));
    let reporter = Reporter::start(config).expect("reporter");
    let ids = agreements(100);
    for i in 0..1_000_000 {
        reporter.record_for(&ids[i % 100], &API_CALLS, 1);
    }
    shutdown_complete(reporter);
    assert_eq!(emulator.counts().accepted, 100);
    assert_eq!(emulator.ledger_sum(), 1_000_000u64);
}

#[test]
fn flush_delivers_now_and_says_what_is_left() {
    let emulator = Emulator::start().expect("emulator");
    let config = fast_config(&emulator).flush_interval(Duration::from_secs(3600));
    let reporter = Reporter::start(config).expect("reporter");
    let agreement: AgreementId = "agreement_flush".parse().expect("id");
    reporter.record_for(&agreement, &API_CALLS, 3);
    let report = reporter.flush_blocking(Duration::from_secs(5));
    assert_eq!((report.waiting, report.timed_out), (0, false));
    assert_eq!(emulator.total("agreement_flush", "api_calls"), 3u64);
    emulator.go_down();
    reporter.record_for(&agreement, &API_CALLS, 4);
    let report = reporter.flush_blocking(Duration::from_millis(500));
    assert!(report.timed_out && report.waiting == 1, "{report:?}");
    emulator.come_up().expect("up");
    shutdown_complete(reporter);
    assert_eq!(emulator.total("agreement_flush", "api_calls"), 7u64);
}

#[test]
fn dropping_the_reporter_delivers_what_is_pending() {
    let emulator = Emulator::start().expect("emulator");
    let config = fast_config(&emulator).flush_interval(Duration::from_secs(3600));
    let reporter = Reporter::start(config).expect("reporter");
    let agreement: AgreementId = "agreement_drop".parse().expect("id");
    reporter.record_for(&agreement, &API_CALLS, 12);
    drop(reporter);
    assert_eq!(emulator.total("agreement_drop", "api_calls"), 12u64);
}

#[test]
fn works_when_the_applications_runtime_shuts_down_first() {
    let emulator = Emulator::start().expect("emulator");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let reporter =
        runtime.block_on(async { Reporter::start(fast_config(&emulator)).expect("reporter") });
    let reporter = Arc::new(reporter);
    let agreement: AgreementId = "agreement_rt".parse().expect("id");
    runtime.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (r, a) = (Arc::clone(&reporter), agreement.clone());
                tokio::spawn(async move {
                    for _ in 0..1_000 {
                        r.record_for(&a, &API_CALLS, 1);
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
    });
    drop(runtime);
    let reporter = Arc::into_inner(reporter).expect("sole owner");
    shutdown_complete(reporter);
    assert_eq!(emulator.total("agreement_rt", "api_calls"), 8_000u64);
}

#[tokio::test(flavor = "current_thread")]
async fn async_shutdown_on_a_current_thread_runtime_does_not_deadlock() {
    let emulator = Emulator::start().expect("emulator");
    let reporter = Reporter::start(fast_config(&emulator)).expect("reporter");
    let agreement: AgreementId = "agreement_ct".parse().expect("id");
    for _ in 0..100 {
        reporter.record_for(&agreement, &API_CALLS, 1);
    }
    let flushed = reporter.flush(Duration::from_secs(5)).await;
    assert_eq!(flushed.waiting, 0);
    let report = reporter.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_complete(), "{report}");
    assert_eq!(emulator.total("agreement_ct", "api_calls"), 100u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_shutdown_on_a_multi_thread_runtime() {
    let emulator = Emulator::start().expect("emulator");
    let reporter = Arc::new(Reporter::start(fast_config(&emulator)).expect("reporter"));
    let ids = agreements(4);
    let mut tasks = tokio::task::JoinSet::new();
    for id in ids.clone() {
        let r = Arc::clone(&reporter);
        tasks.spawn(async move {
            for _ in 0..500 {
                r.record_for(&id, &EXPORTS, 2);
                tokio::task::yield_now().await;
            }
        });
    }
    tasks.join_all().await;
    let reporter = Arc::into_inner(reporter).expect("sole owner");
    let report = reporter.shutdown(Duration::from_secs(10)).await;
    assert!(report.is_complete(), "{report}");
    for id in ids {
        assert_eq!(emulator.total(id.as_str(), "exports"), 1_000u64);
    }
}
