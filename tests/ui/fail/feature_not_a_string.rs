//! `feature` must be a string literal: a constant or an identifier is an error on it.
use kinde_meter::meter;

const FEATURE: &str = "api_calls";

#[meter(feature = FEATURE)]
fn constant() {}

#[meter(feature = 42)]
fn number() {}

fn main() {
    constant();
    number();
}
