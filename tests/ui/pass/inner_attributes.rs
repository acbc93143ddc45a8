//! Inner attributes of the body (`#![allow(..)]`) keep applying to the whole body.
#![deny(warnings)]

use kinde_meter::meter;

#[meter(feature = "legacy")]
fn legacy() -> u32 {
    #![allow(unused_variables, non_snake_case)]
    let Unused = 1;
    2
}

#[meter(feature = "legacy_async", on = "return")]
async fn legacy_async() -> u32 {
    #![allow(unused_mut)]
    let mut value = 1;
    value + 1
}

#[meter(feature = "legacy_ok", on = "ok")]
fn legacy_ok() -> Option<u32> {
    #![allow(clippy::unnecessary_wraps)]
    Some(1)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    assert_eq!(legacy(), 2);
    assert_eq!(legacy_async().await, 2);
    assert_eq!(legacy_ok(), Some(1));
}
