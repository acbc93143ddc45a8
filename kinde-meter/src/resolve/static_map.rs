//! A resolver from a fixed map: for tests, and for services that keep the mapping
//! themselves.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::{AgreementResolver, CustomerAgreements, ResolveError, ResolveFuture};
use crate::api::{Agreement, AgreementId, Customer, FeatureCode};

/// Answers from a map it holds, which may change while the reporter runs.
///
/// ```
/// use kinde_meter::resolve::StaticResolver;
/// use kinde_meter::Customer;
///
/// let resolver = StaticResolver::new();
/// resolver.set(
///     Customer::org("org_acme")?,
///     "agreement_acme".parse()?,
///     ["api_calls".parse()?],
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct StaticResolver {
    map: Arc<RwLock<HashMap<Customer, CustomerAgreements>>>,
}

impl StaticResolver {
    /// An empty map: every customer is unknown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives `customer` one agreement, with `features`, replacing what it had.
    pub fn set(
        &self,
        customer: Customer,
        agreement: AgreementId,
        features: impl IntoIterator<Item = FeatureCode>,
    ) {
        self.set_agreements(
            customer,
            CustomerAgreements {
                customer_id: None,
                agreements: vec![Agreement::new(agreement, features)],
            },
        );
    }

    /// Gives `customer` these agreements, replacing what it had.
    pub fn set_agreements(&self, customer: Customer, agreements: CustomerAgreements) {
        let mut map = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.insert(customer, agreements);
    }

    /// Forgets `customer`.
    pub fn remove(&self, customer: &Customer) {
        let mut map = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(customer);
    }
}

impl AgreementResolver for StaticResolver {
    fn agreements<'a>(&'a self, customer: &'a Customer) -> ResolveFuture<'a> {
        let found = {
            let map = self
                .map
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.get(customer).cloned()
        };
        Box::pin(async move {
            found.ok_or_else(|| ResolveError::UnknownCustomer {
                customer: customer.clone(),
                reason: "not in the resolver's map".to_owned(),
            })
        })
    }
}
