//! `#[meter]` on a trait is an error on `trait`.
use kinde_meter::meter;

#[meter(feature = "calls")]
trait Api {
    fn call(&self);
}

fn main() {}
