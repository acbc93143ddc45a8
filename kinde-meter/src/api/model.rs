//! The wire model of `POST /api/v1/billing/meter_usage`, with validated field types.
//!
//! Every type here checks its input when it is built, so a request that reaches the
//! network is one Kinde's contract allows: ids and codes are non-empty and of a known
//! alphabet, values are non-negative numbers written as strings, timestamps are RFC 3339
//! in UTC with `Z`, and the meter type is always explicit.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest id or code accepted, in bytes. Kinde's ids are about 42 bytes long.
pub const MAX_ID_LEN: usize = 255;

/// What was wrong with an id, a code, a value or a timestamp given to a constructor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidInput {
    what: &'static str,
    value: String,
    reason: &'static str,
}

impl InvalidInput {
    pub(crate) fn new(what: &'static str, value: &str, reason: &'static str) -> Self {
        // Show enough of the input to recognise it, never an unbounded amount.
        let value = match value.char_indices().nth(64) {
            Some((cut, _)) => format!("{}…", &value[..cut]),
            None => value.to_owned(),
        };
        Self {
            what,
            value,
            reason,
        }
    }

    /// Which kind of input was rejected, for example `"customer agreement id"`.
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// Why it was rejected.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} {:?}: {}", self.what, self.value, self.reason)
    }
}

impl std::error::Error for InvalidInput {}

const fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

const fn is_feature_byte(b: u8) -> bool {
    is_id_byte(b) || b == b'.'
}

/// Checks a feature code; `Err` carries the reason. `const` so that
/// [`FeatureCode::from_static`] can reject a bad literal at compile time.
const fn check_feature(s: &str) -> Result<(), &'static str> {
    let bytes = s.as_bytes();
    if bytes.is_empty() {
        return Err("a feature code must not be empty");
    }
    if bytes.len() > MAX_ID_LEN {
        return Err("a feature code must be at most 255 bytes long");
    }
    let mut i = 0;
    while i < bytes.len() {
        if !is_feature_byte(bytes[i]) {
            return Err("a feature code may only contain ASCII letters, digits, `_`, `-` and `.`");
        }
        i += 1;
    }
    Ok(())
}

fn check_agreement(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("a customer agreement id must not be empty");
    }
    if s.len() > MAX_ID_LEN {
        return Err("a customer agreement id must be at most 255 bytes long");
    }
    if !s.bytes().all(is_id_byte) {
        return Err(
            "a customer agreement id may only contain ASCII letters, digits, `_` and `-` \
             (Kinde's look like `agreement_0195ac80a14c2ca2cec97d026d864de0`)",
        );
    }
    Ok(())
}

/// A Kinde customer agreement id, such as `agreement_0195ac80a14c2ca2cec97d026d864de0`.
///
/// Validated when built (non-empty, at most 255 bytes of ASCII letters, digits, `_` and
/// `-`) and cheap to clone (a shared `Arc<str>`).
///
/// ```
/// use kinde_meter::AgreementId;
///
/// let id: AgreementId = "agreement_0195ac80a14c2ca2cec97d026d864de0".parse()?;
/// assert_eq!(id.as_str(), "agreement_0195ac80a14c2ca2cec97d026d864de0");
/// assert!(AgreementId::new("not an id").is_err());
/// # Ok::<(), kinde_meter::api::InvalidInput>(())
/// ```
///
/// Serialized as the plain string; deserializing validates it like [`AgreementId::new`].
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct AgreementId {
    /// [`content_hash`] of the id, computed once when built: the per-thread cells are
    /// found by it on every metered call (see `reporter::cells`).
    hash: u64,
    id: Arc<str>,
}

impl AgreementId {
    /// Validates `id` and wraps it.
    pub fn new(id: impl AsRef<str>) -> Result<Self, InvalidInput> {
        let id = id.as_ref();
        check_agreement(id)
            .map_err(|reason| InvalidInput::new("customer agreement id", id, reason))?;
        Ok(Self {
            hash: content_hash(id.as_bytes()),
            id: Arc::from(id),
        })
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The stand-in for `customer` on the hot path until its usage is resolved to one of
    /// its agreements (see [`Customer::placeholder`](crate::api::Customer)). Never sent.
    pub(crate) fn for_customer(customer: &crate::api::Customer) -> Self {
        let id = customer.placeholder();
        Self {
            hash: content_hash(id.as_bytes()),
            id: Arc::from(id),
        }
    }

    /// The customer this stands in for, if it is a stand-in.
    pub(crate) fn customer(&self) -> Option<crate::api::Customer> {
        if self.id.contains(':') {
            crate::api::Customer::from_placeholder(&self.id)
        } else {
            None
        }
    }

    /// Whether this stands in for a customer (see [`AgreementId::for_customer`]).
    pub(crate) fn is_customer(&self) -> bool {
        self.id.contains(':')
    }

    /// Reads an id back from the journal: an agreement id, or a customer's stand-in.
    pub(crate) fn from_stored(id: &str) -> Option<Self> {
        if id.contains(':') {
            crate::api::Customer::from_placeholder(id).map(|c| Self::for_customer(&c))
        } else {
            Self::new(id).ok()
        }
    }

    /// Address of the shared string: equal addresses are equal ids.
    #[inline]
    pub(crate) fn ptr(&self) -> *const u8 {
        self.id.as_ptr()
    }

    /// The id's [`content_hash`].
    #[inline]
    pub(crate) fn content_hash(&self) -> u64 {
        self.hash
    }
}

impl PartialEq for AgreementId {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.id == other.id
    }
}
impl Eq for AgreementId {}
impl std::hash::Hash for AgreementId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `str` hashes, so that `Borrow<str>` lookups in maps agree.
        self.id.hash(state)
    }
}
impl PartialOrd for AgreementId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for AgreementId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.id.cmp(&other.id)
    }
}

/// A fast, unkeyed hash of an id or code: each 8-byte word is folded in with a 64×64→128
/// multiply whose halves are xored (as foldhash and wyhash do), so every input bit reaches
/// every output bit. Ids that differ in a few trailing characters (`agreement_…0001`,
/// `agreement_…0002`) spread as well as random ones. Computed once per [`AgreementId`] and
/// at compile time for a static [`FeatureCode`]. It only picks a slot in a per-thread cache
/// of bounded probe length, behind a table keyed with `RandomState`: inputs made to collide
/// can slow calls down to the table's speed, never mix keys up (entries compare contents).
pub(crate) const fn content_hash(bytes: &[u8]) -> u64 {
    const fn fold(a: u64, b: u64) -> u64 {
        let product = (a as u128) * (b as u128);
        (product as u64) ^ ((product >> 64) as u64)
    }
    const K: u64 = 0xf135_7aea_2e62_a9c5;
    const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut hash = bytes.len() as u64 ^ SEED;
    let mut i = 0;
    while i < bytes.len() {
        let mut word = 0u64;
        let mut j = 0;
        while j < 8 && i + j < bytes.len() {
            word |= (bytes[i + j] as u64) << (8 * j);
            j += 1;
        }
        hash = fold(hash ^ word, K);
        i += 8;
    }
    fold(hash, SEED)
}

impl fmt::Debug for AgreementId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.id, f)
    }
}

impl fmt::Display for AgreementId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl std::str::FromStr for AgreementId {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for AgreementId {
    type Error = InvalidInput;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for AgreementId {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl AsRef<str> for AgreementId {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl Borrow<str> for AgreementId {
    fn borrow(&self) -> &str {
        &self.id
    }
}

impl Serialize for AgreementId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.id)
    }
}

#[derive(Clone)]
enum FeatureRepr {
    Static(&'static str),
    Shared(Arc<str>),
}

/// A billing feature code, the feature's key in the agreement's plan (`pro_gym`).
///
/// Non-empty, at most 255 bytes of ASCII letters, digits, `_`, `-` and `.`; case is kept
/// (Kinde's keys may be mixed case). Cheap to clone.
///
/// ```
/// use kinde_meter::FeatureCode;
///
/// // Checked at compile time when used in a `const`:
/// const PRO_GYM: FeatureCode = FeatureCode::from_static("pro_gym");
/// assert_eq!(PRO_GYM.as_str(), "pro_gym");
///
/// let dynamic = FeatureCode::new(String::from("CcdkvEXpbg6UY"))?;
/// assert!(FeatureCode::new("two words").is_err());
/// # let _ = dynamic;
/// # Ok::<(), kinde_meter::api::InvalidInput>(())
/// ```
///
/// Serialized as the plain string; deserializing validates it like [`FeatureCode::new`].
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct FeatureCode {
    /// [`content_hash`] of the code (computed at compile time for a literal).
    hash: u64,
    code: FeatureRepr,
}

impl FeatureCode {
    /// Wraps a string literal. In a `const` context an invalid code is a compile error;
    /// at run time it panics, so prefer [`FeatureCode::new`] for input you do not control.
    pub const fn from_static(code: &'static str) -> Self {
        match check_feature(code) {
            Ok(()) => Self::unchecked_static(code),
            Err(reason) => panic!("{}", reason),
        }
    }

    /// Wraps a literal without checking it; [`FeatureCode::new_checked`] checks it later.
    pub(crate) const fn unchecked_static(code: &'static str) -> Self {
        Self {
            hash: content_hash(code.as_bytes()),
            code: FeatureRepr::Static(code),
        }
    }

    /// Checks a code that may have been built with `unchecked_static`.
    pub(crate) fn new_checked(code: &FeatureCode) -> Result<Self, InvalidInput> {
        check_feature(code.as_str())
            .map_err(|reason| InvalidInput::new("billing feature code", code.as_str(), reason))?;
        Ok(code.clone())
    }

    /// Validates a `&'static str` without copying it.
    pub fn try_from_static(code: &'static str) -> Result<Self, InvalidInput> {
        check_feature(code)
            .map_err(|reason| InvalidInput::new("billing feature code", code, reason))?;
        Ok(Self::unchecked_static(code))
    }

    /// Validates `code` and wraps it.
    pub fn new(code: impl AsRef<str>) -> Result<Self, InvalidInput> {
        let code = code.as_ref();
        check_feature(code)
            .map_err(|reason| InvalidInput::new("billing feature code", code, reason))?;
        Ok(Self {
            hash: content_hash(code.as_bytes()),
            code: FeatureRepr::Shared(Arc::from(code)),
        })
    }

    /// The code as a string slice.
    pub fn as_str(&self) -> &str {
        match &self.code {
            FeatureRepr::Static(s) => s,
            FeatureRepr::Shared(s) => s,
        }
    }

    /// The code's [`content_hash`].
    #[inline]
    pub(crate) fn content_hash(&self) -> u64 {
        self.hash
    }
}

impl PartialEq for FeatureCode {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.as_str() == other.as_str()
    }
}
impl Eq for FeatureCode {}
impl std::hash::Hash for FeatureCode {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}
impl PartialOrd for FeatureCode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for FeatureCode {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Debug for FeatureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for FeatureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FeatureCode {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for FeatureCode {
    type Error = InvalidInput;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for FeatureCode {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl AsRef<str> for FeatureCode {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Serialize for FeatureCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// How Kinde applies a value: added to the current usage, or replacing it.
///
/// Always sent explicitly: Kinde does not document the default.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum MeterType {
    /// `"delta"`: the value is added to the current usage.
    #[default]
    Delta,
    /// `"absolute"`: the value overrides the current usage.
    Absolute,
}

impl MeterType {
    /// The wire name, `"delta"` or `"absolute"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            MeterType::Delta => "delta",
            MeterType::Absolute => "absolute",
        }
    }
}

impl fmt::Display for MeterType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum ValueRepr {
    Whole(u64),
    Decimal(Box<str>),
}

/// A usage value, sent to Kinde as a string.
///
/// A whole number by default (`MeterValue::from(3)`); a decimal only through
/// [`MeterValue::decimal`], which accepts non-negative numbers written as digits with an
/// optional fractional part (`"2.5"`), since Kinde documents neither decimals nor negatives.
///
/// ```
/// use kinde_meter::api::MeterValue;
///
/// assert_eq!(MeterValue::from(3).to_string(), "3");
/// assert_eq!(MeterValue::decimal("2.50")?.to_string(), "2.50");
/// assert!(MeterValue::decimal("-1").is_err());
/// assert!(MeterValue::decimal("1e3").is_err());
/// # Ok::<(), kinde_meter::api::InvalidInput>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MeterValue(ValueRepr);

impl MeterValue {
    /// Validates a decimal string: ASCII digits, optionally a `.` followed by more digits.
    pub fn decimal(value: impl AsRef<str>) -> Result<Self, InvalidInput> {
        let v = value.as_ref();
        let err = |reason| InvalidInput::new("meter value", v, reason);
        if v.is_empty() {
            return Err(err("a meter value must not be empty"));
        }
        if v.len() > 64 {
            return Err(err("a meter value must be at most 64 characters long"));
        }
        if v.starts_with('-') {
            return Err(err("a meter value must not be negative"));
        }
        let (int, frac) = match v.split_once('.') {
            Some((int, frac)) => (int, Some(frac)),
            None => (v, None),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(int) || frac.is_some_and(|f| !digits(f)) {
            return Err(err(
                "a meter value must be written as digits with an optional fractional part, like `12` or `2.5`",
            ));
        }
        Ok(Self(ValueRepr::Decimal(v.into())))
    }

    /// The value as a whole number, when it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match &self.0 {
            ValueRepr::Whole(v) => Some(*v),
            ValueRepr::Decimal(_) => None,
        }
    }
}

impl From<u64> for MeterValue {
    fn from(v: u64) -> Self {
        Self(ValueRepr::Whole(v))
    }
}

impl fmt::Display for MeterValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            ValueRepr::Whole(v) => fmt::Display::fmt(v, f),
            ValueRepr::Decimal(v) => f.write_str(v),
        }
    }
}

impl fmt::Debug for MeterValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeterValue({self})")
    }
}

impl Serialize for MeterValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A point in time between 1970 and 9999, written as RFC 3339 in UTC with `Z`
/// (`2024-11-18T02:32:03Z`), to whole seconds.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use kinde_meter::api::Timestamp;
///
/// let t = Timestamp::try_from(UNIX_EPOCH + Duration::from_secs(1_731_897_123))?;
/// assert_eq!(t.to_string(), "2024-11-18T02:32:03Z");
/// # Ok::<(), kinde_meter::api::InvalidInput>(())
/// ```
///
/// Serialized as that text; deserializing (and [`str::parse`]) accept exactly that form,
/// so a timestamp read back is the one written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp {
    /// Whole seconds since the Unix epoch.
    secs: u64,
}

/// 9999-12-31T23:59:59Z, the last second RFC 3339 can write.
const MAX_SECS: u64 = 253_402_300_799;

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self::try_from(SystemTime::now()).unwrap_or(Self { secs: 0 })
    }

    /// Seconds since the Unix epoch.
    pub fn unix_seconds(self) -> u64 {
        self.secs
    }

    /// The same instant as a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.secs)
    }

    /// From whole seconds since the Unix epoch.
    pub fn from_unix_seconds(secs: u64) -> Result<Self, InvalidInput> {
        if secs > MAX_SECS {
            return Err(InvalidInput::new(
                "meter usage timestamp",
                &secs.to_string(),
                "a timestamp must be before the year 10000",
            ));
        }
        Ok(Self { secs })
    }
}

impl TryFrom<SystemTime> for Timestamp {
    type Error = InvalidInput;
    fn try_from(t: SystemTime) -> Result<Self, Self::Error> {
        let secs = t.duration_since(UNIX_EPOCH).map_err(|_| {
            InvalidInput::new(
                "meter usage timestamp",
                &format!("{t:?}"),
                "a timestamp must not be before 1970",
            )
        })?;
        Self::from_unix_seconds(secs.as_secs())
    }
}

/// A proleptic Gregorian date (year >= 1970) to days since 1970-01-01.
/// Howard Hinnant's `days_from_civil`, the inverse of [`civil_from_days`].
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl std::str::FromStr for Timestamp {
    type Err = InvalidInput;

    /// Parses `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds, 1970 to 9999), the form
    /// [`Timestamp`] is written in.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| InvalidInput::new("meter usage timestamp", s, reason);
        let b = s.as_bytes();
        let shape_ok = b.len() == 20
            && b.iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b'-',
                10 => *c == b'T',
                13 | 16 => *c == b':',
                19 => *c == b'Z',
                _ => c.is_ascii_digit(),
            });
        if !shape_ok {
            return Err(err(
                "a timestamp must be RFC 3339 in UTC to whole seconds, like `2024-11-18T02:32:03Z`",
            ));
        }
        let num = |from: usize, to: usize| {
            b[from..to]
                .iter()
                .fold(0u64, |n, c| n * 10 + u64::from(c - b'0'))
        };
        let (year, month, day) = (num(0, 4), num(5, 7), num(8, 10));
        let (hour, minute, second) = (num(11, 13), num(14, 16), num(17, 19));
        if year < 1970 {
            return Err(err("a timestamp must not be before 1970"));
        }
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return Err(err("a timestamp must name a day of the calendar"));
        }
        if hour > 23 || minute > 59 || second > 59 {
            return Err(err("a timestamp must name a time of day (no leap seconds)"));
        }
        let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
        Self::from_unix_seconds(secs)
    }
}

impl TryFrom<String> for Timestamp {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
/// Howard Hinnant's `civil_from_days`, restricted to non-negative days.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (days, rem) = (self.secs / 86_400, self.secs % 86_400);
        let (y, mo, d) = civil_from_days(days);
        let (h, mi, s) = (rem / 3600, rem / 60 % 60, rem % 60);
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The body of `POST /api/v1/billing/meter_usage`.
///
/// Every field is a validated type, so any value of this struct is a request Kinde's
/// contract allows. The meter type is always sent; the timestamp only when set (Kinde
/// then uses the time of arrival).
///
/// ```
/// use kinde_meter::api::{CreateMeterUsageRecordRequest, MeterType, Timestamp};
///
/// let request = CreateMeterUsageRecordRequest::new(
///     "agreement_0195ac80a14c2ca2cec97d026d864de0".parse()?,
///     "pro_gym".parse()?,
///     1,
/// )
/// .with_meter_type(MeterType::Delta)
/// .with_timestamp(Timestamp::from_unix_seconds(1_731_897_123)?);
/// assert_eq!(
///     serde_json::to_string(&request).unwrap(),
///     r#"{"customer_agreement_id":"agreement_0195ac80a14c2ca2cec97d026d864de0","billing_feature_code":"pro_gym","meter_value":"1","meter_usage_timestamp":"2024-11-18T02:32:03Z","meter_type_code":"delta"}"#
/// );
/// # Ok::<(), kinde_meter::api::InvalidInput>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CreateMeterUsageRecordRequest {
    /// The billing agreement the usage is recorded against.
    pub customer_agreement_id: AgreementId,
    /// The feature's key within the agreement's plan.
    pub billing_feature_code: FeatureCode,
    /// The usage value, sent as a string.
    pub meter_value: MeterValue,
    /// When the usage happened; Kinde uses the time of arrival when this is `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meter_usage_timestamp: Option<Timestamp>,
    /// Whether the value is added (`delta`) or replaces the current usage (`absolute`).
    pub meter_type_code: MeterType,
}

impl CreateMeterUsageRecordRequest {
    /// A `delta` request for a whole-number value, without a timestamp.
    pub fn new(agreement: AgreementId, feature: FeatureCode, value: u64) -> Self {
        Self {
            customer_agreement_id: agreement,
            billing_feature_code: feature,
            meter_value: MeterValue::from(value),
            meter_usage_timestamp: None,
            meter_type_code: MeterType::Delta,
        }
    }

    /// Replaces the value, for example with a validated decimal.
    ///
    /// ```
    /// # use kinde_meter::api::{CreateMeterUsageRecordRequest, MeterValue};
    /// let request = CreateMeterUsageRecordRequest::new("agreement_a".parse()?, "storage_gb".parse()?, 0)
    ///     .with_value(MeterValue::decimal("2.5")?);
    /// assert_eq!(request.meter_value.to_string(), "2.5");
    /// # Ok::<(), kinde_meter::api::InvalidInput>(())
    /// ```
    #[must_use]
    pub fn with_value(mut self, value: MeterValue) -> Self {
        self.meter_value = value;
        self
    }

    /// Sets when the usage happened.
    #[must_use]
    pub fn with_timestamp(mut self, timestamp: Timestamp) -> Self {
        self.meter_usage_timestamp = Some(timestamp);
        self
    }

    /// Sets the meter type.
    #[must_use]
    pub fn with_meter_type(mut self, meter_type: MeterType) -> Self {
        self.meter_type_code = meter_type;
        self
    }
}

/// Kinde's answer to an accepted meter usage record: `{"message": "Success", "code": "OK"}`.
/// Both fields are optional in the contract, and Kinde returns no record id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct CreateMeterUsageRecordResponse {
    /// Human-readable outcome, `"Success"`.
    pub message: Option<String>,
    /// Machine-readable outcome, `"OK"`.
    pub code: Option<String>,
}

/// One entry of Kinde's error body `{"errors": [{"code": "...", "message": "..."}]}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct KindeError {
    /// Machine-readable code.
    pub code: Option<String>,
    /// Human-readable message.
    pub message: Option<String>,
}

impl fmt::Display for KindeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.code, &self.message) {
            (Some(c), Some(m)) => write!(f, "{c}: {m}"),
            (Some(s), None) | (None, Some(s)) => f.write_str(s),
            (None, None) => f.write_str("(no detail)"),
        }
    }
}

/// Kinde's error body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub(crate) errors: Vec<KindeError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hashes_of_ids_that_differ_at_the_end_spread_like_random_ones() {
        let n = if cfg!(miri) { 1_000 } else { 100_000 };
        let hashes: std::collections::HashSet<u64> = (0..n)
            .map(|i| content_hash(format!("agreement_{i:032x}").as_bytes()))
            .collect();
        assert_eq!(hashes.len(), n, "no two ids share a hash");
        // Slots of a table twenty times larger: random keys fill about 97.6% of n.
        let slots = (n * 20).next_power_of_two() as u64;
        let homes: std::collections::HashSet<u64> =
            hashes.iter().map(|h| h & (slots - 1)).collect();
        assert!(
            homes.len() * 100 > n * 95,
            "{} distinct slots for {n} ids",
            homes.len()
        );
        // The same at compile time as at run time.
        const AT_COMPILE_TIME: u64 = content_hash(b"pro_gym");
        assert_eq!(AT_COMPILE_TIME, content_hash("pro_gym".as_bytes()));
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |secs| Timestamp::from_unix_seconds(secs).unwrap().to_string();
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_731_897_123), "2024-11-18T02:32:03Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(at(MAX_SECS), "9999-12-31T23:59:59Z");
        assert!(Timestamp::from_unix_seconds(MAX_SECS + 1).is_err());
        assert!(Timestamp::try_from(UNIX_EPOCH - Duration::from_secs(1)).is_err());
    }

    #[test]
    fn ids_and_codes_are_validated() {
        assert!(AgreementId::new("agreement_0195ac80a14c2ca2cec97d026d864de0").is_ok());
        for bad in ["", "a b", "agreement.1", "ü", &"a".repeat(256)] {
            let err = AgreementId::new(bad).unwrap_err();
            assert_eq!(err.what(), "customer agreement id", "{bad:?}");
        }
        assert!(FeatureCode::new("CcdkvEXpbg6UY").is_ok());
        assert!(FeatureCode::new("api.calls-v2").is_ok());
        for bad in ["", "pro gym", "pro/gym", "€"] {
            assert!(FeatureCode::new(bad).is_err(), "{bad:?}");
        }
        let long = "x".repeat(300);
        let shown = AgreementId::new(&long).unwrap_err().to_string();
        assert!(shown.len() < 200, "error messages stay short: {shown}");
    }

    #[test]
    fn timestamps_parse_what_they_print() {
        for secs in [
            0,
            951_782_400,
            1_731_897_123,
            4_107_542_399,
            MAX_SECS,
            86_399,
            86_400,
        ] {
            let t = Timestamp::from_unix_seconds(secs).unwrap();
            assert_eq!(t.to_string().parse::<Timestamp>(), Ok(t), "{t}");
        }
        for bad in [
            "",
            "2024-11-18 02:32:03Z",
            "2024-11-18T02:32:03",
            "2024-11-18T02:32:03+00:00",
            "2024-11-18T02:32:03.5Z",
            "1969-12-31T23:59:59Z",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-00-10T00:00:00Z",
            "2024-11-00T00:00:00Z",
            "2024-11-18T24:00:00Z",
            "2024-11-18T23:60:00Z",
            "2024-11-18T23:59:60Z",
            "２024-11-18T02:32:03Z",
        ] {
            let e = bad.parse::<Timestamp>().unwrap_err();
            assert_eq!(e.what(), "meter usage timestamp", "{bad:?}");
        }
        assert!("2024-02-29T00:00:00Z".parse::<Timestamp>().is_ok());
    }

    #[test]
    fn wire_types_round_trip_through_serde_and_refuse_invalid_input() {
        let id = AgreementId::new("agreement_0195ac80a14c2ca2cec97d026d864de0").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, r#""agreement_0195ac80a14c2ca2cec97d026d864de0""#);
        assert_eq!(serde_json::from_str::<AgreementId>(&json).unwrap(), id);
        let e = serde_json::from_str::<AgreementId>(r#""not an id""#).unwrap_err();
        assert!(e.to_string().contains("customer agreement id"), "{e}");

        let feature = FeatureCode::from_static("pro_gym");
        let json = serde_json::to_string(&feature).unwrap();
        assert_eq!(serde_json::from_str::<FeatureCode>(&json).unwrap(), feature);
        let e = serde_json::from_str::<FeatureCode>(r#""pro gym""#).unwrap_err();
        assert!(e.to_string().contains("billing feature code"), "{e}");

        for meter_type in [MeterType::Delta, MeterType::Absolute] {
            let json = serde_json::to_string(&meter_type).unwrap();
            assert_eq!(json, format!("\"{meter_type}\""));
            assert_eq!(
                serde_json::from_str::<MeterType>(&json).unwrap(),
                meter_type
            );
        }
        assert!(serde_json::from_str::<MeterType>(r#""sum""#).is_err());

        let t = Timestamp::from_unix_seconds(1_731_897_123).unwrap();
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#""2024-11-18T02:32:03Z""#);
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        let e = serde_json::from_str::<Timestamp>(r#""yesterday""#).unwrap_err();
        assert!(e.to_string().contains("meter usage timestamp"), "{e}");
        assert!(serde_json::from_str::<Timestamp>("1731897123").is_err());
    }

    #[test]
    fn decimal_values_are_validated() {
        for ok in ["0", "12", "2.5", "007.10"] {
            assert_eq!(MeterValue::decimal(ok).unwrap().to_string(), ok);
        }
        for bad in ["", "-1", "+1", "1.", ".5", "1e3", "1,5", " 1", "NaN"] {
            assert!(MeterValue::decimal(bad).is_err(), "{bad:?}");
        }
    }
}
