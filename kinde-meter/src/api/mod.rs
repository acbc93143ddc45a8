//! Kinde's billing API: wire model and client.
mod model;
pub use model::*;
