//! `meter_type` must be "delta" or "absolute": anything else is an error on the value.
use kinde_meter::meter;

#[meter(feature = "seats", meter_type = "gauge")]
fn gauge() {}

#[meter(feature = "seats", meter_type = Absolute)]
fn not_a_string() {}

fn main() {
    gauge();
    not_a_string();
}
