//! A plain-threads program with no async runtime: worker threads take jobs from a queue,
//! each job for one customer, and metered functions bill the customer whose job runs.
//!
//! `cargo run --example sync_worker`
//!
//! `enter_agreement` sets the thread's current agreement for the length of a job; the
//! reporter delivers from its own thread. Without `KINDE_DOMAIN` it reports to the local
//! Kinde emulator and checks its ledger at the end.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use kinde_meter::{AgreementId, enter_agreement, meter};
use kinde_meter_emulator::Emulator;

#[path = "common/mod.rs"]
mod common;

/// Renders a document: billed per page.
#[meter(feature = "pdf_pages", value = pages)]
fn render(pages: u32) -> Vec<u8> {
    vec![0; pages as usize]
}

/// Sends a notification: one unit per call that succeeds.
#[meter(feature = "notifications", on = "ok")]
fn notify(to: &str) -> Result<(), String> {
    if to.contains('@') {
        Ok(())
    } else {
        Err(format!("not an address: {to}"))
    }
}

struct Job {
    agreement: AgreementId,
    pages: u32,
    notify: String,
}

fn main() -> ExitCode {
    common::exit_code(run())
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let (config, emulator) = common::kinde_or_emulator(Emulator::builder())?;
    let guard = kinde_meter::init(config)?;

    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let rx = Arc::clone(&rx);
            thread::spawn(move || {
                loop {
                    let job = match rx.lock().map(|rx| rx.recv()) {
                        Ok(Ok(job)) => job,
                        _ => return,
                    };
                    // Everything metered in this job bills its customer.
                    let _scope = enter_agreement(job.agreement);
                    render(job.pages);
                    let _ = notify(&job.notify);
                }
            })
        })
        .collect();

    let customers: Vec<AgreementId> = ["agreement_acme", "agreement_globex"]
        .iter()
        .map(|c| c.parse())
        .collect::<Result<_, _>>()?;
    let mut expected: BTreeMap<(String, &str), u64> = BTreeMap::new();
    for n in 0..200u32 {
        let agreement = customers[(n % 2) as usize].clone();
        let pages = n % 9 + 1;
        let to = if n % 10 == 0 {
            "nobody".to_owned()
        } else {
            format!("user{n}@example.com")
        };
        *expected
            .entry((agreement.to_string(), "pdf_pages"))
            .or_default() += u64::from(pages);
        if to.contains('@') {
            *expected
                .entry((agreement.to_string(), "notifications"))
                .or_default() += 1;
        }
        tx.send(Job {
            agreement,
            pages,
            notify: to,
        })?;
    }
    drop(tx);
    for w in workers {
        w.join().map_err(|_| "a worker panicked")?;
    }

    let report = guard.shutdown_blocking(Duration::from_secs(10));
    println!("reporter: {report}");
    let mut ok = report.is_complete();
    for ((agreement, feature), value) in &expected {
        let received = emulator
            .as_ref()
            .map(|e| e.total(agreement, feature).to_string());
        println!(
            "{agreement:<18} {feature:<14} recorded {value:>5}  received {}",
            received.as_deref().unwrap_or("-")
        );
        if let Some(received) = received {
            ok &= received == value.to_string();
        }
    }
    println!("{}", if ok { "MATCH" } else { "MISMATCH" });
    Ok(ok)
}
