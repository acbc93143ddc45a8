//! `#[meter]` on a const, a static, a type alias or a `use` is an error on its keyword.
use kinde_meter::meter;

#[meter(feature = "limits")]
const LIMIT: u32 = 3;

#[meter(feature = "limits")]
static COUNT: u32 = 0;

#[meter(feature = "limits")]
type Limit = u32;

#[meter(feature = "limits")]
use std::collections::HashMap;

fn main() {
    let _: Limit = LIMIT + COUNT;
    let _ = HashMap::<u8, u8>::new();
}
