//! A negative `value` literal is an error on the literal: usage only counts up.
use kinde_meter::meter;

#[meter(feature = "credits", value = -1)]
fn refund() {}

#[meter(feature = "credits", value = (-5))]
fn parenthesised() {}

fn main() {
    refund();
    parenthesised();
}
