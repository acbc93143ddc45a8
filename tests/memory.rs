//! Memory stays flat as the call count grows: the steady-state hot path allocates
//! nothing, and a running reporter holds no more after ten times the calls.
//!
//! A counting global allocator (per thread, and process-wide live bytes) observes it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::Duration;

use kinde_meter::{AgreementId, FeatureCode, Reporter, with_agreement};
use kinde_meter_emulator::Emulator;
use kinde_meter_workspace::reporter::{agreements, fast_config};

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
    // sizes), not anything proportional to a million calls.
    assert!(
        (large - small).abs() < 64 * 1024,
        "a round of 10^4 calls kept {small} bytes, one of 10^6 kept {large}"
    );
    assert_eq!(emulator.ledger_sum(), 1_011_000u64);
    assert!(reporter.stats().pending_keys <= ids.len() as u64);
    drop(reporter);
}
