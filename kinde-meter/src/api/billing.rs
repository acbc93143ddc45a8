//! The wire model of Kinde's billing read-backs: whom an organization or a user bills
//! (`GET /api/v1/organization`, `GET /api/v1/user` with `expand=billing`) and a billing
//! customer's agreements (`GET /api/v1/billing/agreements`).
//!
//! Answers are parsed leniently: every field is optional on the wire, unknown fields are
//! ignored, and an entry whose id does not validate is dropped rather than failing the
//! whole page. What the resolver relies on is named on the field.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::api::model::{AgreementId, FeatureCode, InvalidInput, MAX_ID_LEN, Timestamp};

fn check_id(what: &'static str, s: &str) -> Result<(), InvalidInput> {
    let reason = if s.is_empty() {
        "must not be empty"
    } else if s.len() > MAX_ID_LEN {
        "must be at most 255 bytes long"
    } else if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        "may only contain ASCII letters, digits, `_` and `-`"
    } else {
        return Ok(());
    };
    Err(InvalidInput::new(what, s, reason))
}

/// Defines a validated, cheaply cloned string id: same alphabet and bound as
/// [`AgreementId`], serialized as the plain string, validated on deserialization.
macro_rules! kinde_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $example:literal) => {
        $(#[$doc])*
        ///
        /// Non-empty, at most 255 bytes of ASCII letters, digits, `_` and `-`.
        ///
        /// ```
        #[doc = concat!("let id: kinde_meter::api::", stringify!($name), " = \"", $example, "\".parse()?;")]
        #[doc = concat!("assert_eq!(id.as_str(), \"", $example, "\");")]
        #[doc = concat!("assert!(kinde_meter::api::", stringify!($name), "::new(\"two words\").is_err());")]
        /// # Ok::<(), kinde_meter::api::InvalidInput>(())
        /// ```
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `id` and wraps it.
            pub fn new(id: impl AsRef<str>) -> Result<Self, InvalidInput> {
                let id = id.as_ref();
                check_id($what, id)?;
                Ok(Self(Arc::from(id)))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidInput;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidInput;
            fn try_from(s: &str) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidInput;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&*text).map_err(serde::de::Error::custom)
            }
        }
    };
}

kinde_id!(
    /// A Kinde billing customer id, such as `customer_0195ac80a14c2ca2cec97d026d864de0`.
    CustomerId,
    "billing customer id",
    "customer_0195ac80a14c2ca2cec97d026d864de0"
);
kinde_id!(
    /// A Kinde organization code, the `org_code` claim of a token (`org_1ccfb819462`).
    OrgCode,
    "organization code",
    "org_1ccfb819462"
);
kinde_id!(
    /// A Kinde user id, the `sub` claim of a user's token (`kp_c3143a4b50ad43c88e541d9077681782`).
    UserId,
    "user id",
    "kp_c3143a4b50ad43c88e541d9077681782"
);

/// Parses a value that may be missing, `null` or malformed as `None`: Kinde documents few
/// of these fields, and one bad field must not hide the rest of an answer.
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(value).ok())
}

/// Parses a list, dropping the entries that do not parse (see [`lenient`]).
fn lenient_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = serde_json::Value::deserialize(d)?;
    Ok(match value {
        serde_json::Value::Array(items) => items
            .into_iter()
            .filter_map(|item| serde_json::from_value(item).ok())
            .collect(),
        _ => Vec::new(),
    })
}

/// Reads Kinde's date-times: RFC 3339, with or without fractional seconds or an offset,
/// to whole seconds (rounded down).
fn lenient_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(value.as_str().and_then(parse_date_time))
}

/// `YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)` to a [`Timestamp`], or `None`.
pub(crate) fn parse_date_time(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    if s.len() < 20 || !s.is_char_boundary(19) {
        return None;
    }
    let (head, mut rest) = s.split_at(19);
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        rest = &fraction[digits..];
    }
    let offset_secs: i64 = match rest {
        "Z" | "z" | "+00:00" | "-00:00" => 0,
        _ => {
            let b = rest.as_bytes();
            if b.len() != 6 || b[3] != b':' || !(b[0] == b'+' || b[0] == b'-') {
                return None;
            }
            let hours: i64 = rest[1..3].parse().ok()?;
            let minutes: i64 = rest[4..6].parse().ok()?;
            let sign = if b[0] == b'-' { -1 } else { 1 };
            sign * (hours * 3600 + minutes * 60)
        }
    };
    let utc: Timestamp = format!("{head}Z").parse().ok()?;
    let secs = i64::try_from(utc.unix_seconds()).ok()? - offset_secs;
    Timestamp::from_unix_seconds(u64::try_from(secs).ok()?).ok()
}

/// One entitlement of an agreement: a feature usage can be recorded against.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct AgreementEntitlement {
    /// The feature's code. Relied on to choose the agreement for a feature.
    pub feature_code: FeatureCode,
    /// The entitlement's friendly id, when Kinde gives one.
    #[serde(default, deserialize_with = "lenient")]
    pub entitlement_id: Option<String>,
}

/// One of a billing customer's agreements, as `GET /api/v1/billing/agreements` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Agreement {
    /// The agreement's id: what meter usage is recorded against.
    pub id: AgreementId,
    /// The plan it subscribes to.
    #[serde(default, deserialize_with = "lenient")]
    pub plan_code: Option<String>,
    /// When it expired, if it has.
    #[serde(default, deserialize_with = "lenient_time")]
    pub expires_on: Option<Timestamp>,
    /// The billing group of the plan.
    #[serde(default, deserialize_with = "lenient")]
    pub billing_group_id: Option<String>,
    /// Start of the current billing cycle.
    #[serde(default, deserialize_with = "lenient_time")]
    pub current_period_start: Option<Timestamp>,
    /// End of the current billing cycle. Kinde says it may lag (be in the past) when a
    /// cycle roll has not been synced yet.
    #[serde(default, deserialize_with = "lenient_time")]
    pub current_period_end: Option<Timestamp>,
    /// The features usage may be recorded against.
    #[serde(default, deserialize_with = "lenient_list")]
    pub entitlements: Vec<AgreementEntitlement>,
}

impl Agreement {
    /// An agreement with entitlements to `features` and nothing else known of it: for
    /// a [`StaticResolver`](crate::resolve::StaticResolver) or a test.
    pub fn new(id: AgreementId, features: impl IntoIterator<Item = FeatureCode>) -> Self {
        Self {
            id,
            plan_code: None,
            expires_on: None,
            billing_group_id: None,
            current_period_start: None,
            current_period_end: None,
            entitlements: features
                .into_iter()
                .map(|feature_code| AgreementEntitlement {
                    feature_code,
                    entitlement_id: None,
                })
                .collect(),
        }
    }

    /// Whether this agreement has an entitlement for `feature`.
    pub fn has_feature(&self, feature: &FeatureCode) -> bool {
        self.entitlements.iter().any(|e| &e.feature_code == feature)
    }
}

/// One page of `GET /api/v1/billing/agreements`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct AgreementsPage {
    /// The agreements on this page; entries that do not parse are dropped.
    #[serde(default, deserialize_with = "lenient_list")]
    pub agreements: Vec<Agreement>,
    /// Whether another page follows (ask with `starting_after` = the last id).
    #[serde(default, deserialize_with = "lenient")]
    pub has_more: Option<bool>,
}

/// An organization's billing, from `GET /api/v1/organization?code=…&expand=billing`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct OrganizationBilling {
    /// The billing customer the organization is. Relied on to list its agreements.
    #[serde(default, deserialize_with = "lenient")]
    pub billing_customer_id: Option<CustomerId>,
    /// Its agreements, by id and plan only.
    #[serde(default, deserialize_with = "lenient_list")]
    pub agreements: Vec<OrganizationAgreement>,
}

/// An agreement as the organization endpoint lists it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct OrganizationAgreement {
    /// The agreement's id.
    pub agreement_id: AgreementId,
    /// The plan it subscribes to.
    #[serde(default, deserialize_with = "lenient")]
    pub plan_code: Option<String>,
}

/// The answer of `GET /api/v1/organization?code=…&expand=billing`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Organization {
    /// The organization's code.
    #[serde(default, deserialize_with = "lenient")]
    pub code: Option<OrgCode>,
    /// Its billing, when Kinde expanded it.
    #[serde(default, deserialize_with = "lenient")]
    pub billing: Option<OrganizationBilling>,
}

/// A user's billing, from `GET /api/v1/user?id=…&expand=billing`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct UserBilling {
    /// The billing customer the user is. Relied on to list its agreements.
    #[serde(default, deserialize_with = "lenient")]
    pub customer_id: Option<CustomerId>,
}

/// The answer of `GET /api/v1/user?id=…&expand=billing`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct User {
    /// The user's id.
    #[serde(default, deserialize_with = "lenient")]
    pub id: Option<UserId>,
    /// Their billing, when Kinde expanded it.
    #[serde(default, deserialize_with = "lenient")]
    pub billing: Option<UserBilling>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_times_in_the_shapes_kinde_writes() {
        let at = |s| parse_date_time(s).map(Timestamp::unix_seconds);
        assert_eq!(at("2026-01-01T00:00:00Z"), Some(1_767_225_600));
        assert_eq!(at("2026-01-01T00:00:00.123456Z"), Some(1_767_225_600));
        assert_eq!(at("2026-01-01T01:00:00+01:00"), Some(1_767_225_600));
        assert_eq!(at("2025-12-31T23:00:00-01:00"), Some(1_767_225_600));
        assert_eq!(at("2026-01-01"), None);
        assert_eq!(at("2026-01-01T00:00:00+1:00"), None);
        assert_eq!(at("not a time at all, no"), None);
    }

    #[test]
    fn a_bad_entry_is_dropped_not_the_page() {
        let page: AgreementsPage = serde_json::from_str(
            r#"{"has_more": "yes", "agreements": [
                {"id": "agreement_1", "plan_code": "pro", "current_period_end": "2026-02-01T00:00:00Z",
                 "entitlements": [{"feature_code": "api_calls", "entitlement_id": "e_1"}, {"feature_code": "bad code"}]},
                {"id": "not an id"},
                {"plan_code": "no id"}
            ]}"#,
        )
        .unwrap();
        assert_eq!(page.has_more, None);
        assert_eq!(page.agreements.len(), 1);
        let agreement = &page.agreements[0];
        assert_eq!(agreement.id.as_str(), "agreement_1");
        assert_eq!(agreement.entitlements.len(), 1);
        assert!(agreement.has_feature(&FeatureCode::new("api_calls").unwrap()));
        assert_eq!(
            agreement.current_period_end.map(Timestamp::unix_seconds),
            Some(1_769_904_000)
        );
    }

    #[test]
    fn organization_and_user_billing() {
        let org: Organization = serde_json::from_str(
            r#"{"code": "org_1", "name": "Acme", "billing": {"billing_customer_id": "customer_1",
                "agreements": [{"plan_code": "pro", "agreement_id": "agreement_1"}]}}"#,
        )
        .unwrap();
        let billing = org.billing.unwrap();
        assert_eq!(billing.billing_customer_id.unwrap().as_str(), "customer_1");
        assert_eq!(billing.agreements[0].agreement_id.as_str(), "agreement_1");
        let user: User =
            serde_json::from_str(r#"{"id": "kp_1", "billing": {"customer_id": "customer_2"}}"#)
                .unwrap();
        assert_eq!(
            user.billing.unwrap().customer_id.unwrap().as_str(),
            "customer_2"
        );
        let bare: User = serde_json::from_str(r#"{"id": "kp_1"}"#).unwrap();
        assert!(bare.billing.is_none());
    }
}

/// Whom a service bills, as it knows them from a verified Kinde token: an organization
/// (`org_code`, B2B), a user (`sub`, B2C), or a billing customer id it already has.
///
/// Usage recorded for a customer is resolved to one of its agreements when its window
/// closes, on the reporter's thread (see `Config::resolver`), never on the caller's.
///
/// ```
/// use kinde_meter::Customer;
///
/// let org = Customer::org("org_1ccfb819462")?;
/// let user = Customer::user("kp_c3143a4b50ad43c88e541d9077681782")?;
/// assert_eq!(org.to_string(), "organization org_1ccfb819462");
/// assert!(Customer::org("").is_err());
/// # let _ = user;
/// # Ok::<(), kinde_meter::api::InvalidInput>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Customer {
    /// An organization, by its code (the `org_code` claim).
    Org(OrgCode),
    /// A user, by their id (the `sub` claim).
    User(UserId),
    /// A billing customer, by its id.
    Id(CustomerId),
}

impl Customer {
    /// An organization by its code.
    pub fn org(code: impl AsRef<str>) -> Result<Self, InvalidInput> {
        OrgCode::new(code).map(Self::Org)
    }

    /// A user by their id.
    pub fn user(id: impl AsRef<str>) -> Result<Self, InvalidInput> {
        UserId::new(id).map(Self::User)
    }

    /// A billing customer by its id.
    pub fn id(id: impl AsRef<str>) -> Result<Self, InvalidInput> {
        CustomerId::new(id).map(Self::Id)
    }

    /// The customer a verified Kinde token names: its organization when it has an
    /// `org_code` (B2B), else its user by `sub` (B2C). `None` when neither is a valid id.
    ///
    /// ```
    /// use kinde_meter::Customer;
    ///
    /// assert_eq!(Customer::from_claims(Some("org_1"), Some("kp_1")), Customer::org("org_1").ok());
    /// assert_eq!(Customer::from_claims(None, Some("kp_1")), Customer::user("kp_1").ok());
    /// assert_eq!(Customer::from_claims(None, None), None);
    /// ```
    pub fn from_claims(org_code: Option<&str>, sub: Option<&str>) -> Option<Self> {
        match org_code.filter(|c| !c.is_empty()) {
            Some(code) => Self::org(code).ok(),
            None => Self::user(sub?).ok(),
        }
    }

    /// The form carried through the hot path in place of an agreement id:
    /// `org:<code>`, `user:<id>` or `customer:<id>`. The `:` is outside the alphabet of
    /// agreement ids, so no agreement can be taken for a customer or the other way round.
    pub(crate) fn placeholder(&self) -> String {
        match self {
            Customer::Org(code) => format!("org:{code}"),
            Customer::User(id) => format!("user:{id}"),
            Customer::Id(id) => format!("customer:{id}"),
        }
    }

    /// Reads back [`Customer::placeholder`].
    pub(crate) fn from_placeholder(s: &str) -> Option<Self> {
        let (kind, id) = s.split_once(':')?;
        match kind {
            "org" => Self::org(id).ok(),
            "user" => Self::user(id).ok(),
            "customer" => Self::id(id).ok(),
            _ => None,
        }
    }
}

impl fmt::Display for Customer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Customer::Org(code) => write!(f, "organization {code}"),
            Customer::User(id) => write!(f, "user {id}"),
            Customer::Id(id) => write!(f, "billing customer {id}"),
        }
    }
}

impl Serialize for Customer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.placeholder())
    }
}

impl<'de> Deserialize<'de> for Customer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_placeholder(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid customer {text:?}: expected `org:<code>`, `user:<id>` or `customer:<id>`"
            ))
        })
    }
}
