//! Two `#[meter]`s on one function meter two features, each in its own mode.
#![deny(warnings)]

use kinde_meter::{enter_agreement, meter, testing};

#[meter(feature = "requests")]
#[meter(feature = "rows", on = "ok", value = rows.len())]
fn import(rows: &[u8]) -> Option<usize> {
    if rows.is_empty() {
        return None;
    }
    Some(rows.len())
}

#[meter(feature = "async_requests", on = "return")]
#[meter(feature = "async_rows", on = "ok", value = rows.len())]
async fn import_async(rows: Vec<u8>) -> Result<usize, String> {
    if rows.is_empty() {
        return Err("empty".to_owned());
    }
    Ok(rows.len())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let capture = testing::capture();
    let _scope = enter_agreement("agreement_acme".parse().expect("valid id"));
    assert_eq!(import(b"abc"), Some(3));
    assert_eq!(import(b""), None);
    assert_eq!(import_async(vec![1, 2]).await, Ok(2));
    assert!(import_async(Vec::new()).await.is_err());
    assert_eq!(capture.total("agreement_acme", "requests"), 2);
    assert_eq!(capture.total("agreement_acme", "rows"), 3);
    assert_eq!(capture.total("agreement_acme", "async_requests"), 2);
    assert_eq!(capture.total("agreement_acme", "async_rows"), 2);
}
