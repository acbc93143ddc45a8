//! A `value` literal that is not a number (a string, a bool) is an error on it, and one
//! too large for a `u64` is too.
use kinde_meter::meter;

#[meter(feature = "rows", value = "3")]
fn string() {}

#[meter(feature = "rows", value = true)]
fn boolean() {}

#[meter(feature = "rows", value = 18446744073709551616)]
fn too_large() {}

fn main() {
    string();
    boolean();
    too_large();
}
