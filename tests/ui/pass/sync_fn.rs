//! A sync fn in each `on` mode records once per call, for the agreement in scope.
#![deny(warnings)]

use kinde_meter::{enter_agreement, meter, testing};

/// Doc comments stay on the function.
#[meter(feature = "searches")]
fn search(query: &str) -> usize {
    query.len()
}

#[meter(feature = "renders", on = "return", value = pages)]
fn render(pages: u32) -> u32 {
    pages * 2
}

#[meter(feature = "imports", on = "ok")]
fn import(rows: &[u8]) -> Result<usize, String> {
    if rows.is_empty() {
        return Err("nothing to import".to_owned());
    }
    Ok(rows.len())
}

#[meter(feature = "pings")]
fn ping() {}

fn main() {
    let capture = testing::capture();
    let _scope = enter_agreement("agreement_acme".parse().expect("valid id"));
    assert_eq!(search("abc"), 3);
    assert_eq!(render(5), 10);
    assert_eq!(import(b"xy"), Ok(2));
    assert!(import(b"").is_err());
    ping();
    assert_eq!(capture.total("agreement_acme", "searches"), 1);
    assert_eq!(capture.total("agreement_acme", "renders"), 5);
    assert_eq!(capture.total("agreement_acme", "imports"), 1);
    assert_eq!(capture.total("agreement_acme", "pings"), 1);
}
