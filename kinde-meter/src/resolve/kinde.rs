//! The resolver that asks Kinde: an organization or a user to its billing customer, then
//! the customer's agreements.

use super::{AgreementResolver, CustomerAgreements, ResolveError, ResolveFuture};
use crate::api::{ApiError, Client, Customer, CustomerId, StatusCode};

/// Asks Kinde's Management API, through the reporter's own [`Client`] (its token and
/// its request path).
///
/// - `Customer::Org`: `GET /api/v1/organization?code=…&expand=billing` for
///   `billing.billing_customer_id` (scope `read:organizations`);
/// - `Customer::User`: `GET /api/v1/user?id=…&expand=billing` for `billing.customer_id`
///   (scope `read:users`);
/// - then, for all three, `GET /api/v1/billing/agreements?customer_id=…` for the
///   agreements, their features and billing cycles (scope `read:billing_agreements`).
///
/// This is what the reporter uses unless [`Config::resolver`](crate::Config::resolver)
/// names another.
#[derive(Clone, Debug)]
pub struct KindeResolver {
    client: Client,
}

impl KindeResolver {
    /// Resolves through `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    async fn customer_id(&self, customer: &Customer) -> Result<CustomerId, ResolveError> {
        let unknown = |reason: String| ResolveError::UnknownCustomer {
            customer: customer.clone(),
            reason,
        };
        match customer {
            Customer::Id(id) => Ok(id.clone()),
            Customer::Org(code) => {
                let org = self
                    .client
                    .organization_billing(code)
                    .await
                    .map_err(|e| not_found_as_unknown(e, customer))?;
                org.billing
                    .and_then(|b| b.billing_customer_id)
                    .ok_or_else(|| {
                        unknown(
                            "the organization is not a billing customer; assign it a plan in Kinde"
                                .to_owned(),
                        )
                    })
            }
            Customer::User(id) => {
                let user = self
                    .client
                    .user_billing(id)
                    .await
                    .map_err(|e| not_found_as_unknown(e, customer))?;
                user.billing.and_then(|b| b.customer_id).ok_or_else(|| {
                    unknown(
                        "the user is not a billing customer; assign them a plan in Kinde"
                            .to_owned(),
                    )
                })
            }
        }
    }
}

/// A 404 (or a 400 naming no such customer) means the customer does not exist: a plain
/// answer, not a failure of the lookup.
fn not_found_as_unknown(e: ApiError, customer: &Customer) -> ResolveError {
    match &e {
        ApiError::Rejected { status, .. } if *status == StatusCode::NOT_FOUND => {
            ResolveError::UnknownCustomer {
                customer: customer.clone(),
                reason: format!("Kinde knows no such {}", kind(customer)),
            }
        }
        _ => ResolveError::Lookup(e),
    }
}

fn kind(customer: &Customer) -> &'static str {
    match customer {
        Customer::Org(_) => "organization",
        Customer::User(_) => "user",
        Customer::Id(_) => "billing customer",
    }
}

impl AgreementResolver for KindeResolver {
    fn agreements<'a>(&'a self, customer: &'a Customer) -> ResolveFuture<'a> {
        Box::pin(async move {
            let id = self.customer_id(customer).await?;
            let agreements = self
                .client
                .billing_agreements(&id, None)
                .await
                .map_err(|e| not_found_as_unknown(e, customer))?;
            Ok(CustomerAgreements {
                customer_id: Some(id),
                agreements,
            })
        })
    }
}
