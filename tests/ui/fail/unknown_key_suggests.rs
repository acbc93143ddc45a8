//! An unknown key is an error on the key that suggests the nearest valid one.
use kinde_meter::meter;

#[meter(feature = "exports", vaule = 2)]
fn misspelt_value() {}

#[meter(featur = "exports")]
fn misspelt_feature() {}

#[meter(feature = "exports", type = "absolute")]
fn partial_key() {}

#[meter(feature = "exports", when = "return")]
fn unrelated_key() {}

fn main() {
    misspelt_value();
    misspelt_feature();
    partial_key();
    unrelated_key();
}
