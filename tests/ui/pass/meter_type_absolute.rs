//! `meter_type = "absolute"`: the last value recorded wins.
#![deny(warnings)]

use kinde_meter::{enter_agreement, meter, testing};

#[meter(feature = "seats", meter_type = "absolute", value = seats)]
fn set_seats(seats: u32) -> u32 {
    seats
}

#[meter(feature = "storage", meter_type = "absolute", on = "ok", value = bytes)]
async fn set_storage(bytes: u64) -> Result<u64, String> {
    Ok(bytes)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let capture = testing::capture();
    let _scope = enter_agreement("agreement_acme".parse().expect("valid id"));
    set_seats(10);
    set_seats(7);
    assert_eq!(set_storage(300).await, Ok(300));
    assert_eq!(capture.absolute("agreement_acme", "seats"), Some(7));
    assert_eq!(capture.absolute("agreement_acme", "storage"), Some(300));
    assert_eq!(capture.total("agreement_acme", "seats"), 0);
}
