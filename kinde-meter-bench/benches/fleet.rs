//! `cargo bench -p kinde-meter-bench --features fleet --bench fleet`: fleet mode against
//! a local `redis-server` and the emulator, for 1, 4 and 16 replicas over 100 keys, from
//! one run:
//!
//! - the hand-off's cost: one window (one unit for each of 100 keys, then
//!   `flush_blocking` until Redis has every record), per replica;
//! - Kinde requests per window, with fleet mode (one deliverer) and without (each replica
//!   delivering its own window).
//!
//! Needs `redis-server` on the `PATH`; the bench starts its own on 127.0.0.1.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::Criterion;
use kinde_meter::api::{Credentials, Domain};
use kinde_meter::fleet::{Deliverer, Fleet};
use kinde_meter::{AgreementId, Config, FeatureCode, Reporter};
use kinde_meter_emulator::Emulator;

const REPLICAS: [usize; 3] = [1, 4, 16];
const KEYS: usize = 100;
const FEATURE: FeatureCode = FeatureCode::from_static("api_calls");

/// A `redis-server` of the bench's own, killed when dropped.
struct Redis {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Redis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir =
            std::env::temp_dir().join(format!("kinde-meter-bench-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: apt-get install -y redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, dir }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(emulator: &Emulator) -> Config {
    Config::new(
        Domain::parse(&emulator.base_url()).expect("domain"),
        Credentials::client_credentials(emulator.client_id(), emulator.client_secret()),
    )
    .flush_interval(Duration::from_secs(3600))
    .max_in_flight(16)
    .requests_per_second(100_000.0)
}

fn fleet_config(emulator: &Emulator, redis: &Redis, namespace: &str) -> Config {
    config(emulator)
        .fleet(redis.url())
        .fleet_namespace(namespace)
        .fleet_deliverer(false)
        .fleet_gather(Duration::from_secs(2))
}

fn ids() -> Vec<AgreementId> {
    (0..KEYS)
        .map(|i| format!("agreement_{i:04}").parse().expect("id"))
        .collect()
}

/// One window on every replica: one unit per key, then a flush until all is handed
/// off (or, without fleet mode, delivered).
fn window(replicas: &[Reporter], ids: &[AgreementId]) -> Duration {
    let start = Instant::now();
    for reporter in replicas {
        for id in ids {
            reporter.record_for(id, &FEATURE, 1);
        }
        let report = reporter.flush_blocking(Duration::from_secs(30));
        assert_eq!(report.waiting, 0, "{report:?}");
    }
    start.elapsed()
}

fn meter_requests(emulator: &Emulator) -> usize {
    emulator
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/meter_usage"))
        .count()
}

/// Kinde requests for one window of `n` replicas: (with fleet mode, without).
fn requests_per_window(n: usize, redis: &Redis, ids: &[AgreementId]) -> (usize, usize) {
    let emulator = Emulator::start().expect("emulator");
    let config = fleet_config(&emulator, redis, &format!("requests-{n}"));
    let replicas: Vec<Reporter> = (0..n)
        .map(|_| Reporter::start(config.clone()).expect("replica"))
        .collect();
    let deliverer = Deliverer::start(&config).expect("deliverer");
    window(&replicas, ids);
    let fleet = Fleet::new(&config).expect("fleet");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = runtime.block_on(fleet.stats()).expect("stats");
        if s.pending_entries == 0 && s.in_flight == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not delivered: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    deliverer.stop(Duration::from_secs(5));
    let with = meter_requests(&emulator);

    let plain = Emulator::start().expect("emulator");
    let replicas: Vec<Reporter> = (0..n)
        .map(|_| Reporter::start(config_plain(&plain)).expect("replica"))
        .collect();
    window(&replicas, ids);
    (with, meter_requests(&plain))
}

fn config_plain(emulator: &Emulator) -> Config {
    config(emulator)
}

fn main() {
    let redis = Redis::start();
    let ids = ids();
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
        .configure_from_args();
    let emulator = Emulator::start().expect("emulator");
    let mut rows = Vec::new();
    for n in REPLICAS {
        let config = fleet_config(&emulator, &redis, &format!("handoff-{n}"));
        let replicas: Vec<Reporter> = (0..n)
            .map(|_| Reporter::start(config.clone()).expect("replica"))
            .collect();
        window(&replicas, &ids);
        let mut group = criterion.benchmark_group(format!("handoff/{n}_replicas"));
        group.bench_function("window_100_keys", |b| {
            b.iter_custom(|iters| (0..iters).map(|_| window(&replicas, &ids)).sum())
        });
        group.finish();
        let mut samples: Vec<Duration> = (0..20).map(|_| window(&replicas, &ids)).collect();
        samples.sort();
        let per_replica = samples[samples.len() / 2] / n as u32;
        drop(replicas);
        let (with, without) = requests_per_window(n, &redis, &ids);
        rows.push((n, per_replica, with, without));
    }
    criterion.final_summary();
    println!(
        "\n| replicas | hand-off per replica-window, 100 keys (µs) | per record (µs) | Kinde requests per window, fleet | without fleet |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for (n, per_replica, with, without) in rows {
        println!(
            "| {n} | {:.0} | {:.1} | {with} | {without} |",
            per_replica.as_secs_f64() * 1e6,
            per_replica.as_secs_f64() * 1e6 / KEYS as f64
        );
    }
}
