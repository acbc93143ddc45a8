//! A local, in-process, stateful Kinde for tests and examples.
//!
//! [`Emulator`] serves the two endpoints kinde-meter talks to — the
//! client-credentials token endpoint and the meter usage endpoint — on
//! `127.0.0.1`, checks every request against Kinde's documented contract,
//! keeps a ledger of the usage it accepted, and can misbehave on demand:
//! throttling, injected faults, latency, going down and coming back.
//!
//! It validates the raw JSON on the wire on its own and shares no types with
//! the client, so it can referee it.

mod amount;
pub mod codes;
mod faults;
mod ledger;
mod limits;
mod validate;

pub use amount::{Amount, ParseAmountError};
pub use faults::{FaultKind, Faults};
pub use ledger::{AcceptedRecord, Counts, Outcome, ReceivedRequest, TokenRequest};
pub use limits::RateLimit;
pub use validate::EmulatedMeterType;
