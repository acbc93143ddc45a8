//! A feature code may only hold ASCII letters, digits, `_`, `-` and `.`.
use kinde_meter::meter;

#[meter(feature = "api calls")]
fn space() {}

#[meter(feature = "café")]
fn accent() {}

#[meter(feature = "a/b")]
fn slash() {}

fn main() {
    space();
    accent();
    slash();
}
