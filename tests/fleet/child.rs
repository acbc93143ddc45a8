//! The processes of a test fleet: replicas that record a known workload and hand it off
//! to Redis, and deliverers that send the fleet's totals to Kinde.
//!
//! ```text
//! fleet-child replica <kinde url> <client id> <client secret> <redis url> <namespace> <first key> <keys> <rounds> [options]
//! fleet-child deliver <kinde url> <client id> <client secret> <redis url> <namespace> [options]
//! ```
//!
//! Options: `--journal <dir>`, `--kill-after-handoffs <n>` (a replica kills itself with
//! SIGKILL once its n-th hand-off has been applied by Redis, before its outbox learns of
//! it), `--lease-ms <ms>`, `--request-timeout-ms <ms>`, `--gather-ms <ms>`.
//!
//! A replica records, in each round, [`amount`] of usage for each of its keys
//! (agreement `agr_<key>`, feature `calls`), then flushes, and prints
//! `round <n> recorded <value>` once the round's usage is recorded (before its hand-off).
//! At the end it prints `handoffs <applied> <already applied> <failed>` (this process's
//! hand-offs) and `done <recorded> <complete>`, and exits. A deliverer prints
//! `delivering <owner>`, delivers until its stdin closes or reads `stop`, then prints
//! `stopped`.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kinde_meter::api::{AgreementId, Credentials, Domain, FeatureCode};
use kinde_meter::fleet::{Deliverer, HandoffSink};
use kinde_meter::{Config, Reporter, SendResult, Sink, UsageRecord};

/// The usage key `key` records in round `round`: varied, never zero.
pub fn amount(round: u64, key: u64) -> u64 {
    1 + (round * 7 + key * 13) % 10
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(&format!("error {e}"));
            ExitCode::from(2)
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn option(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn millis(args: &[String], name: &str) -> Result<Option<Duration>, String> {
    option(args, name)
        .map(|v| {
            v.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|e| format!("{name}: {e}"))
        })
        .transpose()
}

fn config(args: &[String]) -> Result<Config, String> {
    let [_, url, id, secret, redis, namespace, ..] = args else {
        return Err("missing arguments".to_owned());
    };
    let domain = Domain::parse(url).map_err(|e| e.to_string())?;
    let mut config = Config::new(
        domain,
        Credentials::client_credentials(id.as_str(), secret.as_str()),
    )
    .flush_interval(Duration::from_secs(3600))
    .backoff(Duration::from_millis(20), Duration::from_millis(300))
    .fleet(redis.clone())
    .fleet_namespace(namespace.clone())
    .fleet_deliverer(false)
    .shutdown_timeout(Duration::from_secs(20));
    if let Some(timeout) = millis(args, "--request-timeout-ms")? {
        config = config.request_timeout(timeout);
    }
    if let Some(lease) = millis(args, "--lease-ms")? {
        config = config.fleet_lease(lease);
    }
    if let Some(gather) = millis(args, "--gather-ms")? {
        config = config.fleet_gather(gather);
    }
    if let Some(dir) = option(args, "--journal") {
        config = config.journal(dir);
    }
    Ok(config)
}

fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("replica") => replica(args),
        Some("deliver") => deliver(args),
        _ => Err("usage: fleet-child replica|deliver ...".to_owned()),
    }
}

/// Kills its own process once `after` hand-offs were applied: between Redis applying
/// one and the outbox hearing of it.
struct KillingSink {
    inner: HandoffSink,
    after: u64,
    done: AtomicU64,
}

impl Sink for KillingSink {
    async fn send(&self, record: &UsageRecord, timeout: Duration) -> SendResult {
        let result = self.inner.send(record, timeout).await;
        if result.is_ok() && self.done.fetch_add(1, Ordering::SeqCst) + 1 >= self.after {
            say("killing");
            // SAFETY: kill(2) on our own pid; no memory is involved.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
        result
    }
}

fn replica(args: &[String]) -> Result<(), String> {
    let number = |i: usize| -> Result<u64, String> {
        args.get(i)
            .ok_or_else(|| "missing arguments".to_owned())?
            .parse::<u64>()
            .map_err(|e| e.to_string())
    };
    let (first, keys, rounds) = (number(6)?, number(7)?, number(8)?);
    let config = config(args)?;
    let reporter = match option(args, "--kill-after-handoffs") {
        Some(n) => {
            let sink = KillingSink {
                inner: HandoffSink::new(&config).map_err(|e| e.to_string())?,
                after: n
                    .parse()
                    .map_err(|e| format!("--kill-after-handoffs: {e}"))?,
                done: AtomicU64::new(0),
            };
            Reporter::start_with_sink(config, sink)
        }
        None => Reporter::start(config),
    }
    .map_err(|e| e.to_string())?;
    say("started");
    let feature = FeatureCode::new("calls").map_err(|e| e.to_string())?;
    let agreements = (first..first + keys)
        .map(|k| AgreementId::new(format!("agr_{k}")).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut recorded = 0;
    for round in 0..rounds {
        let mut value = 0;
        for (key, agreement) in (first..).zip(&agreements) {
            let v = amount(round, key);
            reporter.record_for(agreement, &feature, v);
            value += v;
        }
        recorded += value;
        say(&format!("round {round} recorded {value}"));
        let _ = reporter.flush_blocking(Duration::from_secs(20));
    }
    let report = reporter.shutdown_blocking(Duration::from_secs(20));
    let handoffs = kinde_meter::fleet::handoff_stats();
    say(&format!(
        "handoffs {} {} {}",
        handoffs.handed_off, handoffs.already_applied, handoffs.failed
    ));
    say(&format!("done {recorded} {}", report.is_complete()));
    Ok(())
}

fn deliver(args: &[String]) -> Result<(), String> {
    let config = config(args)?;
    let deliverer = Deliverer::start(&config).map_err(|e| e.to_string())?;
    say(&format!("delivering {}", deliverer.owner()));
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        match line {
            Ok(line) if line.trim() == "stop" => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let finished = deliverer.stop(Duration::from_secs(15));
    say(&format!("stopped {finished}"));
    Ok(())
}
