//! `#[meter]` on a module is an error on `mod`.
use kinde_meter::meter;

#[meter(feature = "calls")]
mod api {
    pub fn call() {}
}

fn main() {
    api::call();
}
