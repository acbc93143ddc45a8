//! The `dead_code` lint still fires on a metered function that is never called.
#![deny(dead_code)]
use kinde_meter::meter;

#[meter(feature = "unused")]
fn never_called() -> u32 {
    1
}

#[meter(feature = "unused", on = "ok")]
async fn never_called_async() -> Option<u32> {
    Some(1)
}

fn main() {}
