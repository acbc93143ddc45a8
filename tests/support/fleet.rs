//! What the fleet tests read off a fleet and the emulator.

use std::time::{Duration, Instant};

use kinde_meter::Config;
use kinde_meter::fleet::{Fleet, FleetStats};
use kinde_meter_emulator::{Amount, Emulator};

/// The fleet's figures, read from its Redis.
pub fn stats(config: &Config) -> FleetStats {
    let fleet = Fleet::new(config).expect("fleet config");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(fleet.stats())
        .expect("fleet stats")
}

/// Waits until the fleet holds nothing undelivered and the emulator has nothing in
/// flight; returns the fleet's figures then.
///
/// # Panics
///
/// When that takes longer than `timeout`.
pub fn wait_delivered(config: &Config, emulator: &Emulator, timeout: Duration) -> FleetStats {
    let deadline = Instant::now() + timeout;
    loop {
        let s = stats(config);
        if s.pending_entries == 0
            && s.in_flight == 0
            && emulator.wait_idle(Duration::from_millis(200))
        {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the fleet did not deliver in {timeout:?}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until some request is in flight at the emulator (a send hangs there).
///
/// # Panics
///
/// When none is within `timeout`.
pub fn wait_sending(emulator: &Emulator, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while emulator.in_flight() == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing was sent within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An emulator amount in whole units.
pub fn whole(amount: Amount) -> u64 {
    u64::try_from(amount.whole().expect("whole units")).expect("fits")
}

/// Meter requests the emulator received.
pub fn meter_requests(emulator: &Emulator) -> usize {
    emulator
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/meter_usage"))
        .count()
}
