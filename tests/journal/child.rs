//! The process `tests/journal_kill.rs` kills: a reporter with a durable journal that
//! records a known workload round after round and says on stdout what it may rely on.
//!
//! ```text
//! journal-child <kinde url> <client id> <client secret> <journal dir> <first round> <last round> <keys> [<first key>]
//! ```
//!
//! It records keys `<first key>` (0 by default) to `<first key> + <keys> - 1`, so two
//! children on one journal can record disjoint keys. Each round records
//! [`plan::CALLS_PER_ROUND`] calls of [`plan::amount`] per key, a few
//! milliseconds apart (the 100 ms flush timer closes windows in the middle of rounds
//! too), then flushes. Lines on stdout, each written and flushed whole:
//!
//! - `started`: the reporter is running (its journal replayed);
//! - `begin <round>`: printed before the round's first call;
//! - `durable <round>`: the flush after the round said its window is on disk;
//! - `notdurable <round> ...`: it did not (the child then records nothing more);
//! - `ambiguous <idempotency key> <agreement> <value> <attempts> <error>`: a
//!   `MeterError::Ambiguous`, an attempt that may have been applied;
//! - `torn <bytes>`: the journal found the partial entry a kill left at the end of a file;
//! - `error <text>`: any other `MeterError`, or a failure to start;
//! - `unsent <idempotency key> <agreement> <value> <reason> <maybe applied> <attempts>`;
//! - `stats ...` then `done <complete>` after the last round and the shutdown.
//!
//! With a first round past the last, it records nothing: it starts (replaying what the
//! journal holds) and shuts down.
//!
//! A line `finish <n>` on stdin brings the last round forward: the child records `n` more
//! rounds after the one in progress (or the next one, between rounds), then shuts down as
//! after its last round. Anything else on stdin, and its end, is ignored.

mod plan;

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kinde_meter::api::{Credentials, Domain};
use kinde_meter::{
    AgreementId, Config, FeatureCode, JournalIssue, MeterError, Reporter, UnsentRecord,
};

/// Time between two calls of a key within a round.
const PAUSE: Duration = Duration::from_millis(15);
/// What a flush may take: with a journal it returns once the window is on disk.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// What the final shutdown may take.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// The `<n>` of the last `finish <n>` line read on stdin; `u64::MAX` until one comes.
static FINISH: AtomicU64 = AtomicU64::new(u64::MAX);

/// Reads `finish <n>` lines from stdin, on a thread of its own, until stdin ends.
fn listen_for_finish() {
    std::thread::spawn(|| {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if let Some(Ok(n)) = line
                .strip_prefix("finish ")
                .map(|n| n.trim().parse::<u64>())
            {
                FINISH.store(n.min(u64::MAX - 1), Ordering::SeqCst);
            }
        }
    });
}

/// Writes one line and flushes it, so a kill right after loses none of it.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // The parent reads every line; if it is gone there is no one to tell.
    let _ = out.write_all(format!("{line}\n").as_bytes());
    let _ = out.flush();
}

fn on_error(e: &MeterError) {
    match e {
        MeterError::Ambiguous {
            record,
            attempts,
            error,
        } => say(&format!(
            "ambiguous {} {} {} {attempts} {error}",
            record.idempotency_key, record.agreement, record.value
        )),
        // A kill in the middle of a write leaves a partial entry, which the next start
        // drops (it was never reported durable): expected here.
        MeterError::Journal(JournalIssue::TornTail { bytes, .. }) => say(&format!("torn {bytes}")),
        other => say(&format!("error {other}")),
    }
}

fn on_unsent(records: &[UnsentRecord]) {
    for u in records {
        say(&format!(
            "unsent {} {} {} {:?} {} {}",
            u.record.idempotency_key,
            u.record.agreement,
            u.record.value,
            u.reason,
            u.maybe_applied,
            u.attempts
        ));
    }
}

struct Args {
    url: String,
    client_id: String,
    client_secret: String,
    journal: String,
    first: u64,
    last: u64,
    keys: u64,
    first_key: u64,
}

fn args() -> Result<Args, String> {
    let v: Vec<String> = std::env::args().skip(1).collect();
    let (fixed, first_key) = match v.as_slice() {
        [fixed @ .., first_key] if fixed.len() == 7 => (fixed, Some(first_key)),
        fixed => (fixed, None),
    };
    let [url, client_id, client_secret, journal, first, last, keys] = fixed else {
        return Err(format!(
            "usage: journal-child <url> <client id> <client secret> <journal dir> <first> <last> <keys> [<first key>] (got {v:?})"
        ));
    };
    let number = |s: &str| s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
    Ok(Args {
        url: url.clone(),
        client_id: client_id.clone(),
        client_secret: client_secret.clone(),
        journal: journal.clone(),
        first: number(first)?,
        last: number(last)?,
        keys: number(keys)?,
        first_key: first_key.map_or(Ok(0), |k| number(k))?,
    })
}

fn run(args: &Args) -> Result<(), String> {
    let domain = Domain::parse(&args.url).map_err(|e| e.to_string())?;
    let config = Config::new(
        domain,
        Credentials::client_credentials(&*args.client_id, &*args.client_secret),
    )
    .journal(&args.journal)
    .flush_interval(Duration::from_millis(100))
    .backoff(Duration::from_millis(10), Duration::from_millis(200))
    .requests_per_second(10_000.0)
    .max_in_flight(16)
    .request_timeout(Duration::from_millis(350))
    .on_error(on_error)
    .on_unsent(on_unsent);
    let reporter = Reporter::start(config).map_err(|e| format!("start: {e}"))?;
    say("started");

    let feature = FeatureCode::new(plan::FEATURE).map_err(|e| e.to_string())?;
    let ids = (args.first_key..args.first_key + args.keys)
        .map(|k| plan::agreement(k).parse::<AgreementId>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    listen_for_finish();
    let mut last = args.last;
    let mut round = args.first;
    while round <= last {
        say(&format!("begin {round}"));
        for call in 0..plan::CALLS_PER_ROUND {
            for (key, id) in (args.first_key..).zip(&ids) {
                reporter.record_for(id, &feature, plan::amount(round, key, call));
            }
            std::thread::sleep(PAUSE);
        }
        let report = reporter.flush_blocking(FLUSH_TIMEOUT);
        if report.durable {
            say(&format!("durable {round}"));
        } else {
            say(&format!("notdurable {round} {report:?}"));
            break;
        }
        let finish = FINISH.load(Ordering::SeqCst);
        if finish != u64::MAX {
            last = last.min(round.saturating_add(finish));
        }
        round += 1;
    }

    let report = reporter.shutdown_blocking(SHUTDOWN_TIMEOUT);
    let s = &report.stats;
    say(&format!(
        "stats recorded={} replayed={} delivered={} ambiguous={} requests={} retried={} left={} kept={}",
        s.recorded,
        s.replayed,
        s.delivered,
        s.ambiguous,
        s.requests,
        s.retried,
        report.left.len(),
        report.kept.len()
    ));
    say(&format!("done {}", report.is_complete()));
    Ok(())
}

fn main() -> ExitCode {
    match args().and_then(|a| run(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(&format!("error {e}"));
            ExitCode::from(2)
        }
    }
}
