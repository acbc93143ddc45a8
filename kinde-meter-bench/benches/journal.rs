//! `cargo bench -p kinde-meter-bench --bench journal`: what the journal costs per window,
//! on this machine's disk, beside the same window closed without a journal, from one run.
//!
//! One window: one unit recorded for each of `n` keys, then `flush_blocking`. With a
//! journal it returns once the window is written and synced (`fdatasync`); without one,
//! the flush is given no time to deliver, so it measures closing the window alone. The
//! sink never answers, so no delivery runs beside the measurement (the first requests
//! stay in flight, and later windows merge into the records that wait). Prints µs per
//! window and bytes per record at the end.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::Criterion;
use kinde_meter::api::{Credentials, Domain};
use kinde_meter::{AgreementId, Config, FeatureCode, Reporter, SendResult, Sink, UsageRecord};

const KEYS: [usize; 4] = [1, 100, 1_000, 10_000];
const FEATURE: FeatureCode = FeatureCode::from_static("api_calls");

/// Never answers: nothing is delivered while windows are timed.
struct Parked;

impl Sink for Parked {
    fn send(
        &self,
        _record: &UsageRecord,
        _timeout: Duration,
    ) -> impl Future<Output = SendResult> + Send {
        std::future::pending()
    }
}

fn config() -> Config {
    Config::new(
        Domain::parse("acme.kinde.com").expect("domain"),
        Credentials::access_token("bench"),
    )
    .flush_interval(Duration::from_secs(3600))
    .request_timeout(Duration::from_secs(3600))
    .max_pending_keys(100_000)
    .shutdown_timeout(Duration::ZERO)
}

struct Bench {
    reporter: Reporter,
    ids: Vec<AgreementId>,
    journaled: bool,
}

impl Bench {
    fn new(n: usize, journal: Option<&Path>) -> Self {
        let config = match journal {
            Some(dir) => config().journal(dir),
            None => config(),
        };
        let reporter = Reporter::start_with_sink(config, Parked).expect("reporter");
        let ids = (0..n)
            .map(|i| format!("agreement_{i:032x}").parse().expect("id"))
            .collect();
        let bench = Self {
            reporter,
            ids,
            journaled: journal.is_some(),
        };
        // The first window creates every record; later ones merge into them.
        bench.window();
        bench
    }

    fn window(&self) -> Duration {
        let start = Instant::now();
        for id in &self.ids {
            self.reporter.record_for(id, &FEATURE, 1);
        }
        let timeout = if self.journaled {
            Duration::from_secs(10)
        } else {
            Duration::ZERO
        };
        let report = self.reporter.flush_blocking(timeout);
        assert!(!self.journaled || report.durable, "{report:?}");
        start.elapsed()
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kinde-meter-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn bytes_in(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "kmj") {
                total += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10)
        .configure_from_args();
    let mut rows = Vec::new();
    for n in KEYS {
        let dir = temp_dir(&format!("{n}"));
        let journaled = Bench::new(n, Some(&dir));
        // The first window wrote one entry per key (and a few attempt starts).
        let per_record = bytes_in(&dir).saturating_sub(16) as f64 / n as f64;
        let memory = Bench::new(n, None);
        let mut group = criterion.benchmark_group(format!("window/{n}_keys"));
        group.bench_function("journal", |b| {
            b.iter_custom(|iters| (0..iters).map(|_| journaled.window()).sum())
        });
        group.bench_function("no_journal", |b| {
            b.iter_custom(|iters| (0..iters).map(|_| memory.window()).sum())
        });
        group.finish();
        // The table: medians of windows timed alternately, so both see the same machine.
        let mut with = Vec::new();
        let mut without = Vec::new();
        for _ in 0..30 {
            with.push(journaled.window());
            without.push(memory.window());
        }
        rows.push((n, median(with), median(without), per_record));
        drop(journaled);
        drop(memory);
        let _ = std::fs::remove_dir_all(&dir);
    }
    criterion.final_summary();
    println!(
        "\n| keys per window | with journal (µs) | without (µs) | journal's cost per window (µs) | per record (µs) | bytes per record |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for (n, with, without, bytes) in rows {
        let cost = with.saturating_sub(without);
        println!(
            "| {n} | {:.0} | {:.0} | {:.0} | {:.2} | {bytes:.0} |",
            with.as_secs_f64() * 1e6,
            without.as_secs_f64() * 1e6,
            cost.as_secs_f64() * 1e6,
            cost.as_secs_f64() * 1e6 / n as f64,
        );
    }
}
