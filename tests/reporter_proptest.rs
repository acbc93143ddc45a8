//! Random interleavings of recording (from several threads), flushes, pauses,
//! server-side faults and outages, end to end against the emulator. The faults are ones
//! the emulator answers without applying; an outage, though, can cut a connection after
//! the request was applied, which the client rightly counts as ambiguous and resends. So
//! the ledger ends holding everything recorded, plus at most what was counted ambiguous
//! (DESIGN's bound for at-least-once), and exactly what was recorded when nothing was.
//! The outbox's own property test covers far more interleavings without HTTP.

use std::time::Duration;

use kinde_meter::{FeatureCode, Reporter};
use kinde_meter_emulator::{Emulator, Faults};
use kinde_meter_workspace::reporter::{Expected, agreements, fast_config};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Record {
        threads: usize,
        calls: usize,
        value: u64,
    },
    Flush,
    Pause {
        millis: u64,
    },
    Faults(u8),
    Outage {
        millis: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..4usize, 1..300usize, 1..20u64).prop_map(|(threads, calls, value)| Op::Record { threads, calls, value }),
        1 => Just(Op::Flush),
        2 => (0..250u64).prop_map(|millis| Op::Pause { millis }),
        2 => (0..4u8).prop_map(Op::Faults),
        1 => (100..600u64).prop_map(|millis| Op::Outage { millis }),
    ]
}

fn faults(profile: u8) -> Faults {
    match profile {
        0 => Faults::default(),
        1 => Faults::none().status_503(0.4),
        2 => Faults::none().status_500(0.2).status_502(0.2),
        _ => Faults::none()
            .drop_before_apply(0.2)
            .latency(Duration::from_millis(30)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn interleavings_of_record_flush_and_faults_conserve_usage(
        ops in proptest::collection::vec(op(), 1..25),
        seed in any::<u64>(),
    ) {
        let emulator = Emulator::builder().seed(seed).start().expect("emulator");
        let reporter = Reporter::start(fast_config(&emulator)).expect("reporter");
        let ids = agreements(6);
        let features = [FeatureCode::from_static("a"), FeatureCode::from_static("b")];
        let mut expected = Expected::default();
        for op in ops {
            match op {
                Op::Record { threads, calls, value } => {
                    let parts: Vec<Expected> = std::thread::scope(|scope| {
                        let handles: Vec<_> = (0..threads)
                            .map(|t| {
                                let (ids, features, reporter) = (&ids, &features, &reporter);
                                scope.spawn(move || {
                                    let mut part = Expected::default();
                                    for i in 0..calls {
                                        let (a, f) = (&ids[(i + t) % ids.len()], &features[i % 2]);
                                        reporter.record_for(a, f, value);
                                        part.add(a, f, value);
                                    }
                                    part
                                })
                            })
                            .collect();
                        handles.into_iter().map(|h| h.join().expect("thread")).collect()
                    });
                    parts.into_iter().for_each(|p| expected.merge(p));
                }
                Op::Flush => {
                    reporter.flush_blocking(Duration::from_millis(300));
                }
                Op::Pause { millis } => std::thread::sleep(Duration::from_millis(millis)),
                Op::Faults(profile) => emulator.set_faults(faults(profile)),
                Op::Outage { millis } => emulator.down_for(Duration::from_millis(millis)),
            }
        }
        emulator.set_faults(Faults::default());
        prop_assert!(kinde_meter_workspace::reporter::wait_until(Duration::from_secs(5), || emulator.is_up()));
        let report = reporter.shutdown_blocking(Duration::from_secs(20));
        prop_assert!(report.is_complete(), "{}", report);
        expected.assert_ledger_within(&emulator, report.stats.ambiguous);
        prop_assert_eq!(u128::from(report.stats.delivered), expected.sum());
    }
}
