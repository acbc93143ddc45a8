//! Mistakes passed through `macro_rules!` fragments are errors on the tokens the caller wrote.
use kinde_meter::meter;

macro_rules! metered {
    ($name:ident: $feature:literal, $on:expr, $value:expr, $kind:expr, $krate:expr) => {
        #[meter(feature = $feature, on = $on, value = $value, meter_type = $kind, crate = $krate)]
        fn $name() -> u32 {
            1
        }
    };
}

macro_rules! not_a_literal {
    ($name:ident: $feature:expr, $agreement:literal) => {
        #[meter(feature = $feature, agreement = $agreement)]
        fn $name() {}
    };
}

/// One invisible group more.
macro_rules! forwarded {
    ($name:ident: $feature:expr, $agreement:expr) => {
        not_a_literal!($name: $feature, $agreement);
    };
}

metered!(literals: "two words", "never", -1, "sum", "kinde_meter");
metered!(keywords: "ok_code", return, 1.5, Absolute, ::kinde_meter);
not_a_literal!(number: 42, "agreement acme");
forwarded!(nested: "", "agreement acme");

fn main() {}
