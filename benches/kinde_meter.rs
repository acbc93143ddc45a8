//! `cargo bench --bench kinde_meter`: the per-call cost of metering, beside the `metrics`
//! crate, on 1 and 2 threads (same key), and the requests sent for 10⁶ calls. Prints a
//! comparison table at the end; README quotes it.
//!
//! Every benchmark uses `iter_custom`: each thread times its own loop after a barrier,
//! so both threads of a 2-thread case really run at once, and the time reported is the
//! time per call as seen by a calling thread.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use criterion::Criterion;
use kinde_meter::{AgreementId, meter, with_agreement};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};

/// ns per call, every sample of every benchmark, for the summary table.
static SAMPLES: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

fn keep(name: &str, iters: u64, elapsed: Duration) {
    let per_call = elapsed.as_nanos() as f64 / iters as f64;
    SAMPLES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(name.to_owned())
        .or_default()
        .push(per_call);
}

/// Runs `body(iters)` on `threads` threads at once; returns the mean of their times.
/// `setup` runs on each thread before the barrier, untimed, and hands `body` its state.
fn on_threads<S>(
    threads: usize,
    iters: u64,
    setup: impl Fn() -> S + Sync,
    body: impl Fn(&S, u64) -> Duration + Sync,
) -> Duration {
    let barrier = Barrier::new(threads);
    let total: Duration = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let state = setup();
                    barrier.wait();
                    body(&state, iters)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .sum()
    });
    total / threads as u32
}

fn agreement() -> AgreementId {
    "agreement_0195ac80a14c2ca2cec97d026d864de0"
        .parse()
        .expect("valid id")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

/// A `metrics` recorder backed by `metrics-util`'s registry with atomic storage, as
/// exporters such as the Prometheus one are.
struct AtomicRecorder(Registry<Key, AtomicStorage>);

impl Recorder for AtomicRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0
            .get_or_create_counter(key, |c| Counter::from_arc(Arc::clone(c)))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0
            .get_or_create_gauge(key, |g| Gauge::from_arc(Arc::clone(g)))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0
            .get_or_create_histogram(key, |h| Histogram::from_arc(Arc::clone(h)))
    }
}

tokio::task_local! {
    static FLOOR_SCOPE: u64;
}
thread_local! {
    static FLOOR_CELL: Cell<u64> = const { Cell::new(0) };
}

#[meter(feature = "bench_meter")]
#[inline(never)]
fn metered(x: u64) -> u64 {
    black_box(x)
}

#[inline(never)]
fn plain(x: u64) -> u64 {
    black_box(x)
}

/// A loop body run `iters` times inside whatever scope it needs; returns the time taken.
type Body = fn(u64) -> Duration;

/// Each case: a name and its loop.
fn cases() -> Vec<(&'static str, Body)> {
    vec![
        ("floor: task-local read + thread-local add", |iters| {
            runtime().block_on(FLOOR_SCOPE.scope(1, async move {
                let start = Instant::now();
                for _ in 0..iters {
                    FLOOR_SCOPE.with(|v| FLOOR_CELL.with(|c| c.set(c.get() + *v)));
                }
                start.elapsed()
            }))
        }),
        ("kinde_meter::record, task-local agreement", |iters| {
            runtime().block_on(with_agreement(agreement(), async move {
                let start = Instant::now();
                for _ in 0..iters {
                    kinde_meter::record(black_box("bench_record"), 1);
                }
                start.elapsed()
            }))
        }),
        ("#[meter] fn, task-local agreement", |iters| {
            runtime().block_on(with_agreement(agreement(), async move {
                let start = Instant::now();
                for i in 0..iters {
                    black_box(metered(i));
                }
                start.elapsed()
            }))
        }),
        ("same fn without #[meter]", |iters| {
            let start = Instant::now();
            for i in 0..iters {
                black_box(plain(i));
            }
            start.elapsed()
        }),
        ("metrics: static Counter handle increment", |iters| {
            let counter = metrics::counter!("bench_static");
            let start = Instant::now();
            for _ in 0..iters {
                counter.increment(1);
            }
            start.elapsed()
        }),
        ("metrics: counter! with a runtime label", |iters| {
            let customer: Arc<str> = Arc::from(agreement().as_str());
            let start = Instant::now();
            for _ in 0..iters {
                metrics::counter!("bench_labeled", "customer" => SharedString::from(Arc::clone(&customer))).increment(1);
            }
            start.elapsed()
        }),
    ]
}

fn hot_path(c: &mut Criterion) {
    for threads in [1usize, 2] {
        let mut group = c.benchmark_group(format!(
            "{threads} thread{}",
            if threads == 1 { "" } else { "s" }
        ));
        for (name, body) in cases() {
            let label = format!("{name} [{threads}t]");
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let elapsed = on_threads(threads, iters, || (), |(), iters| body(iters));
                    keep(&label, iters, elapsed);
                    elapsed
                })
            });
        }
        group.finish();
    }
}

/// Requests the reporter sends for 10⁶ calls over 100 keys in one window, against the
/// local emulator. A count, not a time: criterion is not involved.
fn requests_per_million_calls() -> (u64, u64) {
    use kinde_meter::{FeatureCode, Reporter};
    use kinde_meter_emulator::Emulator;
    use kinde_meter_workspace::EmulatorExt;

    let emulator = Emulator::start().expect("emulator");
    let reporter = Reporter::start(emulator.config().flush_interval(Duration::from_secs(3600)))
        .expect("reporter");
    let feature = FeatureCode::from_static("bench_delivery");
    let agreements: Vec<AgreementId> = (0..100)
        .map(|i| format!("agreement_{i:03}").parse().expect("id"))
        .collect();
    for i in 0..1_000_000usize {
        reporter.record_for(&agreements[i % 100], &feature, 1);
    }
    let report = reporter.shutdown_blocking(Duration::from_secs(30));
    assert!(report.is_complete(), "{report}");
    (
        emulator.counts().accepted as u64,
        emulator.ledger_sum().whole().map_or(0, |v| v as u64),
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn print_table(requests: (u64, u64)) {
    let mut samples = SAMPLES.lock().unwrap_or_else(|e| e.into_inner());
    let medians: BTreeMap<String, f64> = samples
        .iter_mut()
        .map(|(k, v)| (k.clone(), median(v)))
        .collect();
    let get = |name: &str, t: usize| {
        medians
            .get(&format!("{name} [{t}t]"))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let handle = "metrics: static Counter handle increment";
    let labeled = "metrics: counter! with a runtime label";
    println!(
        "\nPer-call cost, median ns per call as seen by each calling thread (2 threads: same key, at once)\n"
    );
    println!("| case | 1 thread | 2 threads | vs static handle (1t / 2t) |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, _) in cases() {
        let (one, two) = (get(name, 1), get(name, 2));
        println!(
            "| {name} | {one:.1} | {two:.1} | {:.2}× / {:.2}× |",
            one / get(handle, 1),
            two / get(handle, 2)
        );
    }
    let record = "kinde_meter::record, task-local agreement";
    println!(
        "\nrecord vs counter! with a runtime label: {:.1}× cheaper (1 thread), {:.1}× (2 threads)",
        get(labeled, 1) / get(record, 1),
        get(labeled, 2) / get(record, 2)
    );
    println!(
        "#[meter] overhead over the plain fn: {:.1} ns (1 thread), {:.1} ns (2 threads); record alone: {:.1} / {:.1} ns",
        get("#[meter] fn, task-local agreement", 1) - get("same fn without #[meter]", 1),
        get("#[meter] fn, task-local agreement", 2) - get("same fn without #[meter]", 2),
        get(record, 1),
        get(record, 2)
    );
    println!(
        "\nDelivery: 10^6 calls over 100 keys in one window -> {} requests, {} units in the emulator's ledger",
        requests.0, requests.1
    );
}

fn main() {
    metrics::set_global_recorder(AtomicRecorder(Registry::atomic())).expect("recorder");
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args();
    hot_path(&mut criterion);
    criterion.final_summary();
    static REQUESTS: OnceLock<(u64, u64)> = OnceLock::new();
    let requests = *REQUESTS.get_or_init(requests_per_million_calls);
    print_table(requests);
}
