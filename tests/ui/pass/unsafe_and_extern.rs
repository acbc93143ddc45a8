//! `unsafe fn`, `extern "C" fn` and `async unsafe fn` keep their qualifiers as written.
#![deny(warnings)]

use kinde_meter::{enter_agreement, meter, testing};

/// # Safety
/// `ptr` must be valid for reads.
#[meter(feature = "reads")]
unsafe fn read(ptr: *const u32) -> u32 {
    // SAFETY: the caller promises `ptr` is valid.
    unsafe { *ptr }
}

#[meter(feature = "callbacks", on = "return")]
extern "C" fn callback(x: i32) -> i32 {
    x + 1
}

/// # Safety
/// `ptr` must be valid for reads.
#[meter(feature = "raw_reads", on = "return")]
pub(crate) unsafe extern "C" fn read_c(ptr: *const u32) -> u32 {
    // SAFETY: the caller promises `ptr` is valid.
    unsafe { *ptr }
}

/// # Safety
/// `ptr` must be valid for reads until the future completes.
#[meter(feature = "async_reads", on = "ok")]
async unsafe fn read_async(ptr: *const u32) -> Option<u32> {
    // SAFETY: the caller promises `ptr` is valid.
    Some(unsafe { *ptr })
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let capture = testing::capture();
    let _scope = enter_agreement("agreement_acme".parse().expect("valid id"));
    let value = 7u32;
    // SAFETY: `value` is a live local.
    assert_eq!(unsafe { read(&value) }, 7);
    assert_eq!(callback(1), 2);
    // SAFETY: `value` is a live local.
    assert_eq!(unsafe { read_c(&value) }, 7);
    // SAFETY: `value` outlives the awaited future.
    assert_eq!(unsafe { read_async(&value) }.await, Some(7));
    for feature in ["reads", "callbacks", "raw_reads", "async_reads"] {
        assert_eq!(capture.total("agreement_acme", feature), 1, "{feature}");
    }
}
