//! The global reporter (`init`, `record`, `record_for`, `stats`) from the ways an
//! application runs: plain `main` without a runtime, many OS threads, tokio runtimes.
//!
//! The global reporter is one per process, so these tests take turns (`serial()`) and
//! each uses agreement ids of its own.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kinde_meter::{
    AgreementId, FeatureCode, InitError, MeterError, enter_agreement, init, record, record_for,
    stats, with_agreement,
};
use kinde_meter_emulator::Emulator;
use kinde_meter_workspace::reporter::fast_config;

fn serial() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn id(s: &str) -> AgreementId {
    s.parse().expect("valid id")
}

#[test]
fn usage_recorded_before_init_is_delivered_once_it_starts() {
    let _turn = serial();
    {
        let _scope = enter_agreement(id("agreement_early"));
        record("early_feature", 5);
        record("early_feature", 2);
    }
    let emulator = Emulator::start().expect("emulator");
    let guard = init(fast_config(&emulator)).expect("init");
    let report = guard.shutdown_blocking(Duration::from_secs(10));
    assert!(report.is_complete(), "{report}");
    assert_eq!(emulator.total("agreement_early", "early_feature"), 7u64);
}

#[test]
fn a_second_init_is_an_error_and_init_works_again_after_shutdown() {
    let _turn = serial();
    let emulator = Emulator::start().expect("emulator");
    let guard = init(fast_config(&emulator)).expect("first init");
    let second = init(fast_config(&emulator));
    match second {
        Err(e @ InitError::AlreadyInitialized) => {
            assert!(e.to_string().contains("keep the guard"), "{e}");
        }
        other => panic!("expected AlreadyInitialized, got {other:?}"),
    }
    drop(guard);
    let again = init(fast_config(&emulator)).expect("init after the first guard dropped");
    record_for(&id("agreement_again"), &FeatureCode::from_static("f"), 1);
    let report = again.shutdown_blocking(Duration::from_secs(10));
    assert!(report.is_complete(), "{report}");
    assert_eq!(emulator.total("agreement_again", "f"), 1u64);
}

#[test]
fn plain_threads_without_a_runtime() {
    let _turn = serial();
    let emulator = Emulator::start().expect("emulator");
    let guard = init(fast_config(&emulator)).expect("init");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let _scope = enter_agreement(id(&format!("agreement_thread_{}", t % 2)));
                for _ in 0..10_000 {
                    record("thread_calls", 1);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let report = guard.shutdown_blocking(Duration::from_secs(10));
    assert!(report.is_complete(), "{report}");
    assert_eq!(
        emulator.total("agreement_thread_0", "thread_calls"),
        40_000u64
    );
    assert_eq!(
        emulator.total("agreement_thread_1", "thread_calls"),
        40_000u64
    );
}

#[test]
fn tasks_on_a_multi_thread_runtime_bill_their_own_agreement() {
    let _turn = serial();
    let emulator = Emulator::start().expect("emulator");
    let guard = init(fast_config(&emulator)).expect("init");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..6 {
            tasks.spawn(with_agreement(
                id(&format!("agreement_task_{t}")),
                async move {
                    for i in 0..300 {
                        record("task_calls", 1);
                        if i % 10 == 0 {
                            // Move between worker threads: the scope must follow the task.
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                },
            ));
        }
        tasks.join_all().await;
    });
    drop(runtime);
    let report = guard.shutdown_blocking(Duration::from_secs(10));
    assert!(report.is_complete(), "{report}");
    for t in 0..6 {
        assert_eq!(
            emulator.total(&format!("agreement_task_{t}"), "task_calls"),
            300u64
        );
    }
}

#[test]
fn a_current_thread_runtime_main() {
    let _turn = serial();
    let emulator = Emulator::start().expect("emulator");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let guard = init(fast_config(&emulator)).expect("init");
        with_agreement(id("agreement_ct_main"), async {
            for _ in 0..50 {
                record("ct_calls", 2);
                tokio::task::yield_now().await;
            }
        })
        .await;
        let report = guard.shutdown(Duration::from_secs(10)).await;
        assert!(report.is_complete(), "{report}");
    });
    assert_eq!(emulator.total("agreement_ct_main", "ct_calls"), 100u64);
}

#[test]
fn usage_without_an_agreement_is_counted_reported_and_never_sent() {
    let _turn = serial();
    let emulator = Emulator::start().expect("emulator");
    let seen: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let hook = Arc::clone(&seen);
    let config = fast_config(&emulator).on_error(move |e| {
        if let MeterError::Unattributed { feature, value } = e {
            hook.lock()
                .expect("hook")
                .push((feature.to_string(), *value));
        }
    });
    let guard = init(config).expect("init");
    let before = stats().unattributed;
    record("orphan_feature", 3);
    record("orphan_feature", 4);
    assert_eq!(stats().unattributed - before, 7);
    assert_eq!(
        *seen.lock().expect("hook"),
        [
            ("orphan_feature".to_owned(), 3),
            ("orphan_feature".to_owned(), 4)
        ]
    );
    let report = guard.shutdown_blocking(Duration::from_secs(10));
    assert!(report.is_complete(), "{report}");
    assert!(
        emulator
            .accepted()
            .iter()
            .all(|a| a.feature != "orphan_feature"),
        "never sent to a guessed agreement"
    );
}

#[test]
fn invalid_feature_codes_are_refused_and_reported() {
    let _turn = serial();
    let emulator = Emulator::start().expect("emulator");
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let hook = Arc::clone(&seen);
    let config = fast_config(&emulator).on_error(move |e| {
        if let MeterError::Invalid { reason, .. } = e {
            hook.lock().expect("hook").push(reason.clone());
        }
    });
    let guard = init(config).expect("init");
    let before = stats().invalid;
    {
        let _scope = enter_agreement(id("agreement_invalid"));
        record("not a feature", 1);
    }
    assert_eq!(stats().invalid - before, 1);
    let reasons = seen.lock().expect("hook").clone();
    assert_eq!(reasons.len(), 1);
    assert!(reasons[0].contains("feature code"), "{reasons:?}");
    let report = guard.shutdown_blocking(Duration::from_secs(10));
    assert!(report.is_complete(), "{report}");
    assert!(emulator.accepted().is_empty());
}
