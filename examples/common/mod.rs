//! Where the examples report to: your Kinde, or a local emulator. Not an example itself.
//!
//! A service of yours needs only the first branch, `Config::from_env()`. The examples also
//! run with nothing configured, so they start the local Kinde emulator in that case.

use std::process::ExitCode;

use kinde_meter::Config;
use kinde_meter::api::Credentials;
use kinde_meter_emulator::{Emulator, EmulatorBuilder};

/// The exit status of an example that checks what was delivered: 0 when it matched, 1
/// when it did not, 2 (with the error on stderr) when it could not run, a missing
/// environment variable for one.
pub(crate) fn exit_code(run: Result<bool, Box<dyn std::error::Error>>) -> ExitCode {
    match run {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The configuration to report with: from the environment when `KINDE_DOMAIN` is set
/// (its errors name the variable that is missing or malformed), else pointed at an
/// emulator started from `emulator` on 127.0.0.1.
///
/// The emulator is returned too, to be kept alive while the reporter sends (it stops when
/// dropped) and to be asked what it received; `None` when reporting to a real Kinde.
pub(crate) fn kinde_or_emulator(
    emulator: EmulatorBuilder,
) -> Result<(Config, Option<Emulator>), Box<dyn std::error::Error>> {
    if std::env::var_os("KINDE_DOMAIN").is_some() {
        let config = Config::from_env()?;
        println!("reporting to {}", config.domain());
        return Ok((config, None));
    }
    let emulator = emulator.start()?;
    println!(
        "KINDE_DOMAIN is not set: reporting to the local Kinde emulator at {}",
        emulator.base_url()
    );
    // The emulator speaks HTTP only: point a configuration at its URL, with the
    // credentials its token endpoint accepts.
    let config = Config::new(
        emulator.base_url().parse()?,
        Credentials::client_credentials(emulator.client_id(), emulator.client_secret()),
    );
    Ok((config, Some(emulator)))
}
