//! From a customer to the agreement its usage is billed to.
//!
//! A service knows its customer from a verified token (`org_code`, `sub`), not the
//! agreement Kinde bills. An [`AgreementResolver`] answers a customer's agreements;
//! the reporter keeps its answers in a cache (`cache.rs`: time to live, a bound,
//! single flight, short-lived negative answers, stale answers served while refreshed)
//! and picks, per record, the one agreement that has the record's feature
//! ([`CustomerAgreements::pick`]). It never guesses: no agreement, or several, is a
//! refusal with its reason.
//!
//! All of it runs on the reporter's thread when a window's records are sent, never on a
//! metered call.

mod cache;
mod kinde;
mod static_map;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

pub(crate) use cache::{CacheSettings, Cached, Lookup};
pub use kinde::KindeResolver;
pub use static_map::StaticResolver;

use crate::api::{
    Agreement, AgreementId, ApiError, Customer, CustomerId, Disposition, FeatureCode, Timestamp,
};

/// The future an [`AgreementResolver`] returns.
pub type ResolveFuture<'a> =
    Pin<Box<dyn Future<Output = Result<CustomerAgreements, ResolveError>> + Send + 'a>>;

/// Answers a customer's agreements.
///
/// The reporter caches the answers (see [`Config::resolver_ttl`](crate::Config)), so an
/// implementation does no caching of its own. It is called from the reporter's runtime
/// and must not block its thread.
///
/// ```
/// use kinde_meter::resolve::{AgreementResolver, CustomerAgreements, ResolveError, ResolveFuture};
/// use kinde_meter::Customer;
///
/// /// Agreements kept in the service's own database.
/// struct FromDatabase;
///
/// impl AgreementResolver for FromDatabase {
///     fn agreements<'a>(&'a self, customer: &'a Customer) -> ResolveFuture<'a> {
///         Box::pin(async move {
///             Err(ResolveError::UnknownCustomer {
///                 customer: customer.clone(),
///                 reason: "not in the database".into(),
///             })
///         })
///     }
/// }
/// # let _: CustomerAgreements;
/// ```
pub trait AgreementResolver: Send + Sync + 'static {
    /// The agreements `customer` has now.
    fn agreements<'a>(&'a self, customer: &'a Customer) -> ResolveFuture<'a>;
}

/// A customer's agreements, as a resolver found them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CustomerAgreements {
    /// The billing customer, when the resolver learnt it: webhooks name customers by it.
    pub customer_id: Option<CustomerId>,
    /// The agreements.
    pub agreements: Vec<Agreement>,
}

impl CustomerAgreements {
    /// The one agreement that has `feature` and had not expired at `at`.
    pub fn pick(&self, feature: &FeatureCode, at: Timestamp) -> Result<&AgreementId, NoAgreement> {
        let mut found = self.agreements.iter().filter(|a| {
            a.has_feature(feature)
                && a.expires_on
                    .is_none_or(|end| end.unix_seconds() > at.unix_seconds())
        });
        match (found.next(), found.next()) {
            (Some(one), None) => Ok(&one.id),
            (None, _) => Err(NoAgreement::None),
            (Some(first), Some(second)) => Err(NoAgreement::Several(
                [first.id.clone(), second.id.clone()]
                    .into_iter()
                    .chain(found.map(|a| a.id.clone()))
                    .collect(),
            )),
        }
    }

    /// The earliest end of a current billing cycle after `after`.
    pub(crate) fn next_period_end(&self, after: Timestamp) -> Option<Timestamp> {
        self.agreements
            .iter()
            .filter_map(|a| a.current_period_end)
            .filter(|end| end.unix_seconds() > after.unix_seconds())
            .min_by_key(|end| end.unix_seconds())
    }
}

/// Why no agreement could be picked for a feature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoAgreement {
    /// None of the customer's agreements has the feature.
    None,
    /// Several have it: the usage is not sent to a guessed one.
    Several(Vec<AgreementId>),
}

/// Why a customer's agreements could not be found.
#[derive(Debug)]
#[non_exhaustive]
pub enum ResolveError {
    /// The customer is not one Kinde bills (no such organization or user, or it has no
    /// billing customer). Asked again after the negative time to live.
    UnknownCustomer {
        /// The customer.
        customer: Customer,
        /// Why, and what to do.
        reason: String,
    },
    /// Asking Kinde failed. A refusal (a missing scope, a 404) is cached briefly like
    /// an unknown customer; any other failure is retried like a delivery.
    Lookup(ApiError),
}

impl ResolveError {
    /// Whether asking again later may succeed without anything changing at Kinde
    /// (a transport failure, a 5xx, a 429): such a record waits and is retried.
    pub fn is_transient(&self) -> bool {
        match self {
            ResolveError::UnknownCustomer { .. } => false,
            // An answer that cannot be read will not read better next time.
            ResolveError::Lookup(ApiError::Undecodable { .. }) => false,
            ResolveError::Lookup(e) => e.disposition() != Disposition::Rejected,
        }
    }
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::UnknownCustomer { customer, reason } => {
                write!(f, "{customer} has no billing in Kinde: {reason}")
            }
            ResolveError::Lookup(e) => {
                write!(f, "looking up the customer's agreements failed: {e}")
            }
        }
    }
}

impl std::error::Error for ResolveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ResolveError::Lookup(e) => Some(e),
            ResolveError::UnknownCustomer { .. } => None,
        }
    }
}

/// Why usage recorded for a customer was not sent to any agreement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    /// The customer.
    pub customer: Customer,
    /// The feature.
    pub feature: FeatureCode,
    /// Why, and what to do about it.
    pub reason: String,
}

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "usage of feature {} for {} was not sent: {}",
            self.feature, self.customer, self.reason
        )
    }
}

impl Unresolved {
    pub(crate) fn no_agreement(
        customer: &Customer,
        feature: &FeatureCode,
        why: &NoAgreement,
    ) -> Self {
        let reason = match why {
            NoAgreement::None => format!(
                "none of its agreements has the feature `{feature}`; add the feature to its plan in Kinde, \
                 or record this usage against an agreement"
            ),
            NoAgreement::Several(ids) => format!(
                "several of its agreements have the feature `{feature}` ({}); record against one of them \
                 with `with_agreement`",
                ids.iter()
                    .map(AgreementId::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Self {
            customer: customer.clone(),
            feature: feature.clone(),
            reason,
        }
    }

    pub(crate) fn failed(customer: &Customer, feature: &FeatureCode, error: &ResolveError) -> Self {
        Self {
            customer: customer.clone(),
            feature: feature.clone(),
            reason: error.to_string(),
        }
    }
}
