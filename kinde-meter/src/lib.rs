//! Usage-based billing for Rust services on [Kinde](https://kinde.com).
//!
//! (Crate documentation is written in the README; see below.)
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod api;
pub mod config;
mod context;
mod reporter;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;

#[doc(hidden)]
pub mod __private;

pub use api::{AgreementId, FeatureCode, MeterType};
pub use config::{Config, ConfigError, Delivery};
pub use context::{
    AgreementFutureExt, AgreementGuard, WithAgreement, current_agreement, enter_agreement,
    with_agreement,
};
pub use kinde_meter_macros::meter;
pub use reporter::{
    FlushReport, Guard, InitError, MeterError, Outcome, Reporter, ShutdownReport, Stats,
    UnsentReason, UnsentRecord, Usage, UsageRecord, init, record, record_for, stats,
};
