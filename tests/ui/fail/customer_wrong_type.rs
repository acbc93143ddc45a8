//! A `customer` expression that is not a customer is an error that says so.
use kinde_meter::meter;

#[meter(feature = "rows", customer = org_code)]
fn rows(org_code: &str) -> usize {
    org_code.len()
}

fn main() {
    rows("org_acme");
}
