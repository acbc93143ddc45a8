//! One-line bodies (kept by `rustfmt::skip`) raise no `unused_braces` warning in any mode.
#![deny(warnings)]

use kinde_meter::meter;

#[rustfmt::skip]
#[meter(feature = "a")]
fn a() -> u8 { 1 }

#[rustfmt::skip]
#[meter(feature = "b", on = "return")]
fn b() -> u8 { 2 }

#[rustfmt::skip]
#[meter(feature = "c", on = "ok")]
fn c() -> Option<u8> { Some(3) }

#[rustfmt::skip]
#[meter(feature = "d")]
async fn d() -> u8 { 4 }

#[rustfmt::skip]
#[meter(feature = "e", on = "return")]
async fn e() -> u8 { 5 }

#[rustfmt::skip]
#[meter(feature = "f", on = "ok")]
async fn f() -> Option<u8> { Some(6) }

#[rustfmt::skip]
#[meter(feature = "g")]
fn g() {}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    g();
    assert_eq!(Some(a() + b()), c());
    assert_eq!(d().await + e().await, 9);
    assert_eq!(f().await, Some(6));
}
