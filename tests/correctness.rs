//! Regressions for the ways demanding users broke v0.1: the wrong customer billed, usage
//! lost at shutdown, stale absolute values, held-back usage, a cancelled shutdown, idle
//! threads, panicking hooks, thread-local destructors, hooks without their scope.
//!
//! Tests that use the global reporter take turns (`serial()`); each uses ids of its own.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kinde_meter::testing;
use kinde_meter::{
    AgreementId, Config, Delivery, FeatureCode, InitError, MeterError, Reporter, Usage,
    current_agreement, enter_agreement, init, meter, record, record_for, stats,
};
use kinde_meter_emulator::{Emulator, Faults};
use kinde_meter_workspace::reporter::{fast_config, wait_until};

fn serial() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn id(s: &str) -> AgreementId {
    s.parse().expect("valid id")
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[meter(feature = "scoped_call")]
fn scoped_call() {}

// Defect 1: a guard held across an `.await` in a `LocalSet` task billed the other tasks
// polled on that thread meanwhile.
#[test]
fn a_guard_held_across_await_does_not_bill_other_local_tasks() {
    let capture = testing::capture();
    let rt = current_thread();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let holder = tokio::task::spawn_local(async {
            let _scope = enter_agreement(id("agreement_holder"));
            tokio::task::yield_now().await;
            scoped_call();
        });
        let bystander = tokio::task::spawn_local(async {
            scoped_call();
        });
        holder.await.expect("holder");
        bystander.await.expect("bystander");
    });
    assert_eq!(capture.total("agreement_holder", "scoped_call"), 1);
    assert_eq!(
        capture.unattributed("scoped_call"),
        1,
        "the bystander bills no one"
    );
}

// Defect 1: a task spawned before a sync scope, run inside that scope's `block_on`.
#[test]
fn a_task_run_inside_a_sync_scopes_block_on_does_not_bill_it() {
    let capture = testing::capture();
    let rt = current_thread();
    let early = rt.spawn(async { scoped_call() });
    let _scope = enter_agreement(id("agreement_sync"));
    rt.block_on(async {
        scoped_call();
        early.await.expect("task");
    });
    assert_eq!(capture.total("agreement_sync", "scoped_call"), 1);
    assert_eq!(capture.unattributed("scoped_call"), 1);
}

// Defect 1: guards dropped out of order restored a stale scope.
#[test]
fn guards_dropped_out_of_order_leave_no_stale_scope() {
    let capture = testing::capture();
    let a = enter_agreement(id("agreement_first"));
    let b = enter_agreement(id("agreement_second"));
    drop(a);
    scoped_call();
    drop(b);
    scoped_call();
    assert_eq!(capture.total("agreement_second", "scoped_call"), 1);
    assert_eq!(capture.total("agreement_first", "scoped_call"), 0);
    assert_eq!(capture.unattributed("scoped_call"), 1);
}

/// Records `agreement_race_{t}` / `race` from `threads` threads without pause until
/// `stop`, each returning what it recorded.
fn recorders(threads: usize, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<u64>> {
    let feature = FeatureCode::from_static("race");
    (0..threads)
        .map(|t| {
            let stop = Arc::clone(stop);
            let feature = feature.clone();
            std::thread::spawn(move || {
                let agreement = id(&format!("agreement_race_{t}"));
                let mut recorded = 0u64;
                while !stop.load(Relaxed) {
                    for _ in 0..100 {
                        record_for(&agreement, &feature, 1);
                    }
                    recorded += 100;
                }
                recorded
            })
        })
        .collect()
}

fn assert_report_is_exact(report: &kinde_meter::ShutdownReport) {
    let s = &report.stats;
    assert_eq!(
        u128::from(s.recorded),
        u128::from(s.delivered) + u128::from(s.rejected) + u128::from(s.unsent),
        "recorded = delivered + rejected + unsent (left included): {report:?}"
    );
}

// Defect 2: usage recorded by other threads while shutdown ran stayed in the cells:
// neither delivered nor left. Runs every way of shutting down, with threads recording
// throughout, then once more after, and checks every unit ends up at Kinde.
#[test]
fn shutdown_accounts_for_usage_other_threads_record_while_it_runs() {
    let _turn = serial();
    let emulator = Emulator::start().expect("emulator");
    // Deliver what earlier tests left in the global cells, so the sums below are ours.
    let settled = init(fast_config(&emulator))
        .expect("init")
        .shutdown_blocking(Duration::from_secs(10));
    assert!(settled.is_complete(), "{settled}");
    let baseline = stats();
    let mut total_recorded = 0u64;
    for way in ["blocking", "async", "cancelled", "flush then blocking"] {
        let guard = init(fast_config(&emulator)).expect("init");
        let stop = Arc::new(AtomicBool::new(false));
        let threads = recorders(3, &stop);
        std::thread::sleep(Duration::from_millis(150));
        let report = match way {
            "blocking" => Some(guard.shutdown_blocking(Duration::from_millis(300))),
            "async" => Some(current_thread().block_on(guard.shutdown(Duration::from_millis(300)))),
            "cancelled" => {
                let rt = current_thread();
                let cut = rt.block_on(async {
                    tokio::time::timeout(
                        Duration::from_millis(5),
                        guard.shutdown(Duration::from_millis(300)),
                    )
                    .await
                });
                assert!(cut.is_err(), "the shutdown was cut short");
                None
            }
            _ => {
                let flushed = guard.flush_blocking(Duration::from_secs(5));
                assert!(!flushed.timed_out, "{flushed:?}");
                Some(guard.shutdown_blocking(Duration::from_millis(300)))
            }
        };
        if let Some(report) = &report {
            assert!(report.failure.is_none(), "{way}: {report:?}");
            assert_report_is_exact(report);
        }
        stop.store(true, Relaxed);
        total_recorded += threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .sum::<u64>();
        // A cancelled shutdown finishes on its own; the next init waits for it.
        assert!(
            wait_until(Duration::from_secs(5), || !matches!(
                init(fast_config(&emulator)).map(drop),
                Err(InitError::ShuttingDown)
            )),
            "{way}: init works again"
        );
    }
    // Usage recorded after the last final drain is kept, and the next start delivers it.
    let guard = init(fast_config(&emulator)).expect("init");
    let last = guard.shutdown_blocking(Duration::from_secs(10));
    assert!(last.is_complete(), "{last:?}");
    let after = stats();
    let delivered = after.delivered - baseline.delivered;
    let unsent = after.unsent - baseline.unsent;
    assert_eq!(
        u128::from(total_recorded),
        u128::from(delivered) + u128::from(unsent),
        "every unit the threads recorded was delivered or handed back"
    );
    assert!(delivered > 0, "{after:?}");
    let ledger: u128 = (0..3)
        .map(|t| {
            emulator
                .total(&format!("agreement_race_{t}"), "race")
                .whole()
                .expect("whole")
        })
        .sum();
    // Requests abandoned in flight at a deadline are handed back, and may have been
    // applied: Kinde holds what was delivered, plus at most what was handed back.
    assert!(
        ledger >= u128::from(delivered) && ledger <= u128::from(delivered) + u128::from(unsent),
        "Kinde holds {ledger}; delivered {delivered}, handed back {unsent}"
    );
}

// Defect 2: usage recorded after shutdown was silent.
#[test]
fn usage_recorded_after_shutdown_is_reported_and_kept_for_the_next_start() {
    let _turn = serial();
    let emulator = Emulator::start().expect("emulator");
    let events = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&events);
    let config = fast_config(&emulator).on_error(move |e| {
        seen.lock().expect("events").push(e.to_string());
    });
    let guard = init(config).expect("init");
    let late = id("agreement_late");
    let feature = FeatureCode::from_static("late");
    record_for(&late, &feature, 1);
    let report = guard.shutdown_blocking(Duration::from_secs(10));
    assert!(report.is_complete(), "{report}");
    record_for(&late, &feature, 4);
    record_for(&late, &feature, 5);
    let reported: Vec<String> = events
        .lock()
        .expect("events")
        .iter()
        .filter(|e| e.contains("after the reporter shut down") && e.contains("agreement_late"))
        .cloned()
        .collect();
    assert_eq!(
        reported.len(),
        2,
        "each late call is reported: {reported:?}"
    );
    let guard = init(fast_config(&emulator)).expect("init again");
    let report = guard.shutdown_blocking(Duration::from_secs(10));
    assert!(report.is_complete(), "{report}");
    assert_eq!(emulator.total("agreement_late", "late"), 10u64);
}

// Defect 3: an older absolute value that failed could land after a newer one of the
// next coalescing bucket. For every fault the emulator has: the first values fail and
// wait for a long retry; newer values, in the next bucket, arrive once Kinde recovers.
// Kinde must see each key's values in recording order and end with the newest.
#[test]
fn absolute_values_reach_kinde_in_order_under_every_fault() {
    let faults = [
        Faults::none().status_500(1.0),
        Faults::none().status_502(1.0),
        Faults::none().status_503(1.0),
        Faults::none().drop_before_apply(1.0),
        Faults::none().status_500_after_apply(1.0),
        Faults::none().drop_after_apply(1.0),
        Faults::none().malformed_200(1.0),
    ];
    for (i, fault) in faults.into_iter().enumerate() {
        let emulator = Emulator::builder()
            .seed(i as u64 + 7)
            .faults(fault.clone())
            .start()
            .expect("emulator");
        // One-second buckets; retries after up to 4 s (full jitter), so a newer value
        // is usually ready before an older one's retry.
        let reporter = Reporter::start(
            fast_config(&emulator)
                .coalesce_window(Duration::from_secs(1))
                .backoff(Duration::from_secs(4), Duration::from_secs(4)),
        )
        .expect("start");
        let seats = FeatureCode::from_static("seats");
        let keys: Vec<AgreementId> = (0..4).map(|k| id(&format!("agreement_abs_{k}"))).collect();
        for agreement in &keys {
            reporter.record_for(agreement, &seats, Usage::Absolute(10));
        }
        reporter.flush_blocking(Duration::from_millis(100));
        std::thread::sleep(Duration::from_millis(1100));
        emulator.set_faults(Faults::none());
        for agreement in &keys {
            reporter.record_for(agreement, &seats, Usage::Absolute(20));
        }
        let report = reporter.shutdown_blocking(Duration::from_secs(20));
        assert!(report.left.is_empty(), "fault {i}: {report:?}");
        for agreement in &keys {
            let applied: Vec<u128> = emulator
                .accepted()
                .into_iter()
                .filter(|a| a.agreement == agreement.as_str())
                .map(|a| a.value.whole().expect("whole"))
                .collect();
            let mut sorted = applied.clone();
            sorted.sort_unstable();
            assert_eq!(
                applied, sorted,
                "fault {i}: {agreement} applied out of order: {fault:?}"
            );
            assert_eq!(applied.last().copied(), Some(20), "fault {i}: {agreement}");
        }
    }
}

// Defect 4: while the outbox was full of records waiting for retries, new usage in
// another bucket was held back in the cells: `flush` did not count it, and it was later
// stamped with a later window (or never sent). Now nothing is held back: usage is
// drained with its window, and what the bound cannot take is refused and reported.
#[test]
fn usage_is_never_held_back_behind_retries() {
    let emulator = Emulator::builder()
        .faults(Faults::none().status_503(1.0))
        .start()
        .expect("emulator");
    let reporter = Reporter::start(
        fast_config(&emulator)
            .flush_interval(Duration::from_secs(3600))
            .coalesce_window(Duration::from_secs(1))
            .max_pending_keys(2),
    )
    .expect("start");
    let feature = FeatureCode::from_static("held");
    let keys = [id("agreement_held_a"), id("agreement_held_b")];
    for k in &keys {
        reporter.record_for(k, &feature, 1);
    }
    let first = reporter.flush_blocking(Duration::from_millis(200));
    assert_eq!(first.waiting, 2, "{first:?}");
    std::thread::sleep(Duration::from_millis(1100));
    // The bound is full of waiting records: this is refused, and says so.
    for k in &keys {
        reporter.record_for(k, &feature, 2);
    }
    let second = reporter.flush_blocking(Duration::from_millis(200));
    let recorded_by = kinde_meter::api::Timestamp::now();
    assert_eq!(second.waiting, 2, "{second:?}");
    std::thread::sleep(Duration::from_millis(1100));
    emulator.set_faults(Faults::none());
    let done = reporter.flush_blocking(Duration::from_secs(10));
    assert_eq!(done.waiting, 0, "{done:?}");
    let s = reporter.stats();
    assert_eq!(
        s.recorded, s.delivered,
        "nothing is left behind in the cells once flush says nothing waits: {s:?}"
    );
    assert_eq!(
        emulator.ledger_sum().whole().expect("whole") + u128::from(s.refused_overflow),
        6,
        "every unit is delivered or reported as refused: {s:?}"
    );
    for accepted in emulator.accepted() {
        let stamp = accepted.timestamp.expect("stamped");
        assert!(
            stamp.as_str() <= recorded_by.to_string().as_str(),
            "stamped {stamp}, after the window it was recorded in (by {recorded_by})"
        );
    }
}

// Defect 5: a cancelled `Guard::shutdown` left the global reporter marked running.
#[test]
fn init_works_again_after_a_cancelled_shutdown() {
    let _turn = serial();
    let emulator = Emulator::builder()
        .faults(Faults::none().latency(Duration::from_millis(300)))
        .start()
        .expect("emulator");
    let guard = init(fast_config(&emulator)).expect("init");
    // Something to deliver, slowly, so the shutdown is still running when it is cut.
    record_for(&id("agreement_slow"), &FeatureCode::from_static("again"), 1);
    let rt = current_thread();
    let cut = rt.block_on(async {
        tokio::select! {
            biased;
            report = guard.shutdown(Duration::from_secs(2)) => Some(report),
            () = tokio::time::sleep(Duration::from_millis(20)) => None,
        }
    });
    assert!(cut.is_none(), "the select took the other branch");
    let started = Instant::now();
    let again = loop {
        match init(fast_config(&emulator)) {
            Ok(guard) => break guard,
            Err(InitError::ShuttingDown) if started.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("init after a cancelled shutdown: {e}"),
        }
    };
    record_for(
        &id("agreement_again"),
        &FeatureCode::from_static("again"),
        3,
    );
    let report = again.shutdown_blocking(Duration::from_secs(10));
    assert!(report.is_complete(), "{report}");
    assert_eq!(emulator.total("agreement_again", "again"), 3u64);
}

// Defect 6: idle threads pinned their cached keys, so the bound filled with delivered
// keys and new customers were refused.
#[test]
fn idle_threads_do_not_pin_the_pending_key_bound() {
    let emulator = Emulator::start().expect("emulator");
    let reporter =
        Arc::new(Reporter::start(fast_config(&emulator).max_pending_keys(8)).expect("start"));
    let feature = FeatureCode::from_static("churn");
    let (parked_tx, parked_rx) = std::sync::mpsc::channel();
    let release = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let idle: Vec<_> = (0..4)
        .map(|t| {
            let (reporter, parked, release, feature) = (
                Arc::clone(&reporter),
                parked_tx.clone(),
                Arc::clone(&release),
                feature.clone(),
            );
            std::thread::spawn(move || {
                for k in 0..2 {
                    reporter.record_for(&id(&format!("agreement_idle_{t}_{k}")), &feature, 1);
                }
                parked.send(()).expect("parked");
                let (lock, cv) = &*release;
                let mut go = lock.lock().expect("lock");
                while !*go {
                    go = cv.wait(go).expect("wait");
                }
            })
        })
        .collect();
    for _ in 0..4 {
        parked_rx.recv().expect("parked");
    }
    let flushed = reporter.flush_blocking(Duration::from_secs(10));
    assert_eq!(flushed.waiting, 0, "{flushed:?}");
    // Rounds of new customers, each delivered before the next: the idle threads' eight
    // delivered keys must not keep them out.
    for round in 0..3 {
        for k in 0..8 {
            reporter.record_for(&id(&format!("agreement_new_{round}_{k}")), &feature, 1);
        }
        let flushed = reporter.flush_blocking(Duration::from_secs(10));
        assert_eq!(flushed.waiting, 0, "round {round}: {flushed:?}");
    }
    assert_eq!(
        reporter.stats().refused_overflow,
        0,
        "{:?}",
        reporter.stats()
    );
    assert_eq!(emulator.ledger_sum().whole().expect("whole"), 8 + 24);
    *release.0.lock().expect("lock") = true;
    release.1.notify_all();
    for t in idle {
        t.join().expect("thread");
    }
}

// Defect 7: a panicking hook killed the worker, and all delivery stopped.
#[test]
fn panicking_hooks_do_not_stop_delivery() {
    let emulator = Emulator::builder()
        .known_agreements(["agreement_known"])
        .faults(Faults::none().drop_after_apply(0.5))
        .seed(3)
        .start()
        .expect("emulator");
    let reporter = Reporter::start(
        fast_config(&emulator)
            .delivery(Delivery::AtMostOnce)
            .max_pending_keys(3)
            .on_error(|_| panic!("on_error hook panics"))
            .on_unsent(|_| panic!("on_unsent hook panics")),
    )
    .expect("start");
    let feature = FeatureCode::from_static("panicky");
    for round in 0..5 {
        // Rejected (unknown agreement): on_error runs on the worker, and panics.
        reporter.record_for(&id("agreement_unknown"), &feature, 1);
        // Ambiguous under at-most-once: on_unsent runs on the worker, and panics.
        reporter.record_for(&id("agreement_known"), &feature, round + 1);
        // Past the bound: on_error runs on this thread, and panics.
        for k in 0..3 {
            reporter.record_for(&id(&format!("agreement_over_{k}")), &feature, 1);
        }
        reporter.flush_blocking(Duration::from_secs(5));
    }
    // Delivery goes on after all those panics.
    emulator.set_faults(Faults::none());
    reporter.record_for(&id("agreement_known"), &feature, 100);
    let before = emulator
        .total("agreement_known", "panicky")
        .whole()
        .expect("whole");
    let flushed = reporter.flush_blocking(Duration::from_secs(5));
    assert_eq!(flushed.waiting, 0, "{flushed:?}");
    let after = emulator
        .total("agreement_known", "panicky")
        .whole()
        .expect("whole");
    assert_eq!(after - before, 100, "the worker still delivers");
    let report = reporter.shutdown_blocking(Duration::from_secs(5));
    assert!(report.failure.is_none(), "the worker is alive: {report:?}");
    let s = &report.stats;
    assert!(s.hook_panics >= 10, "{s:?}");
    assert!(s.refused_overflow >= 1, "{s:?}");
    assert_eq!(
        s.recorded,
        s.delivered + s.rejected + s.unsent,
        "nothing lost to the panics: {s:?}"
    );
}

// Defect 7: `requests_per_second(1e-300)` passed validation, then panicked.
#[test]
fn options_out_of_range_are_refused_and_options_at_their_limits_work() {
    use kinde_meter::config::limits;
    let emulator = Emulator::start().expect("emulator");
    let base = || fast_config(&emulator);
    let refused: Vec<(Config, &str)> = vec![
        (base().requests_per_second(1e-300), "requests_per_second"),
        (base().requests_per_second(f64::NAN), "requests_per_second"),
        (base().requests_per_second(1e300), "requests_per_second"),
        (base().flush_interval(Duration::MAX), "flush_interval"),
        (base().shutdown_timeout(Duration::MAX), "shutdown_timeout"),
        (base().coalesce_window(Duration::MAX), "coalesce_window"),
        (base().request_timeout(Duration::MAX), "request_timeout"),
        (base().connect_timeout(Duration::MAX), "connect_timeout"),
        (
            base().backoff(Duration::from_millis(1), Duration::MAX),
            "backoff",
        ),
        (base().max_in_flight(usize::MAX), "max_in_flight"),
        (base().max_pending_keys(usize::MAX), "max_pending_keys"),
    ];
    for (config, option) in refused {
        match Reporter::start(config) {
            Err(InitError::Config(kinde_meter::ConfigError::InvalidOption {
                option: o, ..
            })) => {
                assert_eq!(o, option);
            }
            other => panic!("{option}: expected InvalidOption, got {other:?}"),
        }
    }
    // Both ends spelled out in full, each a configuration that must start.
    let at_limits = [
        base()
            .requests_per_second(limits::REQUESTS_PER_SECOND.0)
            .flush_interval(limits::FLUSH_INTERVAL.0)
            .max_in_flight(limits::MAX_IN_FLIGHT.0)
            .max_pending_keys(limits::MAX_PENDING_KEYS.0)
            .coalesce_window(limits::COALESCE_WINDOW.0)
            .backoff(limits::BACKOFF.0, limits::BACKOFF.0)
            .shutdown_timeout(limits::SHUTDOWN_TIMEOUT.0),
        base()
            .requests_per_second(limits::REQUESTS_PER_SECOND.1)
            .flush_interval(limits::FLUSH_INTERVAL.1)
            .max_in_flight(limits::MAX_IN_FLIGHT.1)
            .max_pending_keys(limits::MAX_PENDING_KEYS.1)
            .coalesce_window(limits::COALESCE_WINDOW.1)
            .backoff(limits::BACKOFF.1, limits::BACKOFF.1)
            .request_timeout(limits::TIMEOUT.1)
            .connect_timeout(limits::TIMEOUT.1),
    ];
    for (i, config) in at_limits.into_iter().enumerate() {
        let reporter = Reporter::start(config).expect("valid at the limits");
        let agreement = id(&format!("agreement_limits_{i}"));
        reporter.record_for(&agreement, &FeatureCode::from_static("limits"), 2);
        let report = reporter.shutdown_blocking(Duration::from_secs(5));
        assert_report_is_exact(&report);
        assert_eq!(
            emulator
                .total(agreement.as_str(), "limits")
                .whole()
                .expect("whole")
                + report.left_value(),
            2,
            "{report:?}"
        );
    }
}

#[meter(feature = "from_tls")]
fn from_tls() {}

// Defect 8: `enter_agreement` or a metered call from a thread-local destructor aborted
// the process.
#[test]
fn metered_calls_work_from_thread_local_destructors() {
    let _turn = serial();
    struct OnExit(std::sync::mpsc::Sender<Option<AgreementId>>);
    impl Drop for OnExit {
        fn drop(&mut self) {
            let _scope = enter_agreement(id("agreement_tls"));
            from_tls();
            record("from_tls", 1);
            let _ = self.0.send(current_agreement());
        }
    }
    thread_local! {
        static ON_EXIT: std::cell::RefCell<Option<OnExit>> = const { std::cell::RefCell::new(None) };
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _scope = enter_agreement(id("agreement_tls"));
        from_tls();
        ON_EXIT.with(|slot| *slot.borrow_mut() = Some(OnExit(tx)));
    })
    .join()
    .expect("the thread exits without aborting the process");
    assert_eq!(
        rx.recv().expect("destructor ran"),
        Some(id("agreement_tls"))
    );
}

#[meter(feature = "in_hook")]
fn metered_in_hook() {}

// Defect 9: hooks ran with the thread scope taken out, so a metered call in a hook was
// unattributed, and recursed into the hook.
#[test]
fn hooks_see_the_callers_scope_and_do_not_recurse() {
    let _turn = serial();
    let emulator = Emulator::start().expect("emulator");
    let calls = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (count, scopes) = (Arc::clone(&calls), Arc::clone(&seen));
    let config = fast_config(&emulator).on_error(move |e: &MeterError| {
        count.fetch_add(1, Relaxed);
        scopes.lock().expect("scopes").push(current_agreement());
        // Unattributed inside the hook when there is no scope: it must not recurse.
        metered_in_hook();
        let _ = e;
    });
    let guard = init(config).expect("init");
    {
        let _scope = enter_agreement(id("agreement_hooked"));
        // An invalid feature code: refused, reported to the hook on this thread.
        record("not a feature", 1);
    }
    // No scope: unattributed, reported; the hook's own unattributed call is not.
    metered_in_hook();
    let report = guard.shutdown_blocking(Duration::from_secs(10));
    assert!(report.is_complete(), "{report}");
    assert_eq!(calls.load(Relaxed), 2, "one call per event, no recursion");
    assert_eq!(
        *seen.lock().expect("scopes"),
        vec![Some(id("agreement_hooked")), None]
    );
    assert_eq!(
        emulator.total("agreement_hooked", "in_hook"),
        1u64,
        "the metered call inside the hook billed the caller's scope"
    );
}

// Found by review: one thread's window sum past `u64::MAX` wrapped to a small number and
// was billed as that, and counters wrapped so the report no longer added up.
#[test]
fn sums_past_u64_max_are_refused_or_saturate_never_wrap() {
    let emulator = Emulator::start().expect("emulator");
    let reporter = Reporter::start(fast_config(&emulator)).expect("start");
    let agreement = id("agreement_huge");
    let feature = FeatureCode::from_static("huge");
    reporter.record_for(&agreement, &feature, u64::MAX);
    reporter.record_for(&agreement, &feature, 2);
    let report = reporter.shutdown_blocking(Duration::from_secs(10));
    assert!(report.is_complete(), "{report}");
    let s = &report.stats;
    assert_eq!(
        s.invalid, 1,
        "the call that would wrap is refused and reported: {s:?}"
    );
    assert_eq!(
        emulator
            .total("agreement_huge", "huge")
            .whole()
            .expect("whole"),
        u128::from(u64::MAX)
    );
    assert_eq!(s.recorded, s.delivered + s.rejected + s.unsent, "{s:?}");
}
