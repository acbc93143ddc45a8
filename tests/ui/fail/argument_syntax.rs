//! A bare string, a key without a value and a non-path `crate` are errors on those tokens.
use kinde_meter::meter;

#[meter("api_calls")]
fn positional() {}

#[meter(feature)]
fn no_value() {}

#[meter(feature = "api_calls", crate = "kinde_meter")]
fn crate_string() {}

fn main() {
    positional();
    no_value();
    crate_string();
}
