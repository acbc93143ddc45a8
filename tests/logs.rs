//! What the reporter logs: warnings once per feature or per failure episode, never one
//! per call or per failed request.

use std::time::Duration;

use kinde_meter::{AgreementId, FeatureCode, Reporter, record};
use kinde_meter_emulator::Emulator;
use kinde_meter_workspace::logs;
use kinde_meter_workspace::reporter::{fast_config, wait_until};

#[test]
fn usage_without_an_agreement_warns_once_per_feature() {
    logs::recorded();
    for _ in 0..100 {
        record("log_orphan_a", 1);
        record("log_orphan_b", 1);
    }
    for feature in ["log_orphan_a", "log_orphan_b"] {
        let warnings = logs::count(&["WARN kinde_meter", "no customer agreement", feature]);
        assert_eq!(warnings, 1, "{feature}: {:?}", logs::recorded());
    }
}

#[test]
fn a_delivery_failure_warns_once_per_episode() {
    logs::recorded();
    let emulator = Emulator::start().expect("emulator");
    let reporter = Reporter::start(fast_config(&emulator)).expect("reporter");
    let agreement: AgreementId = "agreement_logs".parse().expect("id");
    let feature = FeatureCode::from_static("log_episodes");
    let failing = || logs::count(&["WARN kinde_meter", "delivery to Kinde is failing"]);
    let recovered = || logs::count(&["INFO kinde_meter", "delivery to Kinde recovered"]);

    for episode in 1..=2 {
        emulator.go_down();
        reporter.record_for(&agreement, &feature, 1);
        // Many attempts fail during the outage...
        assert!(wait_until(Duration::from_secs(5), || reporter
            .stats()
            .retried
            >= 3 * episode));
        // ...and the episode is logged once.
        assert_eq!(failing(), episode as usize);
        emulator.come_up().expect("up");
        assert!(wait_until(Duration::from_secs(5), || recovered() == episode as usize));
        assert_eq!(failing(), episode as usize);
    }
    let report = reporter.shutdown_blocking(Duration::from_secs(10));
    assert!(report.is_complete(), "{report}");
    assert_eq!(emulator.total("agreement_logs", "log_episodes"), 2u64);
}

#[test]
fn a_thread_scope_held_across_await_is_reported_once() {
    logs::recorded();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let holder = tokio::task::spawn_local(async {
            let _scope = kinde_meter::enter_agreement("agreement_holder".parse().expect("id"));
            tokio::task::yield_now().await;
        });
        let others: Vec<_> = (0..10)
            .map(|_| tokio::task::spawn_local(async { kinde_meter::current_agreement() }))
            .collect();
        for other in others {
            assert_eq!(other.await.expect("task"), None, "not the holder's scope");
        }
        holder.await.expect("holder");
    });
    let warnings = logs::count(&["WARN kinde_meter", "held across an `.await`"]);
    assert_eq!(warnings, 1, "{:?}", logs::recorded());
}
