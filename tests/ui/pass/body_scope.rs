//! The body's own `use`s, items and locals and the generated names cannot reach each other.
#![deny(warnings)]

use kinde_meter::{enter_agreement, meter, testing};

#[derive(Debug, PartialEq)]
enum Answer {
    Some(u32),
    None,
}

#[meter(feature = "shadows", on = "ok")]
fn shadows(n: u32) -> Option<u32> {
    #[allow(unused_imports)]
    use Answer::*;
    struct CallSite;
    static __KINDE_METER_SITE: u32 = 1;
    let __kinde_meter_pending = CallSite;
    let __kinde_meter_ret = __KINDE_METER_SITE;
    let _ = __kinde_meter_pending;
    let answer = if n > 0 { Some(n) } else { None };
    assert_eq!(answer == None, n == 0);
    Option::Some(n + __kinde_meter_ret)
}

#[meter(feature = "shadows_async", on = "return")]
async fn shadows_async(n: u32) -> u32 {
    #[allow(dead_code)]
    struct Pending;
    let __kinde_meter_fake_return = n;
    __kinde_meter_fake_return * 2
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let capture = testing::capture();
    let _scope = enter_agreement("agreement_acme".parse().expect("valid id"));
    assert_eq!(shadows(1), Option::Some(2));
    assert_eq!(shadows_async(3).await, 6);
    assert_eq!(capture.total("agreement_acme", "shadows"), 1);
    assert_eq!(capture.total("agreement_acme", "shadows_async"), 1);
}
