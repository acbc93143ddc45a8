//! What a verified webhook says: its [`EventKind`] and the ids in its `data`, read
//! leniently because Kinde does not document the billing payloads.

use std::fmt;

use serde_json::{Map, Value};

use super::claims::Claims;
use crate::api::{AgreementId, CustomerId, OrgCode, Timestamp, UserId, parse_date_time};

/// The type of a Kinde billing webhook (the token's `type` claim).
///
/// ```
/// use kinde_meter::webhooks::EventKind;
///
/// let kind = EventKind::from_type("customer.plan_changed");
/// assert_eq!(kind, EventKind::PlanChanged);
/// assert!(kind.changes_billing());
/// assert_eq!(kind.as_str(), "customer.plan_changed");
/// assert_eq!(EventKind::from_type("user.created"), EventKind::Other("user.created".to_owned()));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// `customer.agreement_created`: a customer subscribed to a plan.
    AgreementCreated,
    /// `customer.agreement_cancelled`: a customer's agreement ended.
    AgreementCancelled,
    /// `customer.plan_assigned`: a plan was assigned to a customer.
    PlanAssigned,
    /// `customer.plan_changed`: a customer moved to another plan.
    PlanChanged,
    /// `customer.meter_usage_updated`: metered usage was recorded.
    MeterUsageUpdated,
    /// `customer.payment_failed`.
    PaymentFailed,
    /// `customer.payment_succeeded`.
    PaymentSucceeded,
    /// `customer.invoice_overdue`.
    InvoiceOverdue,
    /// Any other type, as sent.
    Other(String),
}

impl EventKind {
    const KNOWN: [(&'static str, EventKind); 8] = [
        ("customer.agreement_created", EventKind::AgreementCreated),
        (
            "customer.agreement_cancelled",
            EventKind::AgreementCancelled,
        ),
        ("customer.plan_assigned", EventKind::PlanAssigned),
        ("customer.plan_changed", EventKind::PlanChanged),
        ("customer.meter_usage_updated", EventKind::MeterUsageUpdated),
        ("customer.payment_failed", EventKind::PaymentFailed),
        ("customer.payment_succeeded", EventKind::PaymentSucceeded),
        ("customer.invoice_overdue", EventKind::InvoiceOverdue),
    ];

    /// The kind of a `type` claim.
    pub fn from_type(kind: &str) -> Self {
        Self::KNOWN
            .iter()
            .find(|(name, _)| *name == kind)
            .map_or_else(
                || EventKind::Other(kind.to_owned()),
                |(_, known)| known.clone(),
            )
    }

    /// The `type` claim of this kind.
    pub fn as_str(&self) -> &str {
        match self {
            EventKind::Other(kind) => kind,
            known => Self::KNOWN
                .iter()
                .find(|(_, k)| k == known)
                .map_or("", |(name, _)| name),
        }
    }

    /// Whether the event changes whom usage is billed to or on what terms: an agreement
    /// created or cancelled, a plan assigned or changed. Kinde forgives a customer's
    /// unpaid metered usage on a plan change or cancellation by default, so pending usage
    /// should be delivered, and cached agreements dropped, as soon as one arrives.
    pub fn changes_billing(&self) -> bool {
        matches!(
            self,
            EventKind::AgreementCreated
                | EventKind::AgreementCancelled
                | EventKind::PlanAssigned
                | EventKind::PlanChanged
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verified Kinde billing webhook.
///
/// The top-level claims are those Kinde documents (`type`, `event_id`,
/// `event_timestamp`, `timestamp`, `source`, `data`). The billing `data` payloads are
/// **not documented**; the typed fields below rest on these assumptions, each read
/// leniently (a field missing, `null`, of another type or not a valid id is `None`, and
/// never refuses the webhook):
///
/// - `data.customer_id`: the billing customer's id ([`CustomerId`]);
/// - `data.agreement_id`: the agreement the event is about ([`AgreementId`]);
/// - `data.previous_agreement_id`: on a plan change, the agreement it replaced;
/// - `data.plan_code`: the plan's code;
/// - `data.org_code`: the organization billed, when the customer is one ([`OrgCode`]);
/// - `data.user_id`: the user billed, when the customer is one ([`UserId`]).
///
/// The whole payload is kept in [`data`](Self::data) for anything else.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WebhookEvent {
    /// The `webhook-id` header: the same on every delivery of one webhook.
    pub webhook_id: Option<String>,
    /// The `event_id` claim.
    pub event_id: Option<String>,
    /// The `type` claim.
    pub kind: EventKind,
    /// The `event_timestamp` claim (when the event happened), to whole seconds.
    pub event_timestamp: Option<Timestamp>,
    /// The `timestamp` claim (when the webhook was sent), to whole seconds.
    pub timestamp: Option<Timestamp>,
    /// The `source` claim.
    pub source: Option<String>,
    /// `data.customer_id`.
    pub customer: Option<CustomerId>,
    /// `data.org_code`.
    pub org_code: Option<OrgCode>,
    /// `data.user_id`.
    pub user_id: Option<UserId>,
    /// `data.agreement_id`.
    pub agreement: Option<AgreementId>,
    /// `data.previous_agreement_id`.
    pub previous_agreement: Option<AgreementId>,
    /// `data.plan_code`.
    pub plan_code: Option<String>,
    /// The `data` claim as sent (`null` when absent).
    pub data: Value,
}

fn string(fields: &Map<String, Value>, name: &str) -> Option<String> {
    fields.get(name)?.as_str().map(str::to_owned)
}

/// A `data` field parsed as an id type, `None` when absent or invalid.
fn id<T: std::str::FromStr>(data: &Value, name: &str) -> Option<T> {
    let text = data.get(name)?.as_str()?;
    let parsed = text.parse().ok();
    if parsed.is_none() {
        tracing::debug!(target: "kinde_meter", field = name, "a webhook's data field is not a valid id; ignored");
    }
    parsed
}

impl WebhookEvent {
    pub(super) fn new(webhook_id: Option<&str>, mut claims: Claims) -> Self {
        let data = claims.fields.remove("data").unwrap_or(Value::Null);
        let time = |name| {
            string(&claims.fields, name)
                .as_deref()
                .and_then(parse_date_time)
        };
        Self {
            webhook_id: webhook_id.map(str::to_owned),
            event_id: string(&claims.fields, "event_id"),
            kind: EventKind::from_type(&claims.kind),
            event_timestamp: time("event_timestamp"),
            timestamp: time("timestamp"),
            source: string(&claims.fields, "source"),
            customer: id(&data, "customer_id"),
            org_code: id(&data, "org_code"),
            user_id: id(&data, "user_id"),
            agreement: id(&data, "agreement_id"),
            previous_agreement: id(&data, "previous_agreement_id"),
            plan_code: data
                .get("plan_code")
                .and_then(Value::as_str)
                .map(str::to_owned),
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(claims: &str) -> WebhookEvent {
        WebhookEvent::new(
            Some("msg_1"),
            Claims::parse(claims.as_bytes()).expect("claims"),
        )
    }

    #[test]
    fn every_kind_round_trips() {
        for (name, kind) in EventKind::KNOWN {
            assert_eq!(EventKind::from_type(name), kind);
            assert_eq!(kind.as_str(), name);
            assert_eq!(
                kind.changes_billing(),
                name.contains("agreement") || name.contains("plan"),
                "{name}"
            );
        }
        let other = EventKind::from_type("customer.plan_created");
        assert_eq!(other.as_str(), "customer.plan_created");
        assert!(!other.changes_billing());
    }

    #[test]
    fn the_assumed_fields_are_read() {
        let e = event(
            r#"{"type":"customer.plan_changed","event_id":"event_1","source":"admin",
                "event_timestamp":"2026-01-02T03:04:05.678+01:00","timestamp":"2026-01-02T02:04:06Z",
                "data":{"customer_id":"customer_1","agreement_id":"agreement_2",
                        "previous_agreement_id":"agreement_1","plan_code":"pro",
                        "org_code":"org_1","user_id":"kp_1","extra":{"x":1}}}"#,
        );
        assert_eq!(e.webhook_id.as_deref(), Some("msg_1"));
        assert_eq!(e.event_id.as_deref(), Some("event_1"));
        assert_eq!(e.kind, EventKind::PlanChanged);
        assert_eq!(e.source.as_deref(), Some("admin"));
        assert_eq!(
            e.event_timestamp.map(|t| t.unix_seconds()),
            Some(1_767_319_445)
        );
        assert_eq!(e.timestamp.map(|t| t.unix_seconds()), Some(1_767_319_446));
        assert_eq!(
            e.customer.as_ref().map(CustomerId::as_str),
            Some("customer_1")
        );
        assert_eq!(
            e.agreement.as_ref().map(AgreementId::as_str),
            Some("agreement_2")
        );
        assert_eq!(
            e.previous_agreement.as_ref().map(AgreementId::as_str),
            Some("agreement_1")
        );
        assert_eq!(e.plan_code.as_deref(), Some("pro"));
        assert_eq!(e.org_code.as_ref().map(OrgCode::as_str), Some("org_1"));
        assert_eq!(e.user_id.as_ref().map(UserId::as_str), Some("kp_1"));
        assert_eq!(e.data["extra"]["x"], 1);
    }

    #[test]
    fn odd_or_missing_fields_are_none_not_refusals() {
        for claims in [
            r#"{"type":"customer.plan_changed"}"#,
            r#"{"type":"customer.plan_changed","data":null,"event_id":7,"timestamp":"yesterday"}"#,
            r#"{"type":"customer.plan_changed","data":[1,2]}"#,
            r#"{"type":"customer.plan_changed","data":"text"}"#,
            r#"{"type":"customer.plan_changed","data":{"customer_id":42,"agreement_id":"two words",
                "org_code":"","user_id":null,"plan_code":{"code":"pro"},"previous_agreement_id":[]}}"#,
        ] {
            let e = event(claims);
            assert_eq!(e.kind, EventKind::PlanChanged, "{claims}");
            assert!(
                e.customer.is_none()
                    && e.agreement.is_none()
                    && e.previous_agreement.is_none()
                    && e.org_code.is_none()
                    && e.user_id.is_none()
                    && e.plan_code.is_none()
                    && e.event_id.is_none()
                    && e.timestamp.is_none(),
                "{claims}: {e:?}"
            );
        }
    }
}
