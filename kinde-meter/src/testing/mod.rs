//! Support for testing billing code (cargo feature `testing`).
//!
//! - [`capture`]: what metered code records, per test, without a reporter or network.
//!
//! To test delivery end to end, against a local, stateful Kinde on 127.0.0.1 with
//! throttling and fault injection, use the separate crate `kinde-meter-emulator` (a
//! library for tests and the `kinde-emulator` binary).

pub(crate) mod capture;

pub use capture::{Capture, CaptureScope, Captured, capture};
