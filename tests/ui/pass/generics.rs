//! Generic functions with bounds and where clauses, lifetimes and const generics.
#![deny(warnings)]

use std::fmt::Display;

use kinde_meter::{enter_agreement, meter, testing};

#[meter(feature = "joins", value = items.len())]
fn join<T: Display, S>(items: &[T], sep: S) -> String
where
    S: AsRef<str>,
{
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(sep.as_ref())
}

#[meter(feature = "longest", on = "return")]
fn longest<'a, 'b: 'a>(a: &'a str, b: &'b str) -> &'a str {
    if a.len() >= b.len() { a } else { b }
}

#[meter(feature = "chunks", on = "ok", value = N)]
fn first_chunk<const N: usize, T: Copy + Default>(items: &[T]) -> Option<[T; N]> {
    let mut out = [T::default(); N];
    out.copy_from_slice(items.get(..N)?);
    Some(out)
}

#[meter(feature = "async_sums", on = "ok", value = items.len())]
async fn sum<'a, I>(items: &'a [I]) -> Result<i64, String>
where
    I: Copy + Into<i64> + 'a,
{
    Ok(items.iter().map(|&i| i.into()).sum())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let capture = testing::capture();
    let _scope = enter_agreement("agreement_acme".parse().expect("valid id"));
    assert_eq!(join(&[1, 2, 3], ", "), "1, 2, 3");
    assert_eq!(longest("abc", "de"), "abc");
    assert_eq!(first_chunk::<2, u8>(&[1, 2, 3]), Some([1, 2]));
    assert_eq!(first_chunk::<4, u8>(&[1, 2, 3]), None);
    assert_eq!(sum(&[1i32, 2, 3]).await, Ok(6));
    assert_eq!(capture.total("agreement_acme", "joins"), 3);
    assert_eq!(capture.total("agreement_acme", "longest"), 1);
    assert_eq!(capture.total("agreement_acme", "chunks"), 2);
    assert_eq!(capture.total("agreement_acme", "async_sums"), 3);
}
