//! Under `#[track_caller]`, `Location::caller()` in a metered fn is still the caller's.
#![deny(warnings)]

use std::panic::Location;

use kinde_meter::meter;

#[track_caller]
#[meter(feature = "located")]
fn located() -> &'static Location<'static> {
    Location::caller()
}

#[meter(feature = "located_return", on = "return")]
#[track_caller]
fn located_return() -> &'static Location<'static> {
    Location::caller()
}

#[track_caller]
#[meter(feature = "located_ok", on = "ok")]
fn located_ok() -> Option<&'static Location<'static>> {
    Some(Location::caller())
}

fn main() {
    let here = line!();
    assert_eq!(located().line(), here + 1);
    assert_eq!(located_return().line(), here + 2);
    assert_eq!(located_ok().map(Location::line), Some(here + 3));
    assert_eq!(located().file(), file!());
}
