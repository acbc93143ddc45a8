//! Fleet mode in one process: several reporters (the replicas) hand off to a real
//! `redis-server`, deliverers send to the emulator over loopback.

use std::time::{Duration, Instant};

use kinde_meter::api::{AgreementId, FeatureCode};
use kinde_meter::fleet::{Deliverer, Fleet, FleetStats};
use kinde_meter::{Config, Reporter};
use kinde_meter_emulator::{Emulator, Faults};
use kinde_meter_workspace::EmulatorExt;
use kinde_meter_workspace::fleet::{wait_delivered, wait_sending, whole};
use kinde_meter_workspace::redis::{Persistence, RedisServer};

/// How long an entry gathers hand-offs before it may be claimed, in these tests.
const GATHER: Duration = Duration::from_secs(3);

fn fleet_config(emulator: &Emulator, redis: &RedisServer) -> Config {
    emulator
        .config()
        .flush_interval(Duration::from_secs(3600))
        .backoff(Duration::from_millis(10), Duration::from_millis(200))
        .request_timeout(Duration::from_secs(2))
        .fleet(redis.url())
        .fleet_deliverer(false)
        .fleet_lease(Duration::from_secs(4))
        .fleet_gather(GATHER)
}

fn agreements(keys: u64) -> Vec<AgreementId> {
    (0..keys)
        .map(|k| AgreementId::new(format!("agr_{k}")).expect("valid id"))
        .collect()
}

fn feature() -> FeatureCode {
    FeatureCode::new("calls").expect("valid code")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Kinde requests per window, for `replicas` replicas that each record for the same 100
/// keys and hand off one window.
fn requests_per_window(replicas: usize) -> (u64, usize, FleetStats) {
    let emulator = Emulator::start().expect("emulator");
    let redis = RedisServer::start(Persistence::None);
    let config = fleet_config(&emulator, &redis);
    let keys = agreements(100);
    let feature = feature();
    let reporters: Vec<Reporter> = (0..replicas)
        .map(|_| Reporter::start(config.clone()).expect("replica"))
        .collect();
    let mut recorded = 0;
    for (i, reporter) in reporters.iter().enumerate() {
        for (k, agreement) in keys.iter().enumerate() {
            let value = 1 + ((i + k) % 5) as u64;
            reporter.record_for(agreement, &feature, value);
            recorded += value;
        }
    }
    // Delivering from the start: what joins the replicas' windows into one request is
    // the gather time, not a deliverer that comes late.
    let deliverer = Deliverer::start(&config).expect("deliverer");
    let started = Instant::now();
    for reporter in &reporters {
        let report = reporter.flush_blocking(Duration::from_secs(10));
        assert_eq!(report.waiting, 0, "{report:?}");
    }
    assert!(
        started.elapsed() < GATHER,
        "the replicas took {:?} to hand off, more than the gather time: the count would mean nothing",
        started.elapsed()
    );
    let s = wait_delivered(&config, &emulator, Duration::from_secs(30));
    assert!(deliverer.stop(Duration::from_secs(5)));
    for reporter in reporters {
        assert!(
            reporter
                .shutdown_blocking(Duration::from_secs(5))
                .is_complete()
        );
    }
    assert_eq!(
        whole(emulator.ledger_sum()),
        recorded,
        "ledger against recorded"
    );
    (recorded, emulator.counts().accepted, s)
}

#[test]
fn one_request_per_key_and_bucket_whatever_the_number_of_replicas() {
    for replicas in [1, 4, 16] {
        let (recorded, requests, s) = requests_per_window(replicas);
        println!(
            "FIGURES one_request_per_key replicas={replicas} keys=100 recorded={recorded} requests={requests} \
             handoffs={}",
            s.handoffs
        );
        assert_eq!(
            s.handoffs,
            100 * replicas as u64,
            "every replica handed off every key once"
        );
        assert_eq!(
            requests, 100,
            "{replicas} replicas: one request per key, not one per replica"
        );
        assert_eq!(s.delivered_records, 100);
    }
}

/// Faults on every path at once: Kinde drops requests after applying them, answers 503,
/// throttles; the ledger must be what was recorded plus the duplicates the fleet said
/// may happen, exactly.
#[test]
fn conservation_under_kinde_faults_with_two_deliverers() {
    let emulator = Emulator::start().expect("emulator");
    emulator.set_faults(
        Faults::none()
            .drop_after_apply(0.1)
            .status_503(0.1)
            .status_500_after_apply(0.05),
    );
    let redis = RedisServer::start(Persistence::None);
    let config = fleet_config(&emulator, &redis).fleet_gather(Duration::from_millis(50));
    let keys = agreements(40);
    let feature = feature();
    let replicas: Vec<Reporter> = (0..3)
        .map(|_| Reporter::start(config.clone()).expect("replica"))
        .collect();
    let deliverers: Vec<Deliverer> = (0..2)
        .map(|_| Deliverer::start(&config).expect("deliverer"))
        .collect();
    let mut recorded = 0;
    for round in 0..5u64 {
        for (i, reporter) in replicas.iter().enumerate() {
            for (k, agreement) in keys.iter().enumerate() {
                let value = 1 + (round + i as u64 * 3 + k as u64) % 7;
                reporter.record_for(agreement, &feature, value);
                recorded += value;
            }
            assert_eq!(reporter.flush_blocking(Duration::from_secs(10)).waiting, 0);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    emulator.throttle_for(Duration::from_millis(500));
    let s = wait_delivered(&config, &emulator, Duration::from_secs(60));
    for d in deliverers {
        assert!(d.stop(Duration::from_secs(5)));
    }
    let ledger = whole(emulator.ledger_sum());
    let duplicated = ledger - recorded;
    println!(
        "FIGURES kinde_faults recorded={recorded} delivered={} duplicated={duplicated} ambiguous={} lost=0 requests={}",
        s.delivered,
        s.ambiguous,
        emulator.requests().len()
    );
    assert!(ledger >= recorded, "lost {}", recorded - ledger);
    assert_eq!(
        s.delivered, recorded,
        "every unit was delivered once, by the fleet's count"
    );
    assert!(
        duplicated <= s.ambiguous,
        "duplicates {duplicated} beyond what was reported ambiguous {}",
        s.ambiguous
    );
    assert_eq!(s.rejected + s.unsent, 0);
}

/// Starts a deliverer, waits until the fleet has delivered everything, then stops it and
/// shuts `replica` down. Returns the fleet's figures.
fn deliver_and_stop(config: &Config, emulator: &Emulator, replica: Reporter) -> FleetStats {
    let deliverer = Deliverer::start(config).expect("deliverer");
    let s = wait_delivered(config, emulator, Duration::from_secs(30));
    assert!(deliverer.stop(Duration::from_secs(5)));
    assert!(
        replica
            .shutdown_blocking(Duration::from_secs(5))
            .is_complete()
    );
    s
}

/// Redis down: the replica keeps recording, its outbox holds the usage, the episode is
/// reported once (to a hook that panics), and everything is handed off and delivered once
/// Redis is back.
#[test]
fn redis_down_the_replica_holds_usage_and_hands_it_off_when_redis_is_back() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let emulator = Emulator::start().expect("emulator");
    let mut redis = RedisServer::start(Persistence::None);
    let episodes = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&episodes);
    let config = fleet_config(&emulator, &redis)
        .fleet_gather(Duration::from_millis(100))
        .on_error(move |e| {
            if matches!(e, kinde_meter::MeterError::FleetUnavailable { .. }) {
                seen.fetch_add(1, Ordering::SeqCst);
                // A hook that panics must not stop the hand-offs.
                panic!("a hook that panics");
            }
        });
    let replica = Reporter::start(config.clone()).expect("replica");
    let keys = agreements(20);
    let feature = feature();
    redis.kill();
    let mut recorded = 0;
    for round in 0..3u64 {
        for (k, agreement) in keys.iter().enumerate() {
            let value = 1 + (round + k as u64) % 4;
            replica.record_for(agreement, &feature, value);
            recorded += value;
        }
        let report = replica.flush_blocking(Duration::from_millis(300));
        assert!(
            report.waiting > 0,
            "nothing can be handed off while Redis is down: {report:?}"
        );
    }
    assert!(kinde_meter::fleet::handoff_stats().unavailable);
    assert_eq!(
        episodes.load(Ordering::SeqCst),
        1,
        "one report per episode, not one per failed hand-off"
    );
    assert_eq!(
        replica.stats().rejected + replica.stats().unsent,
        0,
        "nothing dropped"
    );
    redis.restart();
    let report = replica.flush_blocking(Duration::from_secs(20));
    assert_eq!(
        report.waiting, 0,
        "handed off once Redis is back: {report:?}"
    );
    let s = deliver_and_stop(&config, &emulator, replica);
    println!(
        "FIGURES redis_down recorded={recorded} delivered={} duplicated={} lost=0 requests={}",
        s.delivered,
        whole(emulator.ledger_sum()) - recorded,
        emulator.counts().accepted
    );
    assert_eq!(whole(emulator.ledger_sum()), recorded);
    assert_eq!(episodes.load(Ordering::SeqCst), 1);
}

/// Hands off one window, restarts Redis (kill -9, then start on the same directory),
/// hands off another, then delivers. Returns (before, after, ledger).
fn across_a_redis_restart(persistence: Persistence) -> (u64, u64, u64) {
    let emulator = Emulator::start().expect("emulator");
    let mut redis = RedisServer::start(persistence);
    let config = fleet_config(&emulator, &redis).fleet_gather(Duration::from_millis(100));
    let replica = Reporter::start(config.clone()).expect("replica");
    let keys = agreements(30);
    let feature = feature();
    let round = |n: u64| {
        let mut recorded = 0;
        for (k, agreement) in keys.iter().enumerate() {
            let value = 1 + (n + k as u64) % 6;
            replica.record_for(agreement, &feature, value);
            recorded += value;
        }
        assert_eq!(replica.flush_blocking(Duration::from_secs(20)).waiting, 0);
        recorded
    };
    let before = round(0);
    redis.restart();
    let after = round(1);
    let s = deliver_and_stop(&config, &emulator, replica);
    let ledger = whole(emulator.ledger_sum());
    println!(
        "FIGURES redis_restart persistence={persistence:?} recorded={} delivered={} duplicated=0 lost={} requests={}",
        before + after,
        s.delivered,
        (before + after).saturating_sub(ledger),
        emulator.counts().accepted
    );
    (before, after, ledger)
}

#[test]
fn a_redis_restart_with_aof_loses_nothing() {
    let (before, after, ledger) = across_a_redis_restart(Persistence::Aof);
    assert_eq!(ledger, before + after);
}

/// The documented limit: Redis without persistence loses what it held when it restarts
/// (here, the first window, handed off and not yet delivered), and nothing else.
#[test]
fn a_redis_restart_without_persistence_loses_what_it_held_and_only_that() {
    let (before, after, ledger) = across_a_redis_restart(Persistence::None);
    assert_eq!(ledger, after, "lost exactly the {before} Redis held");
}

/// Absolute meters are last write wins in the fleet too: two values handed off within
/// one gather reach Kinde as one request with the later value.
#[test]
fn absolute_values_reach_kinde_last_write_wins() {
    let emulator = Emulator::start().expect("emulator");
    let redis = RedisServer::start(Persistence::None);
    let config = fleet_config(&emulator, &redis).fleet_gather(Duration::from_millis(800));
    let replica = Reporter::start(config.clone()).expect("replica");
    let agreement = AgreementId::new("agr_seats").expect("id");
    let seats = FeatureCode::new("seats").expect("code");
    for value in [5, 9, 7] {
        replica.record_for(&agreement, &seats, kinde_meter::Usage::Absolute(value));
        assert_eq!(replica.flush_blocking(Duration::from_secs(10)).waiting, 0);
    }
    let deliverer = Deliverer::start(&config).expect("deliverer");
    wait_delivered(&config, &emulator, Duration::from_secs(30));
    assert!(deliverer.stop(Duration::from_secs(5)));
    let accepted = emulator.accepted();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(emulator.total("agr_seats", "seats").whole(), Some(7));
}

/// Markers of acknowledged hand-offs do not pile up: the replica removes them once the
/// outbox can no longer resend their records (a quarter of the marker time to live here).
#[test]
fn acknowledged_hand_off_markers_are_removed() {
    let emulator = Emulator::start().expect("emulator");
    let redis = RedisServer::start(Persistence::None);
    let config = fleet_config(&emulator, &redis).fleet_marker_ttl(Duration::from_secs(8));
    let replica = Reporter::start(config.clone()).expect("replica");
    let keys = agreements(10);
    let feature = feature();
    let markers = || -> usize {
        let client = redis::Client::open(redis.url()).expect("url");
        let mut c = client.get_connection().expect("connect");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("km:*:h:*")
            .query(&mut c)
            .expect("KEYS");
        keys.len()
    };
    let round = || {
        for agreement in &keys {
            replica.record_for(agreement, &feature, 1);
        }
        assert_eq!(replica.flush_blocking(Duration::from_secs(10)).waiting, 0);
    };
    round();
    assert_eq!(markers(), 10, "one marker per hand-off");
    // Past twice the time a marker is kept (2 s), the next hand-off removes the old ones,
    // well before their time to live (8 s).
    std::thread::sleep(Duration::from_millis(4500));
    round();
    assert_eq!(
        markers(),
        10,
        "the first round's markers were removed; the second's are new"
    );
    assert!(
        replica
            .shutdown_blocking(Duration::from_secs(5))
            .is_complete()
    );
}

/// A record as a replica hands it off, built by hand to choose its stamp.
fn record(meter_type: &str, value: u64, stamp: &str, key: &str) -> kinde_meter::UsageRecord {
    serde_json::from_value(serde_json::json!({
        "agreement": "agr_seats", "feature": "seats", "meter_type": meter_type,
        "value": value, "timestamp": stamp, "idempotency_key": key,
    }))
    .expect("record")
}

/// Hands `record` off on `runtime` (the one the sink's connection was first made on, and
/// lives on, as a reporter's sink lives on its worker's).
fn hand_off(
    runtime: &tokio::runtime::Runtime,
    sink: &kinde_meter::fleet::HandoffSink,
    record: &kinde_meter::UsageRecord,
) -> kinde_meter::SendResult {
    use kinde_meter::Sink;
    runtime.block_on(sink.send(record, Duration::from_secs(5)))
}

/// An absolute value older than the one in flight, or than the one delivered, is
/// superseded: it is never sent, and never turns into a request with value 0.
#[test]
fn an_older_absolute_value_never_overwrites_a_newer_one() {
    let emulator = Emulator::start().expect("emulator");
    emulator.set_faults(Faults::none().latency(Duration::from_millis(800)));
    let redis = RedisServer::start(Persistence::None);
    let config = fleet_config(&emulator, &redis).fleet_gather(Duration::from_millis(10));
    let sink = kinde_meter::fleet::HandoffSink::new(&config).expect("sink");
    let rt = runtime();
    let deliverer = Deliverer::start(&config).expect("deliverer");
    hand_off(
        &rt,
        &sink,
        &record("absolute", 10, "2026-01-01T00:01:40Z", "k-newer"),
    )
    .expect("hand-off");
    wait_sending(&emulator, Duration::from_secs(10));
    // A replica late with an older window, while the newer value is in flight.
    hand_off(
        &rt,
        &sink,
        &record("absolute", 7, "2026-01-01T00:01:35Z", "k-older"),
    )
    .expect("hand-off");
    wait_delivered(&config, &emulator, Duration::from_secs(10));
    // And once more after it was delivered (its entry is gone by then).
    hand_off(
        &rt,
        &sink,
        &record("absolute", 5, "2026-01-01T00:01:30Z", "k-oldest"),
    )
    .expect("hand-off");
    std::thread::sleep(Duration::from_millis(300));
    wait_delivered(&config, &emulator, Duration::from_secs(10));
    assert!(deliverer.stop(Duration::from_secs(5)));
    let values: Vec<String> = emulator
        .accepted()
        .iter()
        .map(|a| format!("{a:?}"))
        .collect();
    assert_eq!(
        emulator.accepted().len(),
        1,
        "only the newest value was sent: {values:?}"
    );
    assert_eq!(emulator.total("agr_seats", "seats").whole(), Some(10));
}

/// A hand-off that would take an entry's sum past 2⁶³ is refused as such (the record is
/// rejected and reported), and leaves the entry as it was.
#[test]
fn a_sum_past_the_fleets_limit_is_refused_and_changes_nothing() {
    let emulator = Emulator::start().expect("emulator");
    let redis = RedisServer::start(Persistence::None);
    let config = fleet_config(&emulator, &redis);
    let sink = kinde_meter::fleet::HandoffSink::new(&config).expect("sink");
    let rt = runtime();
    let big = 5_000_000_000_000_000_000;
    hand_off(
        &rt,
        &sink,
        &record("delta", big, "2026-01-01T00:00:00Z", "k-1"),
    )
    .expect("first");
    let e = hand_off(
        &rt,
        &sink,
        &record("delta", big, "2026-01-01T00:00:01Z", "k-2"),
    )
    .expect_err("past 2^63");
    assert_eq!(
        e.disposition(),
        kinde_meter::api::Disposition::Rejected,
        "{e}"
    );
    assert!(e.to_string().contains("2^63"), "{e}");
    let pending = rt
        .block_on(Fleet::new(&config).expect("fleet").pending(10))
        .expect("pending");
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0].pending, big,
        "the refused hand-off added nothing"
    );
    // Refused, not applied: the same record is refused again rather than taken as done.
    let again = hand_off(
        &rt,
        &sink,
        &record("delta", big, "2026-01-01T00:00:01Z", "k-2"),
    )
    .expect_err("again");
    assert_eq!(again.disposition(), kinde_meter::api::Disposition::Rejected);
}

/// The fleet's figures reach the `metrics` facade under `kinde_meter_fleet_*`.
#[test]
fn fleet_figures_export_through_the_metrics_facade() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let emulator = Emulator::start().expect("emulator");
    let redis = RedisServer::start(Persistence::None);
    let config = fleet_config(&emulator, &redis).fleet_gather(Duration::from_millis(10));
    let replica = Reporter::start(config.clone()).expect("replica");
    for agreement in agreements(3) {
        replica.record_for(&agreement, &feature(), 4);
    }
    assert_eq!(replica.flush_blocking(Duration::from_secs(10)).waiting, 0);
    let deliverer = Deliverer::start(&config).expect("deliverer");
    let s = wait_delivered(&config, &emulator, Duration::from_secs(10));
    assert!(deliverer.stop(Duration::from_secs(5)));
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || s.export());
    let figures: std::collections::HashMap<String, DebugValue> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key.key().name().to_owned(), value))
        .collect();
    assert_eq!(
        figures.get("kinde_meter_fleet_delivered"),
        Some(&DebugValue::Counter(12)),
        "{figures:?}"
    );
    assert_eq!(
        figures.get("kinde_meter_fleet_handoffs"),
        Some(&DebugValue::Counter(3))
    );
    assert_eq!(
        figures.get("kinde_meter_fleet_pending_entries"),
        Some(&DebugValue::Gauge(0.0.into()))
    );
    assert!(
        replica
            .shutdown_blocking(Duration::from_secs(5))
            .is_complete()
    );
}
