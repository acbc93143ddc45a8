//! A string-literal `agreement` must be a valid customer agreement id.
use kinde_meter::meter;

#[meter(feature = "calls", agreement = "not an id")]
fn spaces() {}

#[meter(feature = "calls", agreement = "")]
fn empty() {}

fn main() {
    spaces();
    empty();
}
