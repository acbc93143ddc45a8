//! `impl Trait` in argument and return position, nested in generic arguments, in every mode.
#![deny(warnings)]

use std::fmt::Display;

use kinde_meter::{enter_agreement, meter, testing};

#[meter(feature = "shows", on = "ok")]
fn show(value: impl Display) -> Option<impl Display> {
    let text = value.to_string();
    if text.is_empty() {
        return None;
    }
    Some(text)
}

#[meter(feature = "evens", on = "return")]
fn evens(limit: u32) -> impl Iterator<Item = u32> {
    (0..limit).filter(|n| n % 2 == 0)
}

#[meter(feature = "pairs", on = "ok")]
fn pairs(n: u32) -> Result<(impl Display, Vec<impl Display>), String> {
    Ok((n, vec![n + 1]))
}

#[meter(feature = "async_shows", on = "ok")]
async fn show_async(value: impl Display) -> Result<impl Display, String> {
    Ok(value.to_string())
}

#[meter(feature = "async_iters", on = "return")]
async fn iter_async(limit: u32) -> impl Iterator<Item = u32> {
    0..limit
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let capture = testing::capture();
    let _scope = enter_agreement("agreement_acme".parse().expect("valid id"));
    assert_eq!(show(5).map(|s| s.to_string()), Some("5".to_owned()));
    assert!(show("").is_none());
    assert_eq!(evens(5).count(), 3);
    assert!(pairs(1).is_ok());
    assert!(show_async(1).await.is_ok());
    assert_eq!(iter_async(3).await.count(), 3);
    for feature in ["shows", "evens", "pairs", "async_shows", "async_iters"] {
        assert_eq!(capture.total("agreement_acme", feature), 1, "{feature}");
    }
}
