//! `crate = path` reaches a re-export; a local module named `kinde_meter` changes nothing.
#![deny(warnings)]

mod reexports {
    pub(crate) use kinde_meter as billing;
}

mod kinde_meter {
    // A local module with the crate's name must not capture the expansion's paths.
}

use ::kinde_meter::{enter_agreement, meter, testing};

#[meter(feature = "renamed", crate = crate::reexports::billing)]
fn renamed() -> u32 {
    1
}

#[meter(feature = "absolute_path", on = "ok", crate = ::kinde_meter)]
fn absolute_path() -> Option<u32> {
    Some(2)
}

#[meter(feature = "shadowed")]
fn shadowed() -> u32 {
    3
}

fn main() {
    let capture = testing::capture();
    let _scope = enter_agreement("agreement_acme".parse().expect("valid id"));
    assert_eq!(renamed() + absolute_path().unwrap_or(0) + shadowed(), 6);
    for feature in ["renamed", "absolute_path", "shadowed"] {
        assert_eq!(capture.total("agreement_acme", feature), 1, "{feature}");
    }
}
