//! Several mistakes in one attribute, and on the item, are all reported together.
use kinde_meter::meter;

#[meter(feture = "x y", value = -3, on = "always", value = 1.5, meter_type = "sum")]
const fn everything_wrong() -> u32 {
    1
}

#[meter(on = "never", crate = "kinde_meter", agreement = "")]
struct NotAFunction;

fn main() {
    let _ = everything_wrong();
    let _ = NotAFunction;
}
