//! Explicit-`return` code under clippy's `implicit_return` stays lint-free in every mode.
#![deny(warnings, clippy::implicit_return)]
#![allow(clippy::needless_return)]

use kinde_meter::{enter_agreement, meter, testing};

#[meter(feature = "call")]
fn call(x: u32) -> u32 {
    return x + 1;
}

#[meter(feature = "ret", on = "return")]
fn ret(x: u32) -> u32 {
    return x + 1;
}

#[meter(feature = "ok", on = "ok")]
fn ok(x: u32) -> Option<u32> {
    return Some(x);
}

#[meter(feature = "async_call")]
async fn async_call(x: u32) -> u32 {
    return x;
}

#[meter(feature = "async_ret", on = "return")]
async fn async_ret(x: u32) -> u32 {
    return x;
}

#[meter(feature = "async_ok", on = "ok")]
async fn async_ok(x: u32) -> Option<u32> {
    return Some(x);
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let capture = testing::capture();
    let _scope = enter_agreement("agreement_acme".parse().expect("valid id"));
    assert_eq!(call(1) + ret(1), 4);
    assert_eq!(ok(1), Some(1));
    assert_eq!(async_call(1).await + async_ret(1).await, 2);
    assert_eq!(async_ok(1).await, Some(1));
    for feature in ["call", "ret", "ok", "async_call", "async_ret", "async_ok"] {
        assert_eq!(capture.total("agreement_acme", feature), 1, "{feature}");
    }
    return;
}
