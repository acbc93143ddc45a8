//! Recursive metered functions record once per call, sync and async.
#![deny(warnings)]

use std::future::Future;
use std::pin::Pin;

use kinde_meter::{enter_agreement, meter, testing};

#[meter(feature = "factorials", on = "return")]
fn factorial(n: u64) -> u64 {
    if n <= 1 { 1 } else { n * factorial(n - 1) }
}

#[meter(feature = "depths", on = "ok")]
fn depth(n: u32) -> Option<u32> {
    if n == 0 {
        return Some(0);
    }
    Some(depth(n - 1)? + 1)
}

#[meter(feature = "async_counts")]
fn count_down(n: u32) -> Pin<Box<dyn Future<Output = u32>>> {
    Box::pin(async move {
        if n == 0 {
            return 0;
        }
        count_down(n - 1).await + 1
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let capture = testing::capture();
    let _scope = enter_agreement("agreement_acme".parse().expect("valid id"));
    assert_eq!(factorial(5), 120);
    assert_eq!(depth(3), Some(3));
    assert_eq!(count_down(3).await, 3);
    assert_eq!(capture.total("agreement_acme", "factorials"), 5);
    assert_eq!(capture.total("agreement_acme", "depths"), 4);
    assert_eq!(capture.total("agreement_acme", "async_counts"), 4);
}
