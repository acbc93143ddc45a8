//! A float `value` literal is an error on the literal: usage is counted in whole units.
use kinde_meter::meter;

#[meter(feature = "gigabytes", value = 1.5)]
fn fractional() {}

#[meter(feature = "gigabytes", value = 2f64)]
fn suffixed() {}

fn main() {
    fractional();
    suffixed();
}
