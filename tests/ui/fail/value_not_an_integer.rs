//! A `value` literal that is not an integer, or is above `u64::MAX`, is an error on it.
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
