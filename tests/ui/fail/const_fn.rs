//! `#[meter]` cannot meter a `const fn`: the error is on `const`.
use kinde_meter::meter;

#[meter(feature = "hashes")]
const fn hash(x: u64) -> u64 {
    x.wrapping_mul(31)
}

fn main() {
    let _ = hash(1);
}
