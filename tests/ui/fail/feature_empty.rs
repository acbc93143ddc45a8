//! `feature` must not be empty.
use kinde_meter::meter;

#[meter(feature = "")]
fn empty() {}

fn main() {
    empty();
}
