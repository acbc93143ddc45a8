//! `feature` is required: `#[meter]` with no `feature` is an error on the attribute.
use kinde_meter::meter;

#[meter]
fn bare() {}

#[meter(value = 2)]
fn no_feature() {}

fn main() {
    bare();
    no_feature();
}
