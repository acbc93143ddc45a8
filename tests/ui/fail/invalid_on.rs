//! `on` must be "call", "return" or "ok": anything else is an error on the value.
use kinde_meter::meter;

#[meter(feature = "exports", on = "success")]
fn unknown_mode() {}

#[meter(feature = "exports", on = call)]
fn not_a_string() {}

#[meter(feature = "exports", on = return)]
fn keyword() -> u8 {
    1
}

fn main() {
    unknown_mode();
    not_a_string();
    let _ = keyword();
}
