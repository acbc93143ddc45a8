//! Functions returning a future built in their last expression meter that future.
#![deny(warnings)]

use std::future::Future;
use std::pin::Pin;

use kinde_meter::{AgreementId, meter, testing, with_agreement};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[meter(feature = "boxed_call", value = name.len())]
fn boxed_call(name: &str) -> BoxFuture<'_, usize> {
    let len = name.len();
    Box::pin(async move { len })
}

#[meter(feature = "boxed_return", on = "return")]
fn boxed_return(n: u32) -> Pin<Box<dyn Future<Output = u32> + Send>> {
    Box::pin(async move {
        tokio::task::yield_now().await;
        n * 2
    })
}

#[meter(feature = "boxed_ok", on = "ok")]
fn boxed_ok(
    n: u32,
) -> std::pin::Pin<std::boxed::Box<dyn Future<Output = Result<u32, String>> + Send>> {
    std::boxed::Box::pin(async move {
        if n == 0 {
            return Err("zero".to_owned());
        }
        Ok(n)
    })
}

#[meter(feature = "block_call")]
fn block_call(n: u32) -> impl Future<Output = u32> + Send {
    async move { n + 1 }
}

#[meter(feature = "block_ok", on = "ok", value = n)]
fn block_ok(n: u64) -> impl Future<Output = Option<u64>> {
    let doubled = n * 2;
    async move { doubled.checked_sub(2) }
}

// Each fixture is a program of its own (trybuild builds them one by one): helpers and
// the capture setup are repeated in each rather than shared.
fn assert_send<T: Send>(value: T) -> T {
    value
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let capture = testing::capture();
    let acme: AgreementId = "agreement_acme".parse().expect("valid id");
    with_agreement(acme, async {
        // Building the futures records nothing.
        drop(boxed_call("abc"));
        drop(block_call(1));
        assert_eq!(boxed_call("abcd").await, 4);
        assert_eq!(assert_send(boxed_return(2)).await, 4);
        assert_eq!(boxed_ok(3).await, Ok(3));
        assert!(boxed_ok(0).await.is_err());
        assert_eq!(assert_send(block_call(1)).await, 2);
        assert_eq!(block_ok(2).await, Some(2));
        assert_eq!(block_ok(0).await, None);
    })
    .await;
    assert_eq!(capture.total("agreement_acme", "boxed_call"), 4);
    assert_eq!(capture.total("agreement_acme", "boxed_return"), 1);
    assert_eq!(capture.total("agreement_acme", "boxed_ok"), 1);
    assert_eq!(capture.total("agreement_acme", "block_call"), 1);
    assert_eq!(capture.total("agreement_acme", "block_ok"), 2);
}
