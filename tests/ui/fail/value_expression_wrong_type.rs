//! A `value` expression whose type is not an integer is an error that says so.
use kinde_meter::meter;

#[meter(feature = "storage", value = gigabytes)]
fn store(gigabytes: f64) -> f64 {
    gigabytes
}

#[meter(feature = "rows", value = name)]
fn rows(name: &str) -> usize {
    name.len()
}

fn main() {
    store(1.5);
    rows("a");
}
