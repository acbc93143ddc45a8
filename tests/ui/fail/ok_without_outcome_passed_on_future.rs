//! `on = "ok"` on a function passing on a future whose output lacks `Outcome` errs on the
//! output, whatever the function returns it from.
use kinde_meter::meter;
use std::future::Future;
use std::pin::Pin;

struct Receipt;

#[meter(feature = "exports", on = "ok")]
fn export_ready(early: bool) -> impl Future<Output = Receipt> {
    if early {
        return std::future::ready(Receipt);
    }
    std::future::ready(Receipt)
}

#[meter(feature = "exports", on = "ok")]
fn export_boxed() -> Pin<Box<dyn Future<Output = Receipt> + Send>> {
    let fut = std::future::ready(Receipt);
    Box::pin(fut)
}

fn main() {}
