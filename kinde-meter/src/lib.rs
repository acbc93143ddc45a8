//! Usage-based billing for Rust services on [Kinde](https://kinde.com).
//!
//! Put [`#[meter]`](macro@meter) on a billable function and every call becomes usage on the
//! current customer's Kinde billing agreement: added to an in-memory cell in a few
//! nanoseconds, aggregated per (agreement, feature) and window, and delivered in the
//! background through Kinde's `POST /api/v1/billing/meter_usage`, through throttling,
//! outages and shutdown, without losing or inventing usage without saying so.
//!
//! ```no_run
//! use std::time::Duration;
//! use kinde_meter::{meter, with_agreement, AgreementId, Config};
//!
//! #[meter(feature = "api_calls")]
//! async fn search(query: &str) -> Vec<String> {
//!     vec![query.to_owned()]
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Once, at startup: reads KINDE_DOMAIN and credentials from the environment.
//!     let guard = kinde_meter::init(Config::from_env()?)?;
//!     let customer: AgreementId = "agreement_0195ac80a14c2ca2cec97d026d864de0".parse()?;
//!     with_agreement(customer, search("gyms near me")).await;
//!     // Delivers what is pending (dropping the guard does the same).
//!     let report = guard.shutdown(Duration::from_secs(10)).await;
//!     println!("{report}");
//!     Ok(())
//! }
//! ```
//!
//! # Where things are
//!
//! - Recording: [`macro@meter`], [`record`], [`record_for`]; whom they bill:
//!   [`with_agreement`], [`enter_agreement`], [`in_agreement`], [`AgreementFutureExt`].
//! - The reporter: [`init`] and its [`Guard`], [`Config`], [`stats`], the hooks' [`MeterError`]
//!   and [`UnsentRecord`], and [`Reporter`] for instances of your own.
//! - Delivery: the [`Sink`] seam between the reporter's policy and what carries records;
//!   [`KindeSink`] delivers to Kinde, [`Reporter::start_with_sink`] takes any other.
//! - [`api`]: the typed client for Kinde's meter usage endpoint, usable on its own.
//! - [`testing`] (feature `testing`): [`testing::capture`] for unit tests. A local Kinde
//!   to test delivery against is the separate crate `kinde-meter-emulator`.
//! - [`tower`] (feature `tower`): a layer that sets each request's agreement.
//! - [`webhooks`] (feature `webhooks`): Kinde's billing webhooks, verified and
//!   deduplicated, as a tower service.
//!
//! The README covers the concepts (agreement scope, aggregation window, delivery
//! guarantees against Kinde's missing idempotency), every configuration option and
//! variable, and the benchmarks.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod api;
pub mod config;
mod context;
#[cfg(feature = "fleet")]
#[cfg_attr(docsrs, doc(cfg(feature = "fleet")))]
pub mod fleet;
mod journal;
mod reporter;
pub mod resolve;
mod sink;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;
mod usage;
#[cfg(feature = "webhooks")]
#[cfg_attr(docsrs, doc(cfg(feature = "webhooks")))]
pub mod webhooks;

#[doc(hidden)]
pub mod __private;

pub use api::{AgreementId, Customer, FeatureCode, MeterType};
pub use config::{AgreementEnded, Config, ConfigError, Delivery};
pub use context::{
    AgreementFutureExt, AgreementGuard, WithAgreement, current_agreement, current_customer,
    enter_agreement, enter_customer, in_agreement, in_customer, with_agreement, with_customer,
};
pub use journal::JournalError;
pub use kinde_meter_macros::meter;
pub use reporter::{
    FlushReport, Guard, InitError, KindeSink, Outcome, Reporter, SendResult, ShutdownReport, Sink,
    Stats, Usage, billing_changed, init, record, record_for, record_for_customer, stats,
};
pub use usage::{
    JournalFailure, JournalIssue, MeterError, Unresolved, UnsentReason, UnsentRecord, UsageRecord,
};
