//! `cargo bench -p kinde-meter-bench --bench hot_path`: the per-call cost of metering as a
//! matrix (1 to 100,000 agreements × 1 and 2 threads × call and request patterns), beside
//! the `metrics` crate, built without cargo features. Prints the README's table at the end,
//! from this one run.
//!
//! Every case runs on long-lived bench threads (so caches stay warm between samples, as a
//! server's worker threads do), each timing its own loop after a barrier: the 2-thread
//! figures are two threads recording at once, as each of them sees it. Round robin: call
//! `i` uses agreement `i % n`. Each thread parses its own ids, as requests do, so no two
//! threads share an id's reference count.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::Criterion;
use kinde_meter::api::{Credentials, Domain};
use kinde_meter::{AgreementId, Config, FeatureCode, enter_agreement, meter, with_agreement};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};

/// Agreement counts of the matrix.
const AGREEMENTS: [usize; 5] = [1, 100, 1_000, 10_000, 100_000];
const THREADS: [usize; 2] = [1, 2];

#[meter(feature = "search")]
#[inline(never)]
fn search(x: u64) -> u64 {
    black_box(x)
}

#[meter(feature = "export")]
#[inline(never)]
fn export(x: u64) -> u64 {
    black_box(x)
}

#[meter(feature = "api_calls")]
#[inline(never)]
fn api_call(x: u64) -> u64 {
    black_box(x)
}

#[inline(never)]
fn plain(x: u64) -> u64 {
    black_box(x)
}

/// One request's billable work: three metered calls, three features.
#[inline(always)]
fn three_calls(i: u64) {
    black_box(search(i));
    black_box(export(i));
    black_box(api_call(i));
}

static RECORD_FOR: FeatureCode = FeatureCode::from_static("record_for");

thread_local! {
    // This thread's ids, parsed once per agreement count.
    static IDS: RefCell<HashMap<usize, Rc<Vec<AgreementId>>>> = RefCell::new(HashMap::new());
    static LABELS: RefCell<HashMap<usize, Rc<Vec<SharedString>>>> = RefCell::new(HashMap::new());
}

fn id_text(i: usize) -> String {
    format!("agreement_{i:032x}")
}

fn ids(n: usize) -> Rc<Vec<AgreementId>> {
    IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        Rc::clone(ids.entry(n).or_insert_with(|| {
            Rc::new(
                (0..n)
                    .map(|i| id_text(i).parse().expect("valid id"))
                    .collect(),
            )
        }))
    })
}

fn labels(n: usize) -> Rc<Vec<SharedString>> {
    LABELS.with(|labels| {
        let mut labels = labels.borrow_mut();
        Rc::clone(labels.entry(n).or_insert_with(|| {
            Rc::new(
                (0..n)
                    .map(|i| SharedString::from(Arc::<str>::from(id_text(i))))
                    .collect(),
            )
        }))
    })
}

/// What one case does on a bench thread: `iters` operations over `n` agreements,
/// returning the time taken. Each case warms up (one untimed pass over its agreements),
/// then waits at `ready` for the other bench threads, then times.
type Body = fn(n: usize, iters: u64, ready: &Barrier) -> Duration;

struct Case {
    name: &'static str,
    /// What one iteration is.
    unit: &'static str,
    /// Whether the case depends on the agreement count.
    per_agreement_count: bool,
    body: Body,
}

thread_local! {
    // The case this bench thread is running (set by `Pool::run`).
    static CASE: std::cell::Cell<&'static str> = const { std::cell::Cell::new("") };
    // Per case and agreement count on this thread: where its round robin stands. Absent
    // until the case has warmed up.
    static CURSORS: RefCell<HashMap<(&'static str, usize), usize>> = RefCell::new(HashMap::new());
}

/// Calls `op` `iters` times with `from, from + 1, .., n - 1, 0, 1, ..` (no division in the
/// loop); returns where it stopped.
#[inline(always)]
fn round_robin(n: usize, iters: u64, from: usize, mut op: impl FnMut(usize)) -> usize {
    let mut i = from;
    for _ in 0..iters {
        op(i);
        i += 1;
        if i == n {
            i = 0;
        }
    }
    i
}

/// The first time this thread runs this case for `n`, one untimed pass over the `n` agreements, as a server's caches warm up once. Then, once every
/// bench thread is ready, `iters` timed operations round robin, going on from where the
/// last sample stopped, so that every agreement keeps being used even when a sample is
/// shorter than a round.
fn timed_round_robin<F: FnMut(usize)>(
    n: usize,
    iters: u64,
    ready: &Barrier,
    mut op: F,
) -> Duration {
    let key = (CASE.with(std::cell::Cell::get), n);
    let from = match CURSORS.with(|c| c.borrow().get(&key).copied()) {
        Some(from) => from,
        None => {
            (0..n).for_each(&mut op);
            0
        }
    };
    ready.wait();
    let start = Instant::now();
    let to = round_robin(n, iters, from, op);
    let elapsed = start.elapsed();
    CURSORS.with(|c| c.borrow_mut().insert(key, to));
    elapsed
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "plain fn (no metering)",
            unit: "call",
            per_agreement_count: false,
            body: |_, iters, ready| {
                ready.wait();
                let start = Instant::now();
                for i in 0..iters {
                    black_box(plain(i));
                }
                start.elapsed()
            },
        },
        Case {
            name: "metrics: static handle increment(1)",
            unit: "call",
            per_agreement_count: false,
            body: |_, iters, ready| {
                let counter = metrics::counter!("bench_static");
                counter.increment(1);
                ready.wait();
                let start = Instant::now();
                for _ in 0..iters {
                    counter.increment(1);
                }
                start.elapsed()
            },
        },
        Case {
            name: "#[meter] fn, task scope, one key",
            unit: "call",
            per_agreement_count: false,
            body: |_, iters, ready| {
                let id = ids(1)[0].clone();
                poll_once(with_agreement(id, async move {
                    search(0);
                    ready.wait();
                    let start = Instant::now();
                    for i in 0..iters {
                        black_box(search(i));
                    }
                    start.elapsed()
                }))
            },
        },
        Case {
            name: "metrics: counter! with a customer label, round robin",
            unit: "call",
            per_agreement_count: true,
            body: |n, iters, ready| {
                let labels = labels(n);
                let count = |i: usize| {
                    metrics::counter!("bench_labeled", "customer" => labels[i].clone()).increment(1)
                };
                timed_round_robin(n, iters, ready, count)
            },
        },
        Case {
            name: "record_for, round robin",
            unit: "call",
            per_agreement_count: true,
            body: |n, iters, ready| {
                let ids = ids(n);
                let record = |i: usize| kinde_meter::record_for(&ids[i], &RECORD_FOR, 1);
                timed_round_robin(n, iters, ready, record)
            },
        },
        Case {
            name: "request: enter_agreement + 3 #[meter] calls",
            unit: "request",
            per_agreement_count: true,
            body: |n, iters, ready| {
                let ids = ids(n);
                let request = |i: usize| {
                    let _scope = enter_agreement(ids[i].clone());
                    three_calls(i as u64);
                };
                timed_round_robin(n, iters, ready, request)
            },
        },
        Case {
            name: "request: with_agreement poll + 3 #[meter] calls",
            unit: "request",
            per_agreement_count: true,
            body: |n, iters, ready| {
                let ids = ids(n);
                let request = |i: usize| {
                    poll_once(with_agreement(ids[i].clone(), async move {
                        three_calls(i as u64);
                    }))
                };
                timed_round_robin(n, iters, ready, request)
            },
        },
    ]
}

/// Polls a future that completes in one poll, as an executor would (no runtime needed).
fn poll_once<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => unreachable!("bench futures complete in one poll"),
    }
}

/// Long-lived bench threads that run one job each at a time.
struct Pool {
    jobs: Vec<mpsc::Sender<Box<dyn FnOnce() -> Duration + Send>>>,
    done: mpsc::Receiver<Duration>,
    _threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn new(threads: usize) -> Self {
        let (done_tx, done) = mpsc::channel();
        let mut jobs = Vec::new();
        let mut handles = Vec::new();
        for t in 0..threads {
            let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() -> Duration + Send>>();
            let done_tx = done_tx.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("bench-{t}"))
                    .spawn(move || {
                        for job in rx {
                            if done_tx.send(job()).is_err() {
                                return;
                            }
                        }
                    })
                    .expect("bench thread"),
            );
            jobs.push(tx);
        }
        Self {
            jobs,
            done,
            _threads: handles,
        }
    }

    /// Runs `case` for `n` agreements on the first `threads` threads at once; the mean of
    /// their times.
    fn run(&self, threads: usize, case: &Case, n: usize, iters: u64) -> Duration {
        let (name, body) = (case.name, case.body);
        let barrier = Arc::new(Barrier::new(threads));
        for job in &self.jobs[..threads] {
            let barrier = Arc::clone(&barrier);
            job.send(Box::new(move || {
                CASE.with(|c| c.set(name));
                body(n, iters, &barrier)
            }))
            .expect("bench thread alive");
        }
        let total: Duration = (0..threads)
            .map(|_| self.done.recv().expect("bench thread alive"))
            .sum();
        total / threads as u32
    }
}

/// ns per operation, every sample of every benchmark, for the summary table.
static SAMPLES: Mutex<BTreeMap<(String, usize, usize), Vec<f64>>> = Mutex::new(BTreeMap::new());

/// Runs the matrix by agreement count, smallest first, every case at one count before
/// the next: a thread's cache then holds what a service with that many customers holds
/// (their keys, for every feature), not the leftovers of a larger run.
fn matrix(c: &mut Criterion, pool: &Pool) {
    for n in AGREEMENTS {
        let mut group = c.benchmark_group(format!("{n} agreements"));
        for case in cases() {
            if !case.per_agreement_count && n != 1 {
                continue;
            }
            for threads in THREADS {
                let id = format!("{}/{threads} threads", case.name);
                group.bench_function(&id, |b| {
                    b.iter_custom(|iters| {
                        let elapsed = pool.run(threads, &case, n, iters);
                        SAMPLES
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry((case.name.to_owned(), n, threads))
                            .or_default()
                            .push(elapsed.as_nanos() as f64 / iters as f64);
                        elapsed
                    })
                });
            }
        }
        group.finish();
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn print_table() {
    let mut samples = SAMPLES.lock().unwrap_or_else(|e| e.into_inner());
    let medians: BTreeMap<(String, usize, usize), f64> = samples
        .iter_mut()
        .map(|(k, v)| (k.clone(), median(v)))
        .collect();
    let get = |name: &str, n: usize, t: usize| {
        medians
            .get(&(name.to_owned(), n, t))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!("\nMedian ns per operation, as each calling thread sees it (2 threads: at once)\n");
    let header: Vec<String> = AGREEMENTS
        .iter()
        .flat_map(|n| THREADS.map(|t| format!("{n} × {t}t")))
        .collect();
    println!("| case | unit | {} |", header.join(" | "));
    println!("| --- | --- |{}", " ---: |".repeat(header.len()));
    for case in cases() {
        let cells: Vec<String> = AGREEMENTS
            .iter()
            .flat_map(|&n| {
                THREADS.map(|t| {
                    let n = if case.per_agreement_count { n } else { 1 };
                    format!("{:.1}", get(case.name, n, t))
                })
            })
            .collect();
        let cells = if case.per_agreement_count {
            cells
        } else {
            // One figure per thread count: the case has no agreements to vary.
            let mut one = vec![String::from("—"); header.len()];
            one[0].clone_from(&cells[0]);
            one[1].clone_from(&cells[1]);
            one
        };
        println!("| {} | {} | {} |", case.name, case.unit, cells.join(" | "));
    }

    let plain = |t| get("plain fn (no metering)", 1, t);
    let handle = |t| get("metrics: static handle increment(1)", 1, t);
    let one_key = |t| get("#[meter] fn, task scope, one key", 1, t) - plain(t);
    let record_for = |n, t| get("record_for, round robin", n, t);
    let labelled = |n, t| get("metrics: counter! with a customer label, round robin", n, t);
    let enter = |n, t| get("request: enter_agreement + 3 #[meter] calls", n, t);
    let with = |n, t| get("request: with_agreement poll + 3 #[meter] calls", n, t);
    println!("\nGoals (ratios within this run)\n");
    println!("| goal | 1 thread | 2 threads | target |");
    println!("| --- | ---: | ---: | --- |");
    println!(
        "| `#[meter]` added cost, one key ÷ static handle add | {:.2}× | {:.2}× | ≤ 1.0× / ≤ 0.5× |",
        one_key(1) / handle(1),
        one_key(2) / handle(2)
    );
    println!(
        "| `record_for`, 1,000 agreements ÷ 1 agreement | {:.2}× | {:.2}× | ≤ 2× |",
        record_for(1_000, 1) / record_for(1, 1),
        record_for(1_000, 2) / record_for(1, 2)
    );
    println!(
        "| `counter!` with labels ÷ `record_for`, 1,000 agreements | {:.1}× | {:.1}× | ≥ 5× |",
        labelled(1_000, 1) / record_for(1_000, 1),
        labelled(1_000, 2) / record_for(1_000, 2)
    );
    println!(
        "| `record_for`, 100,000 agreements (ns) | {:.1} | {:.1} | ≤ 100 |",
        record_for(100_000, 1),
        record_for(100_000, 2)
    );
    println!(
        "| request, `enter_agreement` + 3 calls, 1,000 agreements (ns) | {:.1} | {:.1} | ≤ 50 |",
        enter(1_000, 1),
        enter(1_000, 2)
    );
    println!(
        "| request, `with_agreement` + 3 calls, 1,000 agreements (ns) | {:.1} | {:.1} | ≤ 50 |",
        with(1_000, 1),
        with(1_000, 2)
    );
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

fn main() {
    metrics::set_global_recorder(AtomicRecorder(Registry::atomic())).expect("recorder");
    // A running global reporter whose bound holds every key of the matrix, and whose window
    // never closes during the run: the figures are the calls' own cost. Nothing is sent (the
    // address is a closed local port), and the guard is leaked so that exiting does not
    // wait for a shutdown.
    let domain = Domain::parse("http://127.0.0.1:9").expect("loopback domain");
    let config = Config::new(domain, Credentials::access_token("bench"))
        .allow_http(true)
        .max_pending_keys(1_000_000)
        .flush_interval(Duration::from_secs(3600));
    std::mem::forget(kinde_meter::init(config).expect("reporter"));

    let pool = Pool::new(*THREADS.iter().max().expect("thread counts"));
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1000))
        .sample_size(20)
        .configure_from_args();
    matrix(&mut criterion, &pool);
    criterion.final_summary();
    print_table();
}
