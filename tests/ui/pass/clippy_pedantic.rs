//! The generated code raises none of clippy's pedantic or nursery lints, in any mode.
#![deny(warnings)]
#![warn(clippy::pedantic, clippy::nursery)]

use std::future::Future;
use std::pin::Pin;

use kinde_meter::{AgreementId, meter};

#[meter(feature = "call")]
fn call() -> u32 {
    1
}

#[meter(feature = "ret", on = "return", value = rows.len())]
fn ret(rows: &[u8]) -> usize {
    rows.len()
}

#[meter(feature = "ok", on = "ok", agreement = agreement)]
fn ok(agreement: &AgreementId, n: u32) -> Result<u32, String> {
    if n == 0 {
        return Err(agreement.to_string());
    }
    Ok(n)
}

#[meter(feature = "async_call")]
async fn async_call() -> u32 {
    tokio::task::yield_now().await;
    1
}

#[meter(feature = "async_ret", on = "return")]
async fn async_ret() -> u32 {
    tokio::task::yield_now().await;
    2
}

#[meter(feature = "async_ok", on = "ok")]
async fn async_ok(n: u32) -> Option<u32> {
    tokio::task::yield_now().await;
    n.checked_sub(1)
}

#[meter(feature = "boxed", on = "ok")]
fn boxed(n: u32) -> Pin<Box<dyn Future<Output = Option<u32>> + Send>> {
    Box::pin(async move { n.checked_sub(1) })
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let acme: AgreementId = "agreement_acme".parse().expect("valid id");
    assert_eq!(call() + async_call().await + async_ret().await, 4);
    assert_eq!(ret(b"ab"), 2);
    assert_eq!(ok(&acme, 1), Ok(1));
    assert_eq!(async_ok(1).await, Some(0));
    assert_eq!(boxed(1).await, Some(0));
}
