//! `#[meter]` on a struct (or an enum) is an error on its keyword.
use kinde_meter::meter;

#[meter(feature = "widgets")]
struct Widget {
    size: u32,
}

#[meter(feature = "widgets")]
pub enum Kind {
    Small,
}

fn main() {
    let _ = Widget { size: 1 }.size;
    let _ = Kind::Small;
}
