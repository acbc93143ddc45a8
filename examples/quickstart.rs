//! The main job: a small billable service whose handlers are metered with `#[meter]`,
//! a deterministic workload for three customers, and a clean shutdown that proves every
//! unit of usage arrived.
//!
//! `cargo run --example quickstart`
//!
//! Without Kinde configuration it starts the local Kinde emulator in-process (with a few
//! injected faults, to show retries) and compares its ledger with what was recorded.
//! With `KINDE_DOMAIN` and credentials (see the README) it reports to that Kinde instead;
//! set `QUICKSTART_AGREEMENTS` to three of your customer agreement ids and give their
//! plan the features `class_bookings`, `ai_plans` and `video_minutes`.
//!
//! Exits non-zero when what Kinde received does not match what was recorded.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kinde_meter::{AgreementId, enter_agreement, meter, with_agreement};
use kinde_meter_emulator::{Emulator, Faults};

#[path = "common/mod.rs"]
mod common;

// ---------------------------------------------------------------------------------------
// The service: billable operations, each metered with one attribute.

/// Books a class: one `class_bookings` unit per call (sync).
#[meter(feature = "class_bookings")]
fn book_class(class: &str) -> String {
    format!("booked {class}")
}

/// Generates a training plan: billed only when it succeeds (`on = "ok"`, async).
#[meter(feature = "ai_plans", on = "ok")]
async fn generate_plan(goal: &str) -> Result<String, String> {
    tokio::task::yield_now().await;
    if goal.is_empty() {
        return Err("a plan needs a goal".to_owned());
    }
    Ok(format!("12-week plan for {goal}"))
}

/// Streams a video: billed by the minute (`value` sees the arguments).
#[meter(feature = "video_minutes", value = minutes)]
async fn stream_video(title: &str, minutes: u32) -> usize {
    tokio::task::yield_now().await;
    title.len() + minutes as usize
}

// ---------------------------------------------------------------------------------------

const CUSTOMERS: [&str; 3] = ["agreement_acme", "agreement_globex", "agreement_initech"];
const ROUNDS: usize = 40;

/// What the workload recorded, per (agreement, feature): tallied beside the calls.
type Tally = BTreeMap<(String, String), u64>;

fn main() -> ExitCode {
    common::exit_code(run())
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    // 1. Configuration: real Kinde from the environment, else the local emulator.
    //    The emulator, when used, fails 15% of requests with 503, to show retries.
    let faulty = Emulator::builder()
        .seed(2024)
        .faults(Faults::none().status_503(0.15));
    let (config, emulator) = common::kinde_or_emulator(faulty)?;
    // Your own customers on a real Kinde; three made-up ones on the emulator.
    let customers = match &emulator {
        Some(_) => CUSTOMERS.join(","),
        None => std::env::var("QUICKSTART_AGREEMENTS").map_err(|_| {
            "QUICKSTART_AGREEMENTS is not set: give three customer agreement ids, comma-separated"
        })?,
    };
    let customers: Vec<AgreementId> = customers
        .split(',')
        .map(|c| c.trim().parse())
        .collect::<Result<_, _>>()?;

    // 2. Start the reporter once, at startup, with a journal: each closed window is on
    //    disk until Kinde has it, so a crash loses at most the open one. Against your
    //    Kinde, `KINDE_METER_JOURNAL_DIR` names its directory; against the emulator, a
    //    fresh one per run, so each run starts from nothing.
    let journal =
        std::env::temp_dir().join(format!("kinde-meter-quickstart-{}", std::process::id()));
    let config = match &emulator {
        Some(_) => config.journal(&journal),
        None => config,
    };
    let guard = kinde_meter::init(config.flush_interval(Duration::from_millis(250)))?;

    // 3. The workload: sync calls on a worker thread, async calls on a runtime.
    let started = Instant::now();
    let mut tally = Tally::new();
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    for round in 0..ROUNDS {
        for (i, customer) in customers.iter().enumerate() {
            let note = |tally: &mut Tally, feature: &str, value: u64| {
                *tally
                    .entry((customer.to_string(), feature.to_owned()))
                    .or_default() += value;
            };
            // Sync: the thread scope.
            {
                let _scope = enter_agreement(customer.clone());
                for _ in 0..=i {
                    book_class("spin");
                    note(&mut tally, "class_bookings", 1);
                }
            }
            // Async: the task scope.
            let goal = if (round + i) % 5 == 0 {
                ""
            } else {
                "a marathon"
            };
            let minutes = (round % 7 + i) as u32 * 5;
            let (plan, _) = runtime.block_on(with_agreement(customer.clone(), async {
                (
                    generate_plan(goal).await,
                    stream_video("core basics", minutes).await,
                )
            }));
            if plan.is_ok() {
                note(&mut tally, "ai_plans", 1);
            }
            note(&mut tally, "video_minutes", u64::from(minutes));
        }
        // Spread the rounds over a few flush windows, as traffic would be.
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "Ran {} rounds for {} customers in {:?}",
        ROUNDS,
        customers.len(),
        started.elapsed()
    );

    // 4. Shut down cleanly: deliver everything, with a progress line while waiting.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // With a journal, a flush returns once the window is on disk: wait a little
        // between them while delivery goes on.
        let flushed = guard.flush_blocking(Duration::from_millis(300));
        print!("\r  delivering... {:>3} records waiting", flushed.waiting);
        if flushed.waiting == 0 || Instant::now() > deadline {
            println!();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = guard.shutdown_blocking(Duration::from_secs(10));
    if emulator.is_some() {
        // Everything was delivered, so the journal holds nothing; its folder goes too.
        let _ = std::fs::remove_dir_all(&journal);
    }

    // 5. What was recorded, what Kinde received, and whether they match.
    println!(
        "\n{:<20} {:<16} {:>10} {:>10}",
        "agreement", "feature", "recorded", "received"
    );
    let mut matches = report.is_complete();
    for ((agreement, feature), recorded) in &tally {
        let received = match &emulator {
            Some(e) => e.total(agreement, feature).to_string(),
            None => "-".to_owned(),
        };
        if emulator.is_some() && received != recorded.to_string() {
            matches = false;
        }
        println!("{agreement:<20} {feature:<16} {recorded:>10} {received:>10}");
    }
    let recorded: u64 = tally.values().sum();
    let s = &report.stats;
    println!(
        "\nDelivery: {} units in {} records ({} requests, {} retried, {} throttled, {} ambiguous), {} records left over",
        s.delivered,
        s.records_delivered,
        s.requests,
        s.retried,
        s.throttled,
        s.ambiguous,
        report.left.len()
    );
    matches &= s.delivered == recorded && s.rejected == 0 && s.ambiguous == 0;
    if matches {
        println!("MATCH: Kinde received exactly the {recorded} units recorded.");
    } else {
        println!(
            "MISMATCH: recorded {recorded} units, delivered {} (see the table and report above).",
            s.delivered
        );
        for left in &report.left {
            println!("  left over: {:?} because {}", left.record, left.reason);
        }
    }
    Ok(matches)
}
