//! Exact decimal meter amounts.

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign};
use std::str::FromStr;

/// Number of nano-units in one unit.
const NANOS_PER_UNIT: u128 = 1_000_000_000;
/// Most fractional digits a meter value may carry.
pub(crate) const MAX_FRACTION_DIGITS: usize = 9;

/// A non-negative decimal meter amount, exact to nine fractional digits.
///
/// Stored as a whole number of nano-units (10⁻⁹), so sums are exact. It prints
/// without trailing zeros (`"12"`, `"2.5"`) and compares with plain integers
/// and decimal strings:
///
/// ```
/// use kinde_meter_emulator::Amount;
///
/// let a: Amount = "2.5".parse().unwrap();
/// assert_eq!(a.to_string(), "2.5");
/// assert_eq!(a + Amount::from(3u64), "5.5");
/// assert_eq!(Amount::from(12u64), 12);
/// assert_eq!(a.whole(), None);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount {
    nanos: u128,
}

impl Amount {
    /// Zero.
    pub const ZERO: Amount = Amount { nanos: 0 };

    /// The amount made of `nanos` units of 10⁻⁹.
    pub const fn from_nanos(nanos: u128) -> Self {
        Amount { nanos }
    }

    /// The amount as a count of 10⁻⁹ units.
    pub const fn nanos(&self) -> u128 {
        self.nanos
    }

    /// The amount as a whole number, or `None` when it has a fractional part.
    pub fn whole(&self) -> Option<u128> {
        self.nanos
            .is_multiple_of(NANOS_PER_UNIT)
            .then_some(self.nanos / NANOS_PER_UNIT)
    }

    /// Whether the amount is zero.
    pub const fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// Addition that stops at the largest representable amount instead of overflowing.
    pub const fn saturating_add(self, other: Amount) -> Amount {
        Amount {
            nanos: self.nanos.saturating_add(other.nanos),
        }
    }

    /// Addition that returns `None` on overflow.
    pub const fn checked_add(self, other: Amount) -> Option<Amount> {
        match self.nanos.checked_add(other.nanos) {
            Some(nanos) => Some(Amount { nanos }),
            None => None,
        }
    }

    fn eq_whole(&self, whole: u128) -> bool {
        whole
            .checked_mul(NANOS_PER_UNIT)
            .is_some_and(|nanos| nanos == self.nanos)
    }
}

/// Why a string is not an [`Amount`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseAmountError {
    reason: &'static str,
}

impl ParseAmountError {
    /// A short description of the problem.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for ParseAmountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason)
    }
}

impl std::error::Error for ParseAmountError {}

impl FromStr for Amount {
    type Err = ParseAmountError;

    /// Parses ASCII digits with an optional `.` and one to nine more digits
    /// (`"12"`, `"0.25"`). Signs, exponents, spaces, `"1."` and `".5"` are refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| Err(ParseAmountError { reason });
        if s.is_empty() {
            return err("is empty");
        }
        let (int, frac) = match s.split_once('.') {
            Some((int, frac)) => (int, Some(frac)),
            None => (s, None),
        };
        if int.is_empty() {
            return err("must start with a digit");
        }
        if !int.bytes().all(|b| b.is_ascii_digit()) {
            return err("must be ASCII digits with an optional `.` and fraction digits");
        }
        let mut nanos: u128 = 0;
        for b in int.bytes() {
            nanos = match nanos
                .checked_mul(10)
                .and_then(|n| n.checked_add(u128::from(b - b'0')))
            {
                Some(n) => n,
                None => return err("is too large"),
            };
        }
        nanos = match nanos.checked_mul(NANOS_PER_UNIT) {
            Some(n) => n,
            None => return err("is too large"),
        };
        if let Some(frac) = frac {
            if frac.is_empty() {
                return err("must have digits after the `.`");
            }
            if !frac.bytes().all(|b| b.is_ascii_digit()) {
                return err("must be ASCII digits with an optional `.` and fraction digits");
            }
            if frac.len() > MAX_FRACTION_DIGITS {
                return err("has more than 9 fractional digits");
            }
            let mut f: u128 = 0;
            for b in frac.bytes() {
                f = f * 10 + u128::from(b - b'0');
            }
            for _ in frac.len()..MAX_FRACTION_DIGITS {
                f *= 10;
            }
            nanos = match nanos.checked_add(f) {
                Some(n) => n,
                None => return err("is too large"),
            };
        }
        Ok(Amount { nanos })
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.nanos / NANOS_PER_UNIT;
        let frac = self.nanos % NANOS_PER_UNIT;
        if frac == 0 {
            return write!(f, "{whole}");
        }
        let digits = format!("{frac:09}");
        write!(f, "{whole}.{}", digits.trim_end_matches('0'))
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Amount({self})")
    }
}

impl From<u64> for Amount {
    fn from(value: u64) -> Self {
        Amount {
            nanos: u128::from(value) * NANOS_PER_UNIT,
        }
    }
}

impl From<u32> for Amount {
    fn from(value: u32) -> Self {
        Amount::from(u64::from(value))
    }
}

impl Add for Amount {
    type Output = Amount;

    /// Saturating addition (an emulator ledger never panics).
    fn add(self, rhs: Amount) -> Amount {
        self.saturating_add(rhs)
    }
}

impl AddAssign for Amount {
    fn add_assign(&mut self, rhs: Amount) {
        *self = self.saturating_add(rhs);
    }
}

impl Sum for Amount {
    fn sum<I: Iterator<Item = Amount>>(iter: I) -> Amount {
        iter.fold(Amount::ZERO, Add::add)
    }
}

impl<'a> Sum<&'a Amount> for Amount {
    fn sum<I: Iterator<Item = &'a Amount>>(iter: I) -> Amount {
        iter.copied().sum()
    }
}

impl PartialEq<u128> for Amount {
    fn eq(&self, other: &u128) -> bool {
        self.eq_whole(*other)
    }
}

impl PartialEq<u64> for Amount {
    fn eq(&self, other: &u64) -> bool {
        self.eq_whole(u128::from(*other))
    }
}

impl PartialEq<u32> for Amount {
    fn eq(&self, other: &u32) -> bool {
        self.eq_whole(u128::from(*other))
    }
}

/// Lets `assert_eq!(amount, 12)` compile: an untyped integer literal is an `i32`.
impl PartialEq<i32> for Amount {
    fn eq(&self, other: &i32) -> bool {
        u128::try_from(*other).is_ok_and(|w| self.eq_whole(w))
    }
}

impl PartialEq<str> for Amount {
    fn eq(&self, other: &str) -> bool {
        other.parse::<Amount>().is_ok_and(|a| a == *self)
    }
}

impl PartialEq<&str> for Amount {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

impl PartialEq<Amount> for u64 {
    fn eq(&self, other: &Amount) -> bool {
        other == self
    }
}

impl PartialEq<Amount> for u128 {
    fn eq(&self, other: &Amount) -> bool {
        other == self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Amount, ParseAmountError> {
        s.parse()
    }

    #[test]
    fn parses_and_prints() {
        for (input, shown) in [
            ("0", "0"),
            ("12", "12"),
            ("007", "7"),
            ("2.5", "2.5"),
            ("2.50", "2.5"),
            ("0.000000001", "0.000000001"),
            ("1.000000000", "1"),
        ] {
            assert_eq!(
                p(input).map(|a| a.to_string()),
                Ok(shown.to_owned()),
                "{input}"
            );
        }
        for bad in [
            "",
            "-1",
            "+1",
            "1.",
            ".5",
            "1e3",
            "1.0000000001",
            " 1",
            "1 ",
            "1,5",
            "1.2.3",
            "٣",
        ] {
            assert!(p(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(p(&"9".repeat(40)).is_err());
    }

    #[test]
    fn compares_and_adds() {
        let a = Amount::from(12u64);
        assert_eq!(a, 12);
        assert_eq!(a, 12u64);
        assert_eq!(a, 12u128);
        assert_eq!(12u64, a);
        assert_eq!(a.whole(), Some(12));
        assert_ne!(a, -12);
        let b = p("0.5").unwrap_or_default();
        assert_eq!(b.whole(), None);
        assert_eq!(a + b, "12.5");
        assert_eq!([a, b, b].iter().sum::<Amount>(), 13);
        assert_eq!(format!("{:?}", a + b), "Amount(12.5)");
        assert_eq!(
            Amount::from_nanos(u128::MAX) + a,
            Amount::from_nanos(u128::MAX)
        );
    }
}
