//! `#[meter]` on a trait method without a body says to meter the method in the impl.
use kinde_meter::meter;

trait Api {
    #[meter(feature = "calls")]
    fn call(&self) -> u32;
}

struct Client;

impl Api for Client {
    fn call(&self) -> u32 {
        1
    }
}

fn main() {
    let _ = Client.call();
}
