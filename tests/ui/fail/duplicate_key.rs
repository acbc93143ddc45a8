//! A key given twice is an error on its second occurrence.
use kinde_meter::meter;

#[meter(feature = "exports", on = "return", value = 2, on = "ok")]
fn twice() -> Option<u8> {
    None
}

#[meter(feature = "exports", feature = "imports")]
fn two_features() {}

fn main() {
    let _ = twice();
    two_features();
}
