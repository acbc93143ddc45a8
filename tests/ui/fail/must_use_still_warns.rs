//! `#[must_use]` on a metered function still warns when the result is ignored.
#![deny(unused_must_use)]
use kinde_meter::meter;

#[must_use]
#[meter(feature = "totals")]
fn total() -> u32 {
    1
}

#[meter(feature = "totals", on = "ok")]
#[must_use = "check whether the import worked"]
fn import() -> Option<u32> {
    Some(1)
}

fn main() {
    total();
    import();
}
