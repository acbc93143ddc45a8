//! An `agreement` expression that is not an agreement id is an error that says so.
use kinde_meter::meter;

#[meter(feature = "rows", agreement = customer)]
fn rows(customer: u64) -> u64 {
    customer
}

fn main() {
    rows(7);
}
