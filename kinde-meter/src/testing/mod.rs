//! Support for testing billing code (cargo feature `testing`).
//!
//! - [`capture`]: what metered code records, per test, without a reporter or network.
//! - [`Emulator`]: a local, stateful Kinde on 127.0.0.1 with throttling and fault
//!   injection, to test delivery end to end.

pub(crate) mod capture;
mod emulator;

pub use capture::{Capture, CaptureScope, Captured, capture};
pub use emulator::*;

use crate::api::{Client, Credentials, Domain};
use crate::config::{Config, ConfigError};

/// Ready-made connections to the emulator.
impl Emulator {
    /// The emulator's base URL as a [`Domain`] (`http://127.0.0.1:PORT`, allowed because
    /// it is loopback).
    pub fn domain(&self) -> Domain {
        // The emulator's own address always parses.
        Domain::parse(&self.base_url()).unwrap_or_else(|e| unreachable!("{e}"))
    }

    /// Client credentials the emulator accepts.
    pub fn credentials(&self) -> Credentials {
        Credentials::client_credentials(self.client_id(), self.client_secret())
    }

    /// A reporter configuration pointed at the emulator (other settings at their
    /// defaults: adjust them with the `Config` setters).
    ///
    /// ```
    /// use kinde_meter::testing::Emulator;
    ///
    /// let emulator = Emulator::start()?;
    /// let config = emulator.config().flush_interval(std::time::Duration::from_millis(100));
    /// assert_eq!(config.domain().as_str(), emulator.base_url());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn config(&self) -> Config {
        Config::new(self.domain(), self.credentials())
    }

    /// An API client pointed at the emulator.
    pub fn client(&self) -> Result<Client, ConfigError> {
        Ok(Client::new(self.domain(), self.credentials())?)
    }
}
