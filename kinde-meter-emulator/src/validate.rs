//! Wire-format checks for meter usage requests, made on the raw JSON.
//!
//! Deliberately independent of the client's own types: the emulator referees
//! what the client actually put on the wire.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::amount::Amount;
use crate::codes;

/// How a usage record changes the running total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmulatedMeterType {
    /// Adds the value to the total (also what the emulator assumes when
    /// `meter_type_code` is absent).
    Delta,
    /// Replaces the total with the value.
    Absolute,
}

/// One entry of an error body: `{"code": ..., "message": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

/// A usage record that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) agreement: String,
    pub(crate) feature: String,
    pub(crate) value: Amount,
    pub(crate) meter_type: EmulatedMeterType,
    pub(crate) meter_type_explicit: bool,
    pub(crate) timestamp: Option<String>,
}

/// Why a body was refused: the HTTP status and the errors to report.
pub(crate) type Refusal = (u16, Vec<ApiError>);

/// Agreements and features the emulator knows, when configured.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Known<'a> {
    pub(crate) agreements: Option<&'a BTreeSet<String>>,
    pub(crate) features: Option<&'a BTreeSet<String>>,
}

const AGREEMENT: &str = "customer_agreement_id";
const FEATURE: &str = "billing_feature_code";
const VALUE: &str = "meter_value";
const TIMESTAMP: &str = "meter_usage_timestamp";
const TYPE: &str = "meter_type_code";
const FIELDS: [&str; 5] = [AGREEMENT, FEATURE, VALUE, TIMESTAMP, TYPE];

/// Whether a `Content-Type` value names `mime` (parameters and case ignored).
pub(crate) fn is_media_type(content_type: Option<&str>, mime: &str) -> bool {
    content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case(mime))
}

/// Checks a meter usage request body against the contract.
pub(crate) fn validate_usage(
    content_type: Option<&str>,
    body: &[u8],
    known: Known<'_>,
) -> Result<Usage, Refusal> {
    if !is_media_type(content_type, "application/json") {
        return Err((
            415,
            vec![ApiError::new(
                codes::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json",
            )],
        ));
    }
    let invalid_json =
        |message: String| Err((400, vec![ApiError::new(codes::INVALID_JSON, message)]));
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(_) => return invalid_json("body is not valid UTF-8".to_owned()),
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return invalid_json(format!("body is not valid JSON: {e}")),
    };
    if !value.is_object() {
        return invalid_json(format!(
            "body must be a JSON object, got {}",
            type_name(&value)
        ));
    }
    let entries = match serde_json::from_str::<Entries>(text) {
        Ok(Entries(entries)) => entries,
        Err(e) => return invalid_json(format!("body is not a valid JSON object: {e}")),
    };

    let mut errors = Vec::new();
    for (key, _) in &entries {
        if !FIELDS.contains(&key.as_str()) {
            errors.push(ApiError::new(
                codes::UNKNOWN_FIELD,
                format!("unknown field `{key}`"),
            ));
        }
    }
    let get = |name: &str| entries.iter().find(|(k, _)| k == name).map(|(_, v)| v);

    let agreement = required_string(get(AGREEMENT), AGREEMENT, &mut errors);
    let feature = required_string(get(FEATURE), FEATURE, &mut errors);

    let value = match get(VALUE) {
        None => {
            errors.push(missing(VALUE));
            None
        }
        Some(Value::String(s)) => match s.parse::<Amount>() {
            Ok(a) => Some(a),
            Err(e) => {
                errors.push(ApiError::new(
                    codes::INVALID_FIELD,
                    format!("`{VALUE}` {e} (got {s:?})"),
                ));
                None
            }
        },
        Some(other) => {
            errors.push(not_a_string(VALUE, other));
            None
        }
    };

    let timestamp = match get(TIMESTAMP) {
        None => None,
        Some(Value::String(s)) => match check_rfc3339(s) {
            Ok(()) => Some(s.clone()),
            Err(reason) => {
                errors.push(ApiError::new(
                    codes::INVALID_FIELD,
                    format!("`{TIMESTAMP}` is not an RFC 3339 date-time: {reason} (got {s:?})"),
                ));
                None
            }
        },
        Some(other) => {
            errors.push(not_a_string(TIMESTAMP, other));
            None
        }
    };

    let meter_type = match get(TYPE) {
        None => Some((EmulatedMeterType::Delta, false)),
        Some(Value::String(s)) if s == "delta" => Some((EmulatedMeterType::Delta, true)),
        Some(Value::String(s)) if s == "absolute" => Some((EmulatedMeterType::Absolute, true)),
        Some(Value::String(s)) => {
            errors.push(ApiError::new(
                codes::INVALID_FIELD,
                format!("`{TYPE}` must be \"absolute\" or \"delta\" (got {s:?})"),
            ));
            None
        }
        Some(other) => {
            errors.push(not_a_string(TYPE, other));
            None
        }
    };

    if let (Some(a), Some(set)) = (agreement, known.agreements)
        && !set.contains(a)
    {
        errors.push(ApiError::new(
            codes::AGREEMENT_NOT_FOUND,
            format!("no customer agreement {a:?}"),
        ));
    }
    if let (Some(f), Some(set)) = (feature, known.features)
        && !set.contains(f)
    {
        errors.push(ApiError::new(
            codes::FEATURE_NOT_FOUND,
            format!("no billing feature {f:?}"),
        ));
    }

    match (agreement, feature, value, meter_type) {
        (Some(agreement), Some(feature), Some(value), Some((meter_type, explicit)))
            if errors.is_empty() =>
        {
            Ok(Usage {
                agreement: agreement.to_owned(),
                feature: feature.to_owned(),
                value,
                meter_type,
                meter_type_explicit: explicit,
                timestamp,
            })
        }
        _ => Err((400, errors)),
    }
}

fn missing(name: &str) -> ApiError {
    ApiError::new(codes::MISSING_FIELD, format!("`{name}` is required"))
}

fn not_a_string(name: &str, got: &Value) -> ApiError {
    ApiError::new(
        codes::INVALID_FIELD,
        format!("`{name}` must be a string, got {}", type_name(got)),
    )
}

fn required_string<'v>(
    value: Option<&'v Value>,
    name: &str,
    errors: &mut Vec<ApiError>,
) -> Option<&'v str> {
    match value {
        None => {
            errors.push(missing(name));
            None
        }
        Some(Value::String(s)) if s.is_empty() => {
            errors.push(ApiError::new(
                codes::INVALID_FIELD,
                format!("`{name}` must not be empty"),
            ));
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            errors.push(not_a_string(name, other));
            None
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a JSON number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The members of a JSON object in order, refusing duplicate keys.
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;

        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries: Vec<(String, Value)> = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
                    }
                    entries.push((key, value));
                }
                Ok(Entries(entries))
            }
        }

        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// Checks an RFC 3339 `date-time`: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
///
/// Stricter than the RFC in three ways, all documented on the emulator: `T`
/// and `Z` must be upper case, the fraction has at most nine digits, and a
/// leap second (`:60`) is refused.
pub(crate) fn check_rfc3339(s: &str) -> Result<(), &'static str> {
    let b = s.as_bytes();
    let digits = |from: usize, len: usize| -> Option<u32> {
        let part = b.get(from..from + len)?;
        part.iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let sep = |at: usize, c: u8| b.get(at) == Some(&c);

    let (Some(year), true, Some(month), true, Some(day)) = (
        digits(0, 4),
        sep(4, b'-'),
        digits(5, 2),
        sep(7, b'-'),
        digits(8, 2),
    ) else {
        return Err("the date must be YYYY-MM-DD");
    };
    if !sep(10, b'T') {
        return Err("the date and time must be separated by `T`");
    }
    let (Some(hour), true, Some(minute), true, Some(second)) = (
        digits(11, 2),
        sep(13, b':'),
        digits(14, 2),
        sep(16, b':'),
        digits(17, 2),
    ) else {
        return Err("the time must be HH:MM:SS");
    };
    if !(1..=12).contains(&month) {
        return Err("the month is out of range");
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err("the day is out of range");
    }
    if hour > 23 || minute > 59 {
        return Err("the time is out of range");
    }
    if second > 59 {
        return Err("the second is out of range (leap seconds are refused)");
    }

    let mut i = 19;
    if sep(i, b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        match i - start {
            0 => return Err("the fraction of a second needs digits"),
            n if n > 9 => return Err("the fraction of a second has more than 9 digits"),
            _ => {}
        }
    }
    match b.get(i..) {
        Some(b"Z") => Ok(()),
        Some([sign, ..]) if (*sign == b'+' || *sign == b'-') && b.len() == i + 6 => {
            match (digits(i + 1, 2), sep(i + 3, b':'), digits(i + 4, 2)) {
                (Some(h), true, Some(m)) if h <= 23 && m <= 59 => Ok(()),
                (Some(_), true, Some(_)) => Err("the UTC offset is out of range"),
                _ => Err("the UTC offset must be `Z` or ±HH:MM"),
            }
        }
        Some([]) | None => Err("a UTC offset (`Z` or ±HH:MM) is required"),
        Some(_) => Err("the UTC offset must be `Z` or ±HH:MM"),
    }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: Option<&str> = Some("application/json");

    fn check(body: &str) -> Result<Usage, Refusal> {
        validate_usage(JSON, body.as_bytes(), Known::default())
    }

    fn codes_of(body: &str) -> Vec<&'static str> {
        match check(body) {
            Ok(_) => Vec::new(),
            Err((_, errors)) => errors.iter().map(|e| e.code).collect(),
        }
    }

    #[test]
    fn accepts_a_full_record() {
        let usage = check(
            r#"{"customer_agreement_id":"agreement_1","billing_feature_code":"CcdkvEXpbg6UY",
                "meter_value":"2.5","meter_usage_timestamp":"2024-11-18T13:32:03Z",
                "meter_type_code":"absolute"}"#,
        );
        let Ok(usage) = usage else {
            panic!("refused: {usage:?}");
        };
        assert_eq!(usage.agreement, "agreement_1");
        assert_eq!(usage.feature, "CcdkvEXpbg6UY");
        assert_eq!(usage.value, "2.5");
        assert_eq!(usage.meter_type, EmulatedMeterType::Absolute);
        assert!(usage.meter_type_explicit);
        assert_eq!(usage.timestamp.as_deref(), Some("2024-11-18T13:32:03Z"));
    }

    #[test]
    fn meter_type_defaults_to_delta_but_remembers_absence() {
        let usage =
            check(r#"{"customer_agreement_id":"a","billing_feature_code":"f","meter_value":"1"}"#);
        let Ok(usage) = usage else {
            panic!("refused: {usage:?}");
        };
        assert_eq!(usage.meter_type, EmulatedMeterType::Delta);
        assert!(!usage.meter_type_explicit);
        assert_eq!(usage.timestamp, None);
    }

    #[test]
    fn validation_table() {
        let record = |fields: &str| {
            format!(r#"{{"customer_agreement_id":"a","billing_feature_code":"f"{fields}}}"#)
        };
        let value = |v: &str| record(&format!(r#","meter_value":{v}"#));
        let ts = |t: &str| {
            record(&format!(
                r#","meter_value":"1","meter_usage_timestamp":{t}"#
            ))
        };
        let ty = |t: &str| record(&format!(r#","meter_value":"1","meter_type_code":{t}"#));
        let cases: Vec<(String, &[&str])> = vec![
            // body shape
            ("".into(), &["INVALID_JSON"]),
            ("{".into(), &["INVALID_JSON"]),
            ("[]".into(), &["INVALID_JSON"]),
            ("\"x\"".into(), &["INVALID_JSON"]),
            ("null".into(), &["INVALID_JSON"]),
            (
                r#"{"customer_agreement_id":"a","customer_agreement_id":"b","billing_feature_code":"f","meter_value":"1"}"#.into(),
                &["INVALID_JSON"],
            ),
            // required fields
            (r#"{"billing_feature_code":"f","meter_value":"1"}"#.into(), &["MISSING_FIELD"]),
            (r#"{"customer_agreement_id":"a","meter_value":"1"}"#.into(), &["MISSING_FIELD"]),
            (record(""), &["MISSING_FIELD"]),
            ("{}".into(), &["MISSING_FIELD", "MISSING_FIELD", "MISSING_FIELD"]),
            (r#"{"customer_agreement_id":"","billing_feature_code":"f","meter_value":"1"}"#.into(), &["INVALID_FIELD"]),
            (r#"{"customer_agreement_id":7,"billing_feature_code":"f","meter_value":"1"}"#.into(), &["INVALID_FIELD"]),
            (r#"{"customer_agreement_id":"a","billing_feature_code":null,"meter_value":"1"}"#.into(), &["INVALID_FIELD"]),
            // meter_value
            (value("1"), &["INVALID_FIELD"]),
            (value("1.5"), &["INVALID_FIELD"]),
            (value("null"), &["INVALID_FIELD"]),
            (value(r#""""#), &["INVALID_FIELD"]),
            (value(r#""-1""#), &["INVALID_FIELD"]),
            (value(r#""+1""#), &["INVALID_FIELD"]),
            (value(r#""1e3""#), &["INVALID_FIELD"]),
            (value(r#""1.""#), &["INVALID_FIELD"]),
            (value(r#"".5""#), &["INVALID_FIELD"]),
            (value(r#"" 1""#), &["INVALID_FIELD"]),
            (value(r#""1.0000000001""#), &["INVALID_FIELD"]),
            (value(r#""NaN""#), &["INVALID_FIELD"]),
            (value(r#""0.000000001""#), &[]),
            (value(r#""0""#), &[]),
            // meter_usage_timestamp
            (ts(r#""2024-11-18T13:32:03Z""#), &[]),
            (ts(r#""2024-11-18T13:32:03.123456789Z""#), &[]),
            (ts(r#""2024-11-18T13:32:03+11:00""#), &[]),
            (ts(r#""2024-11-18T13:32:03-00:00""#), &[]),
            (ts(r#""2024-02-29T00:00:00Z""#), &[]),
            (ts(r#""2024-11-18T13:32:03+11""#), &["INVALID_FIELD"]),
            (ts(r#""2024-11-18T13:32:03""#), &["INVALID_FIELD"]),
            (ts(r#""2024-11-18 13:32:03Z""#), &["INVALID_FIELD"]),
            (ts(r#""2024-11-18t13:32:03z""#), &["INVALID_FIELD"]),
            (ts(r#""2024-11-18T13:32Z""#), &["INVALID_FIELD"]),
            (ts(r#""2024-11-18""#), &["INVALID_FIELD"]),
            (ts(r#""2023-02-29T00:00:00Z""#), &["INVALID_FIELD"]),
            (ts(r#""2024-13-01T00:00:00Z""#), &["INVALID_FIELD"]),
            (ts(r#""2024-00-01T00:00:00Z""#), &["INVALID_FIELD"]),
            (ts(r#""2024-04-31T00:00:00Z""#), &["INVALID_FIELD"]),
            (ts(r#""2024-11-18T24:00:00Z""#), &["INVALID_FIELD"]),
            (ts(r#""2024-11-18T23:60:00Z""#), &["INVALID_FIELD"]),
            (ts(r#""2024-11-18T23:59:60Z""#), &["INVALID_FIELD"]),
            (ts(r#""2024-11-18T13:32:03.Z""#), &["INVALID_FIELD"]),
            (ts(r#""2024-11-18T13:32:03.1234567890Z""#), &["INVALID_FIELD"]),
            (ts(r#""2024-11-18T13:32:03+24:00""#), &["INVALID_FIELD"]),
            (ts(r#""2024-11-18T13:32:03+11:00Z""#), &["INVALID_FIELD"]),
            (ts(r#""2024-11-18T13:32:03Zjunk""#), &["INVALID_FIELD"]),
            (ts(r#""١٢٣٤-11-18T13:32:03Z""#), &["INVALID_FIELD"]),
            (ts("1731936723"), &["INVALID_FIELD"]),
            (ts("null"), &["INVALID_FIELD"]),
            // meter_type_code
            (ty(r#""delta""#), &[]),
            (ty(r#""absolute""#), &[]),
            (ty(r#""Delta""#), &["INVALID_FIELD"]),
            (ty(r#""increment""#), &["INVALID_FIELD"]),
            (ty("1"), &["INVALID_FIELD"]),
            // unknown fields
            (value(r#""1","customer_id":"c""#), &["UNKNOWN_FIELD"]),
        ];
        for (body, expected) in cases {
            assert_eq!(codes_of(&body), expected, "body: {body}");
        }
    }

    #[test]
    fn content_type_and_encoding() {
        let body = br#"{"customer_agreement_id":"a","billing_feature_code":"f","meter_value":"1"}"#;
        assert!(
            validate_usage(
                Some("application/json; charset=utf-8"),
                body,
                Known::default()
            )
            .is_ok()
        );
        assert!(validate_usage(Some("Application/JSON"), body, Known::default()).is_ok());
        for ct in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
        ] {
            assert!(matches!(
                validate_usage(ct, body, Known::default()),
                Err((415, _))
            ));
        }
        let garbage = [0xff, 0xfe, b'{', 0x80];
        assert!(matches!(
            validate_usage(JSON, &garbage, Known::default()),
            Err((400, _))
        ));
        let deep = "[".repeat(100_000);
        assert!(matches!(
            validate_usage(JSON, deep.as_bytes(), Known::default()),
            Err((400, _))
        ));
    }

    #[test]
    fn known_agreements_and_features() {
        let agreements: BTreeSet<String> = ["a".to_owned()].into();
        let features: BTreeSet<String> = ["f".to_owned()].into();
        let known = Known {
            agreements: Some(&agreements),
            features: Some(&features),
        };
        let body = |a: &str, f: &str| {
            format!(
                r#"{{"customer_agreement_id":"{a}","billing_feature_code":"{f}","meter_value":"1"}}"#
            )
        };
        let codes = |b: String| match validate_usage(JSON, b.as_bytes(), known) {
            Ok(_) => Vec::new(),
            Err((_, e)) => e.iter().map(|e| e.code).collect(),
        };
        assert!(codes(body("a", "f")).is_empty());
        assert_eq!(codes(body("b", "f")), ["AGREEMENT_NOT_FOUND"]);
        assert_eq!(codes(body("a", "F")), ["FEATURE_NOT_FOUND"]);
        assert_eq!(
            codes(body("b", "g")),
            ["AGREEMENT_NOT_FOUND", "FEATURE_NOT_FOUND"]
        );
    }
}
