//! `#[meter]` on an impl block is an error on `impl` that says to put it on the methods.
use kinde_meter::meter;

struct Api;

#[meter(feature = "calls")]
impl Api {
    fn call(&self) {}
}

fn main() {
    Api.call();
}
