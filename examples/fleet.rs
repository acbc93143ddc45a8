//! A fleet: N replica processes of one metered service and one deliverer process, on a
//! local `redis-server` and the embedded Kinde emulator. Each replica aggregates on its
//! own and hands each window to Redis; the deliverer sends one request per customer and
//! feature for the whole fleet.
//!
//! `cargo run --example fleet` (or `-- --replicas 8`)
//!
//! Needs `redis-server` on the PATH (Debian/Ubuntu: `apt-get install -y redis-server`);
//! it starts one on 127.0.0.1 with a temporary directory and stops it at the end.
//! Prints what the replicas recorded against what Kinde received, and MATCH when they
//! agree. Exits 1 when they do not, 2 when it cannot run (no `redis-server`, say).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use kinde_meter::api::{Credentials, Domain};
use kinde_meter::fleet::{Deliverer, Fleet};
use kinde_meter::{AgreementId, Config, enter_agreement, meter};
use kinde_meter_emulator::Emulator;
use kinde_meter_workspace::redis::{INSTALL_HINT, Persistence, RedisServer};

// ---------------------------------------------------------------------------------------
// The service every replica runs.

/// Books a class: one `class_bookings` unit per call.
#[meter(feature = "class_bookings")]
fn book_class(class: &str) -> String {
    format!("booked {class}")
}

/// Streams a video: billed by the minute.
#[meter(feature = "video_minutes", value = minutes)]
fn stream_video(minutes: u32) -> u32 {
    minutes
}

// ---------------------------------------------------------------------------------------

const CUSTOMERS: [&str; 4] = [
    "agreement_acme",
    "agreement_globex",
    "agreement_initech",
    "agreement_umbrella",
];
const ROUNDS: u64 = 30;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("replica") => replica(&args[1..]).map(|()| true),
        Some("deliver") => deliver(&args[1..]).map(|()| true),
        _ => run(&args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

type Error = Box<dyn std::error::Error>;

/// The configuration every process of the fleet shares: `<kinde url> <id> <secret> <redis url>`.
fn config(args: &[String]) -> Result<Config, Error> {
    let [url, id, secret, redis, ..] = args else {
        return Err("expected <kinde url> <client id> <client secret> <redis url>".into());
    };
    Ok(Config::new(
        Domain::parse(url)?,
        Credentials::client_credentials(id.as_str(), secret.as_str()),
    )
    .flush_interval(Duration::from_millis(500))
    .fleet(redis.as_str())
    .fleet_namespace("fleet-example")
    // This example runs one dedicated deliverer; a replica could deliver too.
    .fleet_deliverer(false))
}

/// One replica: serves a deterministic workload, then shuts down. Prints `recorded
/// <agreement> <feature> <value>` for what it recorded.
fn replica(args: &[String]) -> Result<(), Error> {
    let index: u64 = args.get(4).ok_or("expected a replica index")?.parse()?;
    let guard = kinde_meter::init(config(args)?)?;
    let mut tally: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for round in 0..ROUNDS {
        for (i, customer) in CUSTOMERS.iter().enumerate() {
            let _scope = enter_agreement(AgreementId::new(customer)?);
            let bookings = 1 + (round + i as u64 + index) % 3;
            for _ in 0..bookings {
                book_class("spin");
            }
            let minutes = ((round * 7 + index) % 5) as u32 * 10;
            stream_video(minutes);
            *tally.entry((customer, "class_bookings")).or_default() += bookings;
            *tally.entry((customer, "video_minutes")).or_default() += u64::from(minutes);
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    let report = guard.shutdown_blocking(Duration::from_secs(20));
    if !report.is_complete() {
        return Err(format!("replica {index} did not hand everything off: {report}").into());
    }
    let mut out = std::io::stdout().lock();
    for ((agreement, feature), value) in tally {
        writeln!(out, "recorded {agreement} {feature} {value}")?;
    }
    Ok(())
}

/// The deliverer: delivers until its stdin closes.
fn deliver(args: &[String]) -> Result<(), Error> {
    let deliverer = Deliverer::start(&config(args)?)?;
    let _ = std::io::stdin().lock().lines().count();
    deliverer.stop(Duration::from_secs(10));
    Ok(())
}

fn run(args: &[String]) -> Result<bool, Error> {
    let replicas: usize = match args {
        [flag, n] if flag == "--replicas" => n.parse()?,
        [] => 3,
        _ => return Err("usage: cargo run --example fleet [-- --replicas N]".into()),
    };
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err(INSTALL_HINT.into());
    }
    let emulator = Emulator::start()?;
    let redis = RedisServer::start(Persistence::None);
    let me = std::env::current_exe()?;
    let shared = [
        emulator.base_url(),
        emulator.client_id().to_owned(),
        emulator.client_secret().to_owned(),
        redis.url(),
    ];
    println!(
        "Fleet: {replicas} replicas and 1 deliverer on {} (Kinde emulator on {})",
        redis.url(),
        emulator.base_url()
    );
    let mut deliverer = Command::new(&me)
        .arg("deliver")
        .args(&shared)
        .stdin(Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    let children = (0..replicas)
        .map(|i| {
            Command::new(&me)
                .arg("replica")
                .args(&shared)
                .arg(i.to_string())
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut recorded: BTreeMap<(String, String), u64> = BTreeMap::new();
    for child in children {
        let output = child.wait_with_output()?;
        if !output.status.success() {
            return Err(format!("a replica failed ({})", output.status).into());
        }
        for line in BufReader::new(&output.stdout[..]).lines() {
            let line = line?;
            let mut parts = line.split(' ').skip(1);
            if let (Some(a), Some(f), Some(v)) = (parts.next(), parts.next(), parts.next()) {
                *recorded.entry((a.to_owned(), f.to_owned())).or_default() += v.parse::<u64>()?;
            }
        }
    }
    println!(
        "Replicas done in {:?}; waiting for the deliverer...",
        started.elapsed()
    );

    let fleet = Fleet::new(&config(&shared)?)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let stats = runtime.block_on(fleet.stats())?;
        if (stats.pending_entries == 0 && stats.in_flight == 0) || Instant::now() > deadline {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(deliverer.stdin.take());
    deliverer.wait()?;

    println!(
        "\n{:<20} {:<16} {:>10} {:>10}",
        "agreement", "feature", "recorded", "received"
    );
    let mut matches = true;
    for ((agreement, feature), value) in &recorded {
        let received = emulator.total(agreement, feature).to_string();
        matches &= received == value.to_string();
        println!("{agreement:<20} {feature:<16} {value:>10} {received:>10}");
    }
    let total: u64 = recorded.values().sum();
    let requests = emulator.counts().accepted;
    println!(
        "\nFleet: {} hand-offs from {replicas} replicas became {requests} Kinde requests ({} ambiguous, {} rejected); \
         without fleet mode each replica would have sent its own.",
        stats.handoffs, stats.ambiguous, stats.rejected
    );
    if matches && stats.delivered == total {
        println!("MATCH: Kinde received exactly the {total} units the fleet recorded.");
    } else {
        println!(
            "MISMATCH: recorded {total} units, the fleet delivered {} (see the table above).",
            stats.delivered
        );
        matches = false;
    }
    Ok(matches)
}
