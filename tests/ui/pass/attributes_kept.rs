//! Docs, attributes and visibility are kept; `#[meter]` works through `cfg_attr`, in any order.
#![deny(warnings)]

mod api {
    use kinde_meter::meter;

    /// Documented, inlined, `must_use` and `pub(crate)`: all kept.
    #[inline]
    #[must_use = "the count is the point"]
    #[meter(feature = "counts")]
    #[allow(clippy::needless_pass_by_value)]
    pub(crate) fn count(items: Vec<u8>) -> usize {
        items.len()
    }

    #[cfg_attr(not(any()), meter(feature = "optional", on = "return"))]
    #[cfg_attr(any(), deprecated)]
    pub(crate) fn optional() -> u8 {
        1
    }

    #[meter(feature = "deprecated")]
    #[deprecated(note = "use `count`")]
    pub(crate) fn old() -> u8 {
        2
    }
}

#[allow(deprecated)]
fn main() {
    let capture = kinde_meter::testing::capture();
    assert_eq!(api::count(vec![1, 2]), 2);
    assert_eq!(api::optional() + api::old(), 3);
    assert_eq!(capture.unattributed("counts"), 1);
    assert_eq!(capture.unattributed("optional"), 1);
    assert_eq!(capture.unattributed("deprecated"), 1);
}
