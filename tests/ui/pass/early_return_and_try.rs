//! `?` and early `return`s (also in loops, closures and nested fns) in every mode.
#![deny(warnings)]

use kinde_meter::{enter_agreement, meter, testing};

#[meter(feature = "ok_mode", on = "ok")]
fn ok_mode(input: &str) -> Result<u32, String> {
    let parse = |s: &str| -> Result<u32, String> {
        if s.is_empty() {
            return Err("empty".to_owned());
        }
        s.parse().map_err(|_| "nan".to_owned())
    };
    fn double(n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        n * 2
    }
    for word in input.split(',') {
        if word == "stop" {
            return Ok(0);
        }
    }
    let n = parse(input)?;
    if n > 100 {
        return Err("too big".to_owned());
    }
    Ok(double(n))
}

#[meter(feature = "return_mode", on = "return")]
fn return_mode(input: &str) -> Option<u32> {
    if input.is_empty() {
        return None;
    }
    let n: u32 = input.parse().ok()?;
    Some(n)
}

#[meter(feature = "call_mode")]
fn call_mode(input: &str) -> Result<u32, std::num::ParseIntError> {
    let n = input.parse::<u32>()?;
    if n == 0 {
        return Ok(1);
    }
    Ok(n)
}

#[meter(feature = "unit_return", on = "return")]
fn unit_return(flag: bool) {
    if flag {
        return;
    }
    std::hint::black_box(flag);
}

#[meter(feature = "async_ok", on = "ok")]
async fn async_ok(input: &str) -> Result<u32, String> {
    if input.is_empty() {
        return Err("empty".to_owned());
    }
    let n: u32 = input.parse().map_err(|_| "nan".to_owned())?;
    Ok(n)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let capture = testing::capture();
    let _scope = enter_agreement("agreement_acme".parse().expect("valid id"));
    assert_eq!(ok_mode("a,stop"), Ok(0));
    assert_eq!(ok_mode("21"), Ok(42));
    assert!(ok_mode("").is_err());
    assert!(ok_mode("x").is_err());
    assert!(ok_mode("101").is_err());
    assert_eq!(return_mode(""), None);
    assert_eq!(return_mode("x"), None);
    assert_eq!(return_mode("3"), Some(3));
    assert!(call_mode("x").is_err());
    assert_eq!(call_mode("0"), Ok(1));
    unit_return(true);
    unit_return(false);
    assert!(async_ok("").await.is_err());
    assert!(async_ok("x").await.is_err());
    assert_eq!(async_ok("4").await, Ok(4));
    assert_eq!(capture.total("agreement_acme", "ok_mode"), 2);
    assert_eq!(capture.total("agreement_acme", "return_mode"), 3);
    assert_eq!(capture.total("agreement_acme", "call_mode"), 2);
    assert_eq!(capture.total("agreement_acme", "unit_return"), 2);
    assert_eq!(capture.total("agreement_acme", "async_ok"), 1);
}
