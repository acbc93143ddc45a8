//! `kinde-meter deliver`: a process that only delivers a fleet's usage to Kinde.
//!
//! Reads its configuration from the environment, as `Config::from_env` does:
//! `KINDE_DOMAIN`, the credentials, and `KINDE_METER_REDIS_URL`. Runs until SIGINT or
//! SIGTERM, then lets the sends under way finish.

use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: kinde-meter deliver

Delivers a kinde-meter fleet's usage from Redis to Kinde until SIGINT or SIGTERM.
Configuration comes from the environment: KINDE_DOMAIN, KINDE_MANAGEMENT_CLIENT_ID and
KINDE_MANAGEMENT_CLIENT_SECRET (or KINDE_ACCESS_TOKEN), and KINDE_METER_REDIS_URL.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["deliver"] => deliver(),
        ["help" | "--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn deliver() -> ExitCode {
    let config = match kinde_meter::Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("kinde-meter deliver: {e}");
            return ExitCode::from(2);
        }
    };
    let deliverer = match kinde_meter::fleet::Deliverer::start(&config) {
        Ok(deliverer) => deliverer,
        Err(e) => {
            eprintln!("kinde-meter deliver: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!("kinde-meter deliver: delivering as {}", deliverer.owner());
    let signalled = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|runtime| {
            runtime.block_on(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    r = tokio::signal::ctrl_c() => r,
                    _ = term.recv() => Ok(()),
                }
            })
        });
    if let Err(e) | Ok(Err(e)) = signalled {
        eprintln!("kinde-meter deliver: cannot wait for signals: {e}");
    }
    let finished = deliverer.stop(Duration::from_secs(30));
    eprintln!(
        "kinde-meter deliver: stopped{}",
        if finished {
            ""
        } else {
            " (sends were still under way)"
        }
    );
    ExitCode::SUCCESS
}
