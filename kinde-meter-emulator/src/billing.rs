//! Billing objects: plans, billing customers, organizations, users and agreements
//! with their billing cycles, and the events their changes raise.
//!
//! Times here are wall-clock ([`SystemTime`]): they are what Kinde's read endpoints
//! answer, and what a record's `meter_usage_timestamp` is compared with.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::clock::format_rfc3339;

/// The `billing_group_id` every emulated agreement carries.
pub const BILLING_GROUP_ID: &str = "billing_group_emulator";
/// The default length of a billing cycle: 30 days.
pub const DEFAULT_CYCLE_LENGTH: Duration = Duration::from_secs(30 * 86_400);

/// A billing customer made by [`Emulator::add_organization`](crate::Emulator::add_organization),
/// [`add_user`](crate::Emulator::add_user) or [`add_customer`](crate::Emulator::add_customer):
/// its id and the id of its first agreement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct BillingCustomer {
    /// `customer_<32 hex>`.
    pub customer_id: String,
    /// `agreement_<32 hex>`: the agreement on the plan it was made with.
    pub agreement_id: String,
}

/// One billing cycle of an agreement: the `index`-th (0 for the first), from
/// `start` (included) to `end` (excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Cycle {
    /// 0 for the agreement's first cycle, then 1, 2, ...
    pub index: u64,
    /// When it starts (included).
    pub start: SystemTime,
    /// When it ends (excluded).
    pub end: SystemTime,
}

/// A feature an agreement gives access to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Entitlement {
    /// The plan's feature code.
    pub feature_code: String,
    /// `entitlement_<32 hex>`, unique to the agreement.
    pub entitlement_id: String,
}

/// A customer agreement, as the emulator holds it (see [`Emulator::agreement`](crate::Emulator::agreement)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Agreement {
    /// `agreement_<32 hex>`.
    pub id: String,
    /// The billing customer it belongs to.
    pub customer_id: String,
    /// The plan it is on.
    pub plan_code: String,
    /// The plan's features, each with its own entitlement id.
    pub entitlements: Vec<Entitlement>,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it was cancelled; `None` while active.
    pub expires_on: Option<SystemTime>,
    /// Its current cycle (rolled forward to now when active; frozen at cancellation).
    pub current_period: Cycle,
    /// Always [`BILLING_GROUP_ID`].
    pub billing_group_id: String,
}

impl Agreement {
    /// Whether it has not been cancelled.
    pub fn is_active(&self) -> bool {
        self.expires_on.is_none()
    }
}

/// Why a billing operation of the emulator was refused. The message names the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BillingError {
    /// No plan has this code: add it first with `add_plan`.
    PlanNotFound(String),
    /// No billing customer has this id.
    CustomerNotFound(String),
    /// No agreement has this id.
    AgreementNotFound(String),
    /// The agreement was already cancelled.
    AgreementCancelled(String),
    /// An organization or user with this id already exists.
    AlreadyExists(String),
    /// A malformed argument; the message says which and why.
    Invalid(String),
}

impl fmt::Display for BillingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BillingError::PlanNotFound(code) => {
                write!(f, "no plan `{code}`: add it first (add_plan)")
            }
            BillingError::CustomerNotFound(id) => write!(f, "no billing customer `{id}`"),
            BillingError::AgreementNotFound(id) => write!(f, "no agreement `{id}`"),
            BillingError::AgreementCancelled(id) => {
                write!(f, "the agreement `{id}` is already cancelled")
            }
            BillingError::AlreadyExists(what) => write!(f, "{what} already exists"),
            BillingError::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for BillingError {}

/// Who a billing customer is.
#[derive(Debug, Clone, Default)]
struct Customer {
    org_code: Option<String>,
    user_id: Option<String>,
    /// Its agreements in creation order.
    agreements: Vec<String>,
}

/// A run of consecutive cycles of one length.
#[derive(Debug, Clone, Copy)]
struct Run {
    first_index: u64,
    start: SystemTime,
    length: Duration,
    count: u32,
}

impl Run {
    fn cycle(&self, i: u32) -> Cycle {
        let start = add(self.start, self.length.saturating_mul(i));
        Cycle {
            index: self.first_index + u64::from(i),
            start,
            end: add(start, self.length),
        }
    }

    fn last(&self) -> Cycle {
        self.cycle(self.count.saturating_sub(1))
    }
}

fn add(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d).unwrap_or(t)
}

#[derive(Debug, Clone)]
struct AgreementState {
    customer_id: String,
    plan_code: String,
    entitlements: Vec<Entitlement>,
    created_at: SystemTime,
    expires_on: Option<SystemTime>,
    /// Its cycles so far, oldest first; never empty. The last cycle of the last run is
    /// the current one.
    runs: Vec<Run>,
}

impl AgreementState {
    fn current(&self) -> Cycle {
        self.runs.last().map_or(
            Cycle {
                index: 0,
                start: self.created_at,
                end: self.created_at,
            },
            Run::last,
        )
    }

    /// Rolls the current cycle forward until it contains `now` (active agreements only).
    fn roll(&mut self, now: SystemTime, length: Duration) {
        if self.expires_on.is_some() || length.is_zero() {
            return;
        }
        let current = self.current();
        let Ok(behind) = now.duration_since(current.end) else {
            return;
        };
        let skipped = behind.as_nanos() / length.as_nanos() + 1;
        let skipped = u32::try_from(skipped).unwrap_or(u32::MAX);
        match self.runs.last_mut() {
            Some(run) if run.length == length => run.count = run.count.saturating_add(skipped),
            _ => self.runs.push(Run {
                first_index: current.index + 1,
                start: current.end,
                length,
                count: skipped,
            }),
        }
    }

    /// The cycle that contains `t`, among those so far.
    fn cycle_at(&self, t: SystemTime) -> Option<Cycle> {
        self.runs.iter().find_map(|run| {
            let since = t.duration_since(run.start).ok()?;
            let i = since.as_nanos() / run.length.as_nanos().max(1);
            u32::try_from(i)
                .ok()
                .filter(|i| *i < run.count)
                .map(|i| run.cycle(i))
        })
    }

    fn public(&self, id: &str) -> Agreement {
        Agreement {
            id: id.to_owned(),
            customer_id: self.customer_id.clone(),
            plan_code: self.plan_code.clone(),
            entitlements: self.entitlements.clone(),
            created_at: self.created_at,
            expires_on: self.expires_on,
            current_period: self.current(),
            billing_group_id: BILLING_GROUP_ID.to_owned(),
        }
    }
}

/// A billing event to deliver: its type, its customer and its `data` claim.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BillingEvent {
    pub(crate) event_type: &'static str,
    pub(crate) customer_id: String,
    pub(crate) data: Value,
    pub(crate) at: SystemTime,
}

/// The billing objects.
#[derive(Debug, Clone)]
pub(crate) struct Billing {
    plans: BTreeMap<String, Vec<String>>,
    customers: BTreeMap<String, Customer>,
    /// Organization code → (name, customer id), in code order.
    organizations: BTreeMap<String, (String, String)>,
    /// User id → customer id.
    users: BTreeMap<String, String>,
    agreements: HashMap<String, AgreementState>,
    rng: fastrand::Rng,
    pub(crate) cycle_length: Duration,
    pub(crate) cancelled_accept_usage: bool,
}

/// A query parameter of a read endpoint that is wrong: (error code, message).
pub(crate) type QueryError = (u16, &'static str, String);

impl Billing {
    pub(crate) fn new(seed: u64) -> Self {
        Billing {
            plans: BTreeMap::new(),
            customers: BTreeMap::new(),
            organizations: BTreeMap::new(),
            users: BTreeMap::new(),
            agreements: HashMap::new(),
            rng: fastrand::Rng::with_seed(seed ^ 0xb111_1ab1_e5ee_d000),
            cycle_length: DEFAULT_CYCLE_LENGTH,
            cancelled_accept_usage: false,
        }
    }

    fn hex_id(&mut self, prefix: &str) -> String {
        format!(
            "{prefix}_{:016x}{:016x}",
            self.rng.u64(..),
            self.rng.u64(..)
        )
    }

    /// Adds a plan or replaces its features (agreements made before keep theirs).
    pub(crate) fn add_plan(
        &mut self,
        code: &str,
        features: Vec<String>,
    ) -> Result<(), BillingError> {
        check_id("the plan code", code)?;
        let mut seen = BTreeSet::new();
        for f in &features {
            check_id("a feature code", f)?;
            if !seen.insert(f.as_str()) {
                return Err(BillingError::Invalid(format!(
                    "the feature code `{f}` is repeated in plan `{code}`"
                )));
            }
        }
        self.plans.insert(code.to_owned(), features);
        Ok(())
    }

    fn check_plan(&self, plan: &str) -> Result<(), BillingError> {
        if self.plans.contains_key(plan) {
            Ok(())
        } else {
            Err(BillingError::PlanNotFound(plan.to_owned()))
        }
    }

    /// A new customer on `plan`; its events are pushed to `events`.
    fn new_customer(
        &mut self,
        who: Customer,
        plan: &str,
        now: SystemTime,
        events: &mut Vec<BillingEvent>,
    ) -> BillingCustomer {
        let customer_id = self.hex_id("customer");
        self.customers.insert(customer_id.clone(), who);
        let agreement_id = self.new_agreement(&customer_id, plan, now);
        self.push_event(
            events,
            "customer.agreement_created",
            &customer_id,
            &agreement_id,
            None,
            now,
        );
        self.push_event(
            events,
            "customer.plan_assigned",
            &customer_id,
            &agreement_id,
            None,
            now,
        );
        BillingCustomer {
            customer_id,
            agreement_id,
        }
    }

    /// A billing customer for organization `code` (named `name`) on `plan`.
    pub(crate) fn add_organization(
        &mut self,
        code: &str,
        name: &str,
        plan: &str,
        now: SystemTime,
        events: &mut Vec<BillingEvent>,
    ) -> Result<BillingCustomer, BillingError> {
        check_id("the organization code", code)?;
        self.check_plan(plan)?;
        if self.organizations.contains_key(code) {
            return Err(BillingError::AlreadyExists(format!(
                "the organization `{code}`"
            )));
        }
        let who = Customer {
            org_code: Some(code.to_owned()),
            ..Customer::default()
        };
        let made = self.new_customer(who, plan, now, events);
        self.organizations
            .insert(code.to_owned(), (name.to_owned(), made.customer_id.clone()));
        Ok(made)
    }

    /// A billing customer for user `id` on `plan`.
    pub(crate) fn add_user(
        &mut self,
        id: &str,
        plan: &str,
        now: SystemTime,
        events: &mut Vec<BillingEvent>,
    ) -> Result<BillingCustomer, BillingError> {
        check_id("the user id", id)?;
        self.check_plan(plan)?;
        if self.users.contains_key(id) {
            return Err(BillingError::AlreadyExists(format!("the user `{id}`")));
        }
        let who = Customer {
            user_id: Some(id.to_owned()),
            ..Customer::default()
        };
        let made = self.new_customer(who, plan, now, events);
        self.users.insert(id.to_owned(), made.customer_id.clone());
        Ok(made)
    }

    /// A billing customer that is neither an organization nor a user, on `plan`.
    pub(crate) fn add_customer(
        &mut self,
        plan: &str,
        now: SystemTime,
        events: &mut Vec<BillingEvent>,
    ) -> Result<BillingCustomer, BillingError> {
        self.check_plan(plan)?;
        Ok(self.new_customer(Customer::default(), plan, now, events))
    }

    fn new_agreement(&mut self, customer_id: &str, plan: &str, now: SystemTime) -> String {
        let id = self.hex_id("agreement");
        let features = self.plans.get(plan).cloned().unwrap_or_default();
        let entitlements = features
            .into_iter()
            .map(|feature_code| Entitlement {
                feature_code,
                entitlement_id: self.hex_id("entitlement"),
            })
            .collect();
        self.agreements.insert(
            id.clone(),
            AgreementState {
                customer_id: customer_id.to_owned(),
                plan_code: plan.to_owned(),
                entitlements,
                created_at: now,
                expires_on: None,
                runs: vec![Run {
                    first_index: 0,
                    start: now,
                    length: self.cycle_length,
                    count: 1,
                }],
            },
        );
        if let Some(c) = self.customers.get_mut(customer_id) {
            c.agreements.push(id.clone());
        }
        id
    }

    /// Another active agreement for a customer, without cancelling any (for tests
    /// of listings with several agreements).
    #[cfg(test)]
    pub(crate) fn extra_agreement_for_tests(&mut self, customer_id: &str, plan: &str) -> String {
        self.new_agreement(customer_id, plan, SystemTime::now())
    }

    fn push_event(
        &self,
        events: &mut Vec<BillingEvent>,
        event_type: &'static str,
        customer_id: &str,
        agreement_id: &str,
        previous: Option<&str>,
        now: SystemTime,
    ) {
        let mut data = json!({
            "customer_id": customer_id,
            "agreement_id": agreement_id,
        });
        if let Some(previous) = previous {
            data["previous_agreement_id"] = json!(previous);
        }
        if let Some(a) = self.agreements.get(agreement_id) {
            data["plan_code"] = json!(a.plan_code);
        }
        if let Some(c) = self.customers.get(customer_id) {
            if let Some(org) = &c.org_code {
                data["org_code"] = json!(org);
            }
            if let Some(user) = &c.user_id {
                data["user_id"] = json!(user);
            }
        }
        events.push(BillingEvent {
            event_type,
            customer_id: customer_id.to_owned(),
            data,
            at: now,
        });
    }

    fn active_agreements(&self, customer_id: &str) -> Vec<String> {
        self.customers
            .get(customer_id)
            .map(|c| {
                c.agreements
                    .iter()
                    .filter(|a| {
                        self.agreements
                            .get(*a)
                            .is_some_and(|a| a.expires_on.is_none())
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Moves `customer_id` to `plan`: a new agreement, and every active one cancelled.
    pub(crate) fn change_plan(
        &mut self,
        customer_id: &str,
        plan: &str,
        now: SystemTime,
        events: &mut Vec<BillingEvent>,
    ) -> Result<String, BillingError> {
        if !self.customers.contains_key(customer_id) {
            return Err(BillingError::CustomerNotFound(customer_id.to_owned()));
        }
        self.check_plan(plan)?;
        let previous = self.active_agreements(customer_id);
        let length = self.cycle_length;
        for id in &previous {
            if let Some(a) = self.agreements.get_mut(id) {
                // Its last cycle ends where it was when cancelled.
                a.roll(now, length);
                a.expires_on = Some(now);
            }
        }
        let id = self.new_agreement(customer_id, plan, now);
        self.push_event(
            events,
            "customer.agreement_created",
            customer_id,
            &id,
            None,
            now,
        );
        if previous.is_empty() {
            self.push_event(
                events,
                "customer.plan_assigned",
                customer_id,
                &id,
                None,
                now,
            );
        } else {
            for old in &previous {
                self.push_event(
                    events,
                    "customer.agreement_cancelled",
                    customer_id,
                    old,
                    None,
                    now,
                );
            }
            self.push_event(
                events,
                "customer.plan_changed",
                customer_id,
                &id,
                previous.first().map(String::as_str),
                now,
            );
        }
        Ok(id)
    }

    /// Cancels one agreement.
    pub(crate) fn cancel_agreement(
        &mut self,
        agreement_id: &str,
        now: SystemTime,
        events: &mut Vec<BillingEvent>,
    ) -> Result<(), BillingError> {
        let length = self.cycle_length;
        let Some(a) = self.agreements.get_mut(agreement_id) else {
            return Err(BillingError::AgreementNotFound(agreement_id.to_owned()));
        };
        if a.expires_on.is_some() {
            return Err(BillingError::AgreementCancelled(agreement_id.to_owned()));
        }
        a.roll(now, length);
        a.expires_on = Some(now);
        let customer_id = a.customer_id.clone();
        self.push_event(
            events,
            "customer.agreement_cancelled",
            &customer_id,
            agreement_id,
            None,
            now,
        );
        Ok(())
    }

    /// Ends the current cycle of an (active) agreement at `end`.
    pub(crate) fn set_period_end(
        &mut self,
        agreement_id: &str,
        end: SystemTime,
        now: SystemTime,
    ) -> Result<Agreement, BillingError> {
        let length = self.cycle_length;
        let Some(a) = self.agreements.get_mut(agreement_id) else {
            return Err(BillingError::AgreementNotFound(agreement_id.to_owned()));
        };
        if a.expires_on.is_some() {
            return Err(BillingError::AgreementCancelled(agreement_id.to_owned()));
        }
        a.roll(now, length);
        let current = a.current();
        let Ok(new_length) = end.duration_since(current.start) else {
            return Err(BillingError::Invalid(format!(
                "the period end must be after the current period's start ({})",
                format_rfc3339(current.start)
            )));
        };
        if new_length.is_zero() {
            return Err(BillingError::Invalid(format!(
                "the period end must be after the current period's start ({})",
                format_rfc3339(current.start)
            )));
        }
        if let Some(run) = a.runs.last_mut() {
            if run.count > 1 {
                run.count -= 1;
                a.runs.push(Run {
                    first_index: current.index,
                    start: current.start,
                    length: new_length,
                    count: 1,
                });
            } else {
                run.length = new_length;
            }
        }
        a.roll(now, length);
        Ok(a.public(agreement_id))
    }

    /// Rolls every active agreement's cycle forward to `now`.
    pub(crate) fn roll_all(&mut self, now: SystemTime) {
        let length = self.cycle_length;
        for a in self.agreements.values_mut() {
            a.roll(now, length);
        }
    }

    /// One agreement, rolled to `now`.
    pub(crate) fn agreement(&mut self, id: &str, now: SystemTime) -> Option<Agreement> {
        let length = self.cycle_length;
        let a = self.agreements.get_mut(id)?;
        a.roll(now, length);
        Some(a.public(id))
    }

    /// Whether `id` is an agreement that was cancelled.
    pub(crate) fn is_cancelled(&self, id: &str) -> bool {
        self.agreements
            .get(id)
            .is_some_and(|a| a.expires_on.is_some())
    }

    /// The cycle of agreement `id` that contains `t`, after rolling it to `now`.
    pub(crate) fn cycle_at(&mut self, id: &str, t: SystemTime, now: SystemTime) -> Option<Cycle> {
        let length = self.cycle_length;
        let a = self.agreements.get_mut(id)?;
        a.roll(now, length);
        a.cycle_at(t)
    }

    /// Every agreement of a customer (cancelled ones included), in creation order.
    pub(crate) fn customer_agreements(
        &mut self,
        customer_id: &str,
        now: SystemTime,
    ) -> Vec<Agreement> {
        let ids = self
            .customers
            .get(customer_id)
            .map(|c| c.agreements.clone())
            .unwrap_or_default();
        ids.iter()
            .filter_map(|id| self.agreement(id, now))
            .collect()
    }

    /// The customer id of an organization.
    pub(crate) fn organization_customer(&self, code: &str) -> Option<&str> {
        self.organizations.get(code).map(|(_, c)| c.as_str())
    }

    /// The customer id of a user.
    pub(crate) fn user_customer(&self, id: &str) -> Option<&str> {
        self.users.get(id).map(String::as_str)
    }

    // ----- the read endpoints -----

    /// `GET /api/v1/billing/agreements`.
    pub(crate) fn list_agreements(
        &mut self,
        query: &Query,
        now: SystemTime,
    ) -> Result<Value, QueryError> {
        let customer_id = query.required("customer_id")?;
        if !self.customers.contains_key(customer_id) {
            return Err((
                400,
                crate::codes::CUSTOMER_NOT_FOUND,
                format!("no billing customer `{customer_id}`"),
            ));
        }
        let page_size = match query.get("page_size")? {
            None => 10,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=500).contains(n))
                .ok_or_else(|| {
                    (
                        400,
                        crate::codes::INVALID_PARAMETER,
                        format!("`page_size` must be a whole number in 1..=500, got `{text}`"),
                    )
                })?,
        };
        let feature = query.get("feature_code")?;
        let mut list: Vec<Agreement> = self
            .customer_agreements(customer_id, now)
            .into_iter()
            .filter(Agreement::is_active)
            .filter(|a| feature.is_none_or(|f| a.entitlements.iter().any(|e| e.feature_code == f)))
            .collect();
        if let Some(after) = query.get("starting_after")? {
            let Some(pos) = list.iter().position(|a| a.id == after) else {
                return Err((
                    400,
                    crate::codes::INVALID_PARAMETER,
                    format!(
                        "`starting_after` must be the id of one of the listed agreements, got `{after}`"
                    ),
                ));
            };
            list.drain(..=pos);
        }
        let has_more = list.len() > page_size;
        list.truncate(page_size);
        Ok(json!({
            "code": "OK",
            "message": "Success",
            "has_more": has_more,
            "agreements": list.iter().map(agreement_json).collect::<Vec<_>>(),
        }))
    }

    /// `GET /api/v1/organization`.
    pub(crate) fn get_organization(
        &mut self,
        query: &Query,
        now: SystemTime,
    ) -> Result<Value, QueryError> {
        let code = query.required("code")?;
        let Some((name, customer_id)) = self.organizations.get(code).cloned() else {
            return Err((
                404,
                crate::codes::ORGANIZATION_NOT_FOUND,
                format!("no organization `{code}`"),
            ));
        };
        let mut body = json!({
            "code": code,
            "name": name,
            "handle": null,
            "is_default": false,
            "external_id": null,
            "is_auto_membership_enabled": false,
        });
        if query.expands("billing")? {
            let agreements: Vec<Value> = self
                .customer_agreements(&customer_id, now)
                .iter()
                .filter(|a| a.is_active())
                .map(|a| json!({"plan_code": a.plan_code, "agreement_id": a.id}))
                .collect();
            body["billing"] = json!({
                "billing_customer_id": customer_id,
                "agreements": agreements,
            });
        }
        Ok(body)
    }

    /// `GET /api/v1/user`.
    pub(crate) fn get_user(&self, query: &Query) -> Result<Value, QueryError> {
        let id = query.required("id")?;
        let Some(customer_id) = self.users.get(id) else {
            return Err((404, crate::codes::USER_NOT_FOUND, format!("no user `{id}`")));
        };
        let mut body = json!({
            "id": id,
            "provided_id": null,
            "preferred_email": null,
            "username": null,
            "first_name": null,
            "last_name": null,
            "is_suspended": false,
        });
        if query.expands("billing")? {
            body["billing"] = json!({ "customer_id": customer_id });
        }
        Ok(body)
    }

    /// Everything, for `GET /_emulator/billing`.
    pub(crate) fn dump(&mut self, now: SystemTime) -> Value {
        let customers: Vec<String> = self.customers.keys().cloned().collect();
        let customers: Vec<Value> = customers
            .iter()
            .map(|id| {
                let who = self.customers.get(id).cloned().unwrap_or_default();
                let agreements: Vec<Value> = self
                    .customer_agreements(id, now)
                    .iter()
                    .map(agreement_json)
                    .collect();
                json!({
                    "customer_id": id,
                    "org_code": who.org_code,
                    "user_id": who.user_id,
                    "agreements": agreements,
                })
            })
            .collect();
        json!({
            "plans": self.plans.iter().map(|(code, features)| json!({"code": code, "features": features})).collect::<Vec<_>>(),
            "customers": customers,
            "cycle_length_secs": self.cycle_length.as_secs_f64(),
            "cancelled_agreements_accept_usage": self.cancelled_accept_usage,
        })
    }
}

/// An agreement as `GET /api/v1/billing/agreements` lists it.
pub(crate) fn agreement_json(a: &Agreement) -> Value {
    json!({
        "id": a.id,
        "plan_code": a.plan_code,
        "expires_on": a.expires_on.map(format_rfc3339),
        "billing_group_id": a.billing_group_id,
        "current_period_start": format_rfc3339(a.current_period.start),
        "current_period_end": format_rfc3339(a.current_period.end),
        "entitlements": a.entitlements.iter().map(|e| json!({
            "feature_code": e.feature_code,
            "entitlement_id": e.entitlement_id,
        })).collect::<Vec<_>>(),
    })
}

/// A cycle as the control API shows it.
pub(crate) fn cycle_json(c: &Cycle) -> Value {
    json!({
        "index": c.index,
        "start": format_rfc3339(c.start),
        "end": format_rfc3339(c.end),
    })
}

/// A non-empty id without whitespace or control characters.
fn check_id(what: &str, id: &str) -> Result<(), BillingError> {
    if id.is_empty() {
        return Err(BillingError::Invalid(format!("{what} must not be empty")));
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(BillingError::Invalid(format!(
            "{what} `{}` must not contain whitespace or control characters",
            id.escape_debug()
        )));
    }
    Ok(())
}

/// The parsed query string of a read request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    /// Parses a query string; `Err` for a malformed one.
    pub(crate) fn parse(query: Option<&str>) -> Result<Query, QueryError> {
        match query {
            None => Ok(Query::default()),
            Some(q) => serde_urlencoded::from_str::<Vec<(String, String)>>(q)
                .map(Query)
                .map_err(|_| {
                    (
                        400,
                        crate::codes::INVALID_PARAMETER,
                        "the query string is not valid form encoding".to_owned(),
                    )
                }),
        }
    }

    /// A parameter given at most once.
    pub(crate) fn get(&self, name: &str) -> Result<Option<&str>, QueryError> {
        let mut values = self.0.iter().filter(|(k, _)| k == name);
        let first = values.next().map(|(_, v)| v.as_str());
        if values.next().is_some() {
            return Err((
                400,
                crate::codes::INVALID_PARAMETER,
                format!("the query parameter `{name}` is repeated"),
            ));
        }
        Ok(first)
    }

    /// A parameter that must be present and non-empty.
    pub(crate) fn required(&self, name: &str) -> Result<&str, QueryError> {
        match self.get(name)? {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err((
                400,
                crate::codes::MISSING_PARAMETER,
                format!("the query parameter `{name}` is required"),
            )),
        }
    }

    /// Whether `expand` (a comma-separated list) names `what`.
    pub(crate) fn expands(&self, what: &str) -> Result<bool, QueryError> {
        Ok(self
            .get("expand")?
            .is_some_and(|e| e.split(',').any(|p| p.trim() == what)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn cycles_roll_lazily_and_period_ends_move() {
        let t0 = SystemTime::UNIX_EPOCH + secs(1_000_000);
        let mut b = Billing::new(1);
        b.cycle_length = secs(100);
        b.add_plan("p", vec!["f".into()]).unwrap();
        let made = b.add_customer("p", t0, &mut Vec::new()).unwrap();
        let id = made.agreement_id.as_str();
        let c = b.agreement(id, t0 + secs(99)).unwrap().current_period;
        assert_eq!((c.index, c.start, c.end), (0, t0, t0 + secs(100)));
        // Far past several ends: one roll, the right index and bounds.
        let c = b.agreement(id, t0 + secs(350)).unwrap().current_period;
        assert_eq!(
            (c.index, c.start, c.end),
            (3, t0 + secs(300), t0 + secs(400))
        );
        assert_eq!(
            b.cycle_at(id, t0 + secs(150), t0 + secs(350))
                .unwrap()
                .index,
            1
        );
        assert_eq!(b.cycle_at(id, t0 - secs(1), t0 + secs(350)), None);
        // A shorter current period, then the next cycles at the usual length.
        let a = b
            .set_period_end(id, t0 + secs(310), t0 + secs(305))
            .unwrap();
        assert_eq!(a.current_period.end, t0 + secs(310));
        let c = b.agreement(id, t0 + secs(311)).unwrap().current_period;
        assert_eq!(
            (c.index, c.start, c.end),
            (4, t0 + secs(310), t0 + secs(410))
        );
        // Earlier cycles keep their bounds.
        let c = b.cycle_at(id, t0 + secs(250), t0 + secs(311)).unwrap();
        assert_eq!(
            (c.index, c.start, c.end),
            (2, t0 + secs(200), t0 + secs(300))
        );
        let c = b.cycle_at(id, t0 + secs(305), t0 + secs(311)).unwrap();
        assert_eq!((c.index, c.end), (3, t0 + secs(310)));
        assert!(matches!(
            b.set_period_end(id, t0 + secs(310), t0 + secs(311)),
            Err(BillingError::Invalid(_))
        ));
    }

    #[test]
    fn plan_changes_cancel_and_raise_events() {
        let t0 = SystemTime::UNIX_EPOCH + secs(1_000_000);
        let mut b = Billing::new(1);
        b.add_plan("basic", vec!["calls".into()]).unwrap();
        b.add_plan("pro", vec!["calls".into(), "rows".into()])
            .unwrap();
        let mut events = Vec::new();
        let made = b
            .add_organization("org_1", "One", "basic", t0, &mut events)
            .unwrap();
        let types: Vec<_> = events.iter().map(|e| e.event_type).collect();
        assert_eq!(
            types,
            ["customer.agreement_created", "customer.plan_assigned"]
        );
        assert_eq!(events[0].data["org_code"], "org_1");
        events.clear();
        let new = b
            .change_plan(&made.customer_id, "pro", t0 + secs(5), &mut events)
            .unwrap();
        assert_ne!(new, made.agreement_id);
        let types: Vec<_> = events.iter().map(|e| e.event_type).collect();
        assert_eq!(
            types,
            [
                "customer.agreement_created",
                "customer.agreement_cancelled",
                "customer.plan_changed"
            ]
        );
        assert_eq!(events[1].data["agreement_id"], made.agreement_id.as_str());
        assert_eq!(
            events[2].data["previous_agreement_id"],
            made.agreement_id.as_str()
        );
        assert_eq!(events[2].data["plan_code"], "pro");
        assert!(b.is_cancelled(&made.agreement_id));
        let old = b.agreement(&made.agreement_id, t0 + secs(6)).unwrap();
        assert_eq!(old.expires_on, Some(t0 + secs(5)));
        assert!(matches!(
            b.cancel_agreement(&made.agreement_id, t0, &mut events),
            Err(BillingError::AgreementCancelled(_))
        ));
        assert!(matches!(
            b.add_organization("org_1", "x", "basic", t0, &mut events),
            Err(BillingError::AlreadyExists(_))
        ));
        assert!(matches!(
            b.add_user("kp_1", "gold", t0, &mut events),
            Err(BillingError::PlanNotFound(_))
        ));
        assert!(matches!(
            b.add_plan("", vec![]),
            Err(BillingError::Invalid(_))
        ));
        assert!(matches!(
            b.add_plan("x", vec!["a".into(), "a".into()]),
            Err(BillingError::Invalid(_))
        ));
    }
}
