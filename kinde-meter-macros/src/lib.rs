//! The `#[meter]` attribute; see the `kinde-meter` crate.
