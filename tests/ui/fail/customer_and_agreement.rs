//! `customer` and `agreement` both say whom to bill: one of them, not both.
use kinde_meter::{AgreementId, Customer, meter};

#[meter(feature = "rows", agreement = id, customer = who)]
fn rows(id: &AgreementId, who: &Customer) {
    let _ = (id, who);
}

fn main() {}
