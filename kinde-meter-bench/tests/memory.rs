//! Memory stays flat as the call count grows: the steady-state hot path allocates
//! nothing, with one customer or 100,000, and a running reporter holds no more after ten
//! times the calls; what a key costs is measured, and the bound caps it.
//!
//! A counting global allocator (per thread, and process-wide live bytes) observes it.
//! Built without cargo features (`cargo test -p kinde-meter-bench`), as services ship.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::Duration;

use kinde_meter::api::{Credentials, Domain};
use kinde_meter::{
    AgreementId, Config, FeatureCode, Reporter, enter_agreement, meter, with_agreement,
};
use kinde_meter_emulator::Emulator;

fn fast_config(emulator: &Emulator) -> Config {
    let domain = Domain::parse(&emulator.base_url()).expect("loopback domain");
    let credentials =
        Credentials::client_credentials(emulator.client_id(), emulator.client_secret());
    Config::new(domain, credentials)
        .flush_interval(Duration::from_millis(100))
        .backoff(Duration::from_millis(10), Duration::from_millis(300))
        .requests_per_second(10_000.0)
        .request_timeout(Duration::from_secs(2))
}

/// `n` agreement ids, `agreement_000`, `agreement_001`, ...
fn agreements(n: usize) -> Vec<AgreementId> {
    (0..n)
        .map(|i| format!("agreement_{i:03}").parse().expect("valid id"))
        .collect()
}

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
thread_local! {
    // `const` and without a destructor, so the allocator can use it without allocating.
    static THREAD_ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to `System`, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = THREAD_ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        LIVE_BYTES.fetch_add(layout.size() as isize, Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The live-bytes counter is process-wide: tests in this file take turns.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on a thread of its own and waits until the thread is gone, so that its cache
/// is freed before the next test counts live bytes.
fn on_own_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::spawn(f).join().expect("test thread")
}

fn allocations_here() -> u64 {
    THREAD_ALLOCATIONS.with(Cell::get)
}

#[test]
fn the_steady_state_hot_path_does_not_allocate() {
    let _turn = serial();
    let emulator = Emulator::start().expect("emulator");
    let reporter = Reporter::start(fast_config(&emulator)).expect("reporter");
    let ids = agreements(10);
    let feature = FeatureCode::from_static("hot");
    // Warm up: the first call of each key creates its cell and caches it.
    for id in &ids {
        reporter.record_for(id, &feature, 1);
    }
    let before = allocations_here();
    for i in 0..1_000_000 {
        reporter.record_for(&ids[i % 3], &feature, 1);
    }
    assert_eq!(
        allocations_here() - before,
        0,
        "allocations on the hot path"
    );
    drop(reporter);
}

#[test]
fn record_in_a_task_scope_does_not_allocate() {
    let _turn = serial();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let agreement: AgreementId = "agreement_scope".parse().expect("id");
    let calls = runtime.block_on(with_agreement(agreement, async {
        kinde_meter::record("scoped_hot", 1);
        let before = allocations_here();
        for _ in 0..1_000_000 {
            kinde_meter::record("scoped_hot", 1);
        }
        allocations_here() - before
    }));
    assert_eq!(calls, 0, "allocations on the hot path");
}

#[test]
fn live_memory_does_not_grow_with_the_number_of_calls() {
    let _turn = serial();
    let emulator = Emulator::start().expect("emulator");
    // Flushed by hand only, so every round sends the same 50 requests whatever its
    // length (the emulator keeps a log of each request it receives).
    let config = fast_config(&emulator).flush_interval(Duration::from_secs(3600));
    let reporter = Reporter::start(config).expect("reporter");
    let ids = agreements(50);
    let feature = FeatureCode::from_static("steady");
    let round = |calls: usize| {
        let before = LIVE_BYTES.load(Relaxed);
        for i in 0..calls {
            reporter.record_for(&ids[i % ids.len()], &feature, 1);
        }
        let flushed = reporter.flush_blocking(Duration::from_secs(10));
        assert_eq!(flushed.waiting, 0);
        LIVE_BYTES.load(Relaxed) - before
    };
    round(1_000);
    let small = round(10_000);
    let large = round(1_000_000);
    // A hundred times the calls, the same requests: the difference is noise (buffer
    // sizes, other tests' threads winding down), not anything proportional to a million
    // calls (a byte per call would be a megabyte).
    assert!(
        (large - small).abs() < 256 * 1024,
        "a round of 10^4 calls kept {small} bytes, one of 10^6 kept {large}"
    );
    assert_eq!(emulator.ledger_sum(), 1_011_000u64);
    assert!(reporter.stats().pending_keys <= ids.len() as u64);
    drop(reporter);
}

#[meter(feature = "many_search")]
fn search() {}

#[meter(feature = "many_export")]
fn export() {}

#[test]
fn the_hot_path_does_not_allocate_with_100_000_customers() {
    let _turn = serial();
    on_own_thread(hot_path_with_100_000_customers);
}

fn hot_path_with_100_000_customers() {
    let emulator = Emulator::start().expect("emulator");
    // A bound that holds every key, and no window closing during the test.
    let config = fast_config(&emulator)
        .max_pending_keys(400_000)
        .flush_interval(Duration::from_secs(3600));
    let reporter = Reporter::start(config).expect("reporter");
    let ids = agreements(100_000);
    let feature = FeatureCode::from_static("many_hot");
    for id in &ids {
        reporter.record_for(id, &feature, 1);
    }
    let before = allocations_here();
    for _ in 0..3 {
        for id in &ids {
            reporter.record_for(id, &feature, 1);
        }
    }
    assert_eq!(
        allocations_here() - before,
        0,
        "allocations on the hot path"
    );
    assert_eq!(reporter.stats().refused_overflow, 0);
    drop(reporter);
}

#[test]
fn requests_for_many_customers_do_not_allocate() {
    let _turn = serial();
    on_own_thread(requests_for_many_customers);
}

fn requests_for_many_customers() {
    // The global reporter is not started here: its cells still take the usage.
    let ids = agreements(20_000);
    let request = |id: &AgreementId| {
        let _scope = enter_agreement(id.clone());
        search();
        export();
    };
    ids.iter().for_each(request);
    let before = allocations_here();
    ids.iter().for_each(request);
    ids.iter().for_each(request);
    assert_eq!(
        allocations_here() - before,
        0,
        "allocations on the hot path"
    );
}

/// Live bytes per key while `keys` keys are pending, recorded on one thread.
fn bytes_per_key(keys: usize) -> f64 {
    let emulator = Emulator::start().expect("emulator");
    let config = fast_config(&emulator)
        .max_pending_keys(1_000_000)
        .flush_interval(Duration::from_secs(3600));
    let reporter = Reporter::start(config).expect("reporter");
    let ids = agreements(keys);
    let feature = FeatureCode::from_static("bytes_per_key");
    let before = LIVE_BYTES.load(Relaxed);
    for id in &ids {
        reporter.record_for(id, &feature, 1);
    }
    let per_key = (LIVE_BYTES.load(Relaxed) - before) as f64 / keys as f64;
    assert_eq!(reporter.stats().pending_keys, keys as u64);
    drop(reporter);
    per_key
}

#[test]
fn a_pending_key_costs_a_bounded_number_of_bytes() {
    let _turn = serial();
    // The ids themselves are allocated before the count starts: this is the table slot,
    // the thread's cell and its cache entry (the cache doubles as it fills).
    let small = on_own_thread(|| bytes_per_key(10_000));
    let large = on_own_thread(|| bytes_per_key(100_000));
    println!(
        "live bytes per pending key, one recording thread: {small:.0} (10^4 keys), {large:.0} (10^5 keys)"
    );
    assert!(large < 1_024.0, "{large} bytes per key");
    assert!(small < 1_024.0, "{small} bytes per key");
}
