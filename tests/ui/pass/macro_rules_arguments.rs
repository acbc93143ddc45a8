//! `#[meter]` written by `macro_rules!` macros: every key passed as each fragment kind it
//! can be (the compiler wraps most in invisible groups), also through a second macro.
#![deny(warnings)]

use std::future::Future;

use kinde_meter::{AgreementId, enter_agreement, meter, testing};

mod reexports {
    pub(crate) use kinde_meter as billing;
}

const ACME: &str = "agreement_acme";

macro_rules! with_literals {
    ($name:ident: $f:literal, $o:literal, $v:literal, $a:literal, $t:literal) => {
        #[meter(feature = $f, on = $o, value = $v, agreement = $a, meter_type = $t)]
        fn $name() -> Option<u32> {
            Some(1)
        }
    };
}

macro_rules! with_exprs {
    ($name:ident($arg:ident): $f:expr, $o:expr, $v:expr, $a:expr, $t:expr, $c:expr) => {
        #[meter(feature = $f, on = $o, value = $v, agreement = $a, meter_type = $t, crate = $c)]
        fn $name($arg: &[u8]) -> Result<usize, String> {
            Ok($arg.len())
        }
    };
}

macro_rules! with_tts {
    ($name:ident: $f:tt, $o:tt, $v:tt, $a:tt, $t:tt, $c:tt) => {
        #[meter(feature = $f, on = $o, value = $v, agreement = $a, meter_type = $t, crate = $c)]
        fn $name() -> u32 {
            1
        }
    };
}

macro_rules! with_idents {
    ($name:ident($units:ident, $agreement:ident): $krate:ident) => {
        #[meter(feature = "with_idents", value = $units, agreement = $agreement, crate = $krate)]
        fn $name($units: u32, $agreement: &AgreementId) -> u32 {
            $units
        }
    };
}

macro_rules! with_path {
    ($name:ident: $krate:path) => {
        #[meter(feature = "with_path", on = "return", crate = $krate)]
        fn $name() -> u32 {
            1
        }
    };
}

macro_rules! with_dollar_crate {
    ($name:ident) => {
        #[meter(feature = "with_dollar_crate", crate = $crate::reexports::billing)]
        fn $name() -> u32 {
            1
        }
    };
}

/// Fragments forwarded to another macro arrive in one invisible group per macro.
macro_rules! forwarded {
    ($name:ident($arg:ident): $feature:expr, $on:expr, $value:expr, $agreement:expr) => {
        with_exprs!($name($arg): $feature, $on, $value, $agreement, "delta", ::kinde_meter);
    };
}

/// The return type and the future as fragments too.
macro_rules! returns_future {
    ($name:ident -> $ret:ty { $fut:expr }) => {
        #[meter(feature = "returns_future", on = "return")]
        fn $name() -> $ret {
            Box::pin($fut)
        }
    };
}

with_literals!(literals: "with_literals", "ok", 2, "agreement_acme", "absolute");
with_exprs!(exprs(rows): "with_exprs", "ok", rows.len() * 2, ACME, "delta", ::kinde_meter);
with_tts!(tts: "with_tts", "return", 3, "agreement_acme", "delta", kinde_meter);
with_idents!(idents(units, agreement): kinde_meter);
with_path!(path: crate::reexports::billing);
with_dollar_crate!(dollar_crate);
forwarded!(forwarded_exprs(items): "forwarded", "return", items.len(), ACME);
returns_future!(boxed -> std::pin::Pin<Box<dyn Future<Output = u32> + Send>> { async { 4 } });

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let capture = testing::capture();
    let acme: AgreementId = ACME.parse().expect("valid id");
    let _scope = enter_agreement(acme.clone());

    assert_eq!(literals(), Some(1));
    assert_eq!(exprs(b"abc"), Ok(3));
    assert_eq!(tts(), 1);
    assert_eq!(idents(5, &acme), 5);
    assert_eq!(path() + dollar_crate(), 2);
    assert_eq!(forwarded_exprs(b"ab"), Ok(2));
    let never_polled = boxed();
    drop(never_polled);
    assert_eq!(boxed().await, 4);

    assert_eq!(capture.absolute(ACME, "with_literals"), Some(2));
    for (feature, total) in [
        ("with_exprs", 6),
        ("with_tts", 3),
        ("with_idents", 5),
        ("with_path", 1),
        ("with_dollar_crate", 1),
        ("forwarded", 2),
        ("returns_future", 1),
    ] {
        assert_eq!(capture.total(ACME, feature), total, "{feature}");
    }
}
