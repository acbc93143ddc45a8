//! Test support.
mod emulator;
pub use emulator::*;
