//! Support for testing billing code (cargo feature `testing`).
//!
//! - [`capture`]: what metered code records, per test, without a reporter or network.
//! - [`Emulator`]: a local, stateful Kinde on 127.0.0.1 with throttling and fault
//!   injection, to test delivery end to end.

pub(crate) mod capture;
mod emulator;

pub use capture::{Capture, CaptureScope, Captured, capture};
pub use emulator::*;
