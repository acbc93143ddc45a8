//! Every future a function returns is metered: early `return`s, futures built before the
//! last expression or elsewhere, boxed or not, and nothing counts before the future runs.
#![deny(warnings)]
#![allow(clippy::todo, clippy::unimplemented, dead_code)]

use std::future::Future;
use std::pin::Pin;

use kinde_meter::{AgreementId, meter, testing, with_agreement};

/// The `futures` crate's alias, which the macro recognizes by name.
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// An alias the macro cannot read: the `Box::pin(..)` at the end says it is a future.
type Job = Pin<Box<dyn Future<Output = u32> + Send>>;

fn make(n: u32) -> impl Future<Output = u32> + Send + Unpin {
    std::future::ready(n)
}

#[meter(feature = "built_first", on = "return")]
fn built_first(n: u32) -> Pin<Box<dyn Future<Output = u32> + Send>> {
    let fut = async move { n };
    Box::pin(fut)
}

#[meter(feature = "early", value = n)]
fn early(n: u32) -> Pin<Box<dyn Future<Output = u32> + Send>> {
    if n == 0 {
        return Box::pin(make(0));
    }
    for i in 0..n {
        if i == 5 {
            // A `return` inside a closure returns from the closure: left alone.
            let five = |x: u32| -> u32 {
                if x > 100 {
                    return 100;
                }
                5
            };
            return Box::pin(make(five(i)));
        }
    }
    Box::pin(async move { n })
}

#[meter(feature = "early_ok", on = "ok")]
fn early_ok(n: u32) -> impl Future<Output = Result<u32, String>> {
    if n == 0 {
        return std::future::ready(Err("zero".to_owned()));
    }
    std::future::ready(Ok(n))
}

#[meter(feature = "passed_on", on = "return")]
fn passed_on(n: u32) -> impl Future<Output = u32> + Send + Unpin {
    make(n)
}

#[meter(feature = "alias_job", on = "return")]
fn alias_job(n: u32) -> Job {
    let fut = make(n);
    Box::pin(fut)
}

#[meter(feature = "alias_named")]
fn alias_named(n: u32) -> BoxFuture<'static, u32> {
    built_first(n)
}

#[meter(feature = "looped", on = "return")]
fn looped(mut n: u32) -> Pin<Box<dyn Future<Output = u32> + Send>> {
    loop {
        if n >= 7 {
            return Box::pin(make(n));
        }
        n += 1;
    }
}

#[meter(feature = "matched", on = "return")]
fn matched(n: u32) -> Pin<Box<dyn Future<Output = u32> + Send>> {
    match n {
        0 => Box::pin(make(0)),
        _ => built_first(n),
    }
}

struct Store {
    rows: Vec<u32>,
}

impl Store {
    #[meter(feature = "store_sum", on = "return")]
    fn sum(&self, skip: bool) -> Pin<Box<dyn Future<Output = u32> + Send + '_>> {
        if skip {
            return Box::pin(async { 0 });
        }
        let rows = &self.rows;
        Box::pin(async move { rows.iter().sum() })
    }
}

#[meter(feature = "generic", on = "return")]
fn generic<F: Future + Send>(fut: F) -> impl Future<Output = F::Output> + Send {
    fut
}

#[meter(feature = "stacked_call")]
#[meter(feature = "stacked_return", on = "return")]
fn stacked(n: u32) -> Pin<Box<dyn Future<Output = u32> + Send>> {
    if n == 0 {
        return Box::pin(make(0));
    }
    Box::pin(make(n))
}

#[meter(feature = "boxed_todo", on = "return")]
fn boxed_todo() -> Pin<Box<dyn Future<Output = u32>>> {
    todo!()
}

#[meter(feature = "boxed_unimplemented", on = "ok")]
fn boxed_unimplemented(early: bool) -> Pin<Box<dyn Future<Output = Option<u32>> + Send>> {
    if early {
        return Box::pin(async { None });
    }
    unimplemented!()
}

/// A pinned box that is not a future is a plain function: it counts when it returns.
#[meter(feature = "not_a_future", on = "return")]
fn not_a_future(n: u32) -> Pin<Box<dyn Iterator<Item = u32> + Unpin>> {
    Box::pin(0..n)
}

fn assert_send<T: Send>(value: T) -> T {
    value
}

fn assert_unpin<T: Unpin>(value: T) -> T {
    value
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let capture = testing::capture();
    let acme: AgreementId = "agreement_acme".parse().expect("valid id");
    with_agreement(acme, async {
        // Building the futures records nothing.
        drop((
            built_first(1),
            early(0),
            early(9),
            early_ok(1),
            passed_on(1),
        ));
        drop((alias_job(1), alias_named(1), matched(0), stacked(1)));
        drop(Store { rows: vec![1] }.sum(false));

        assert_eq!(assert_send(built_first(1)).await, 1);
        assert_eq!(early(0).await + early(9).await + early(3).await, 8);
        assert_eq!(early_ok(0).await, Err("zero".to_owned()));
        assert_eq!(early_ok(2).await, Ok(2));
        assert_eq!(assert_unpin(assert_send(passed_on(3))).await, 3);
        assert_eq!(alias_job(4).await + alias_named(5).await, 9);
        assert_eq!(matched(0).await + matched(6).await, 6);
        drop(looped(1));
        assert_eq!(looped(1).await, 7);
        let store = Store {
            rows: vec![1, 2, 3],
        };
        assert_eq!(store.sum(true).await + store.sum(false).await, 6);
        assert_eq!(generic(make(7)).await, 7);
        assert_eq!(stacked(0).await + stacked(8).await, 8);
        assert_eq!(Pin::into_inner(not_a_future(3)).count(), 3);
    })
    .await;
    for (feature, total) in [
        ("built_first", 1 + 1 + 1),
        ("early", 9 + 3),
        ("early_ok", 1),
        ("passed_on", 1),
        ("alias_job", 1),
        ("alias_named", 1),
        ("matched", 2),
        ("looped", 1),
        ("store_sum", 2),
        ("generic", 1),
        ("stacked_call", 2),
        ("stacked_return", 2),
        ("not_a_future", 1),
    ] {
        assert_eq!(capture.total("agreement_acme", feature), total, "{feature}");
    }
}
