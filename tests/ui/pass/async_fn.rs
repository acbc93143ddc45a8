//! An `async fn` in each `on` mode, with `?`, `return` and `.collect()` typed as declared.
#![deny(warnings)]

use kinde_meter::{AgreementId, meter, testing, with_agreement};

#[meter(feature = "lookups")]
async fn lookup(id: u32) -> u32 {
    id + 1
}

#[meter(feature = "uploads", on = "return", value = parts.len())]
async fn upload(parts: Vec<u8>) -> usize {
    if parts.is_empty() {
        return 0;
    }
    parts.into_iter().map(usize::from).sum()
}

#[meter(feature = "parses", on = "ok")]
async fn parse_all(inputs: &[&str]) -> Result<Vec<u32>, std::num::ParseIntError> {
    let first: u32 = inputs.first().copied().unwrap_or("0").parse()?;
    let rest = inputs
        .iter()
        .skip(1)
        .map(|s| s.parse())
        .collect::<Result<Vec<u32>, _>>()?;
    Ok(std::iter::once(first).chain(rest).collect())
}

#[meter(feature = "finds", on = "ok")]
async fn find(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

#[meter(feature = "nothing", on = "return")]
async fn nothing() {}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let capture = testing::capture();
    let acme: AgreementId = "agreement_acme".parse().expect("valid id");
    with_agreement(acme, async {
        assert_eq!(lookup(1).await, 2);
        assert_eq!(upload(vec![1, 2, 3]).await, 6);
        assert_eq!(upload(Vec::new()).await, 0);
        assert_eq!(parse_all(&["1", "2"]).await, Ok(vec![1, 2]));
        assert!(parse_all(&["x"]).await.is_err());
        assert_eq!(find(2, &[1, 2]).await, Some(1));
        assert_eq!(find(9, &[1, 2]).await, None);
        nothing().await;
    })
    .await;
    assert_eq!(capture.total("agreement_acme", "lookups"), 1);
    assert_eq!(capture.total("agreement_acme", "uploads"), 3);
    assert_eq!(capture.total("agreement_acme", "parses"), 1);
    assert_eq!(capture.total("agreement_acme", "finds"), 1);
    assert_eq!(capture.total("agreement_acme", "nothing"), 1);
}
