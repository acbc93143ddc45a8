//! The billing read-backs: a customer's agreements, and the billing customer behind an
//! organization or a user. What the agreement resolver (`crate::resolve`) asks Kinde.

use http::Method;

use crate::api::billing::{
    Agreement, AgreementsPage, CustomerId, OrgCode, Organization, User, UserId,
};
use crate::api::client::{Client, RequestOptions};
use crate::api::error::ApiError;
use crate::api::model::FeatureCode;
use crate::api::request::Call;

const AGREEMENTS: &str = "/api/v1/billing/agreements";
const ORGANIZATION: &str = "/api/v1/organization";
const USER: &str = "/api/v1/user";

/// Pages of agreements read before giving up: a customer with more than this many
/// agreements (at 100 a page) is not one a meter should guess among.
const MAX_PAGES: usize = 20;
/// Agreements asked for per page.
const PAGE_SIZE: &str = "100";

impl Client {
    /// One page of a customer's agreements (`GET /api/v1/billing/agreements`, scope
    /// `read:billing_agreements`), optionally only those with `feature`, starting after
    /// the agreement id `starting_after`.
    pub async fn billing_agreements_page(
        &self,
        customer: &CustomerId,
        feature: Option<&FeatureCode>,
        starting_after: Option<&str>,
    ) -> Result<AgreementsPage, ApiError> {
        let mut query = vec![("customer_id", customer.as_str()), ("page_size", PAGE_SIZE)];
        if let Some(feature) = feature {
            query.push(("feature_code", feature.as_str()));
        }
        if let Some(after) = starting_after {
            query.push(("starting_after", after));
        }
        self.read(AGREEMENTS, &query, "read:billing_agreements")
            .await
    }

    /// Every agreement of a customer, following `has_more` (at most 2,000).
    pub async fn billing_agreements(
        &self,
        customer: &CustomerId,
        feature: Option<&FeatureCode>,
    ) -> Result<Vec<Agreement>, ApiError> {
        let mut all: Vec<Agreement> = Vec::new();
        for _ in 0..MAX_PAGES {
            let after = all.last().map(|a| a.id.as_str().to_owned());
            let page = self
                .billing_agreements_page(customer, feature, after.as_deref())
                .await?;
            let more = page.has_more == Some(true) && !page.agreements.is_empty();
            // A page repeated (a server that ignores `starting_after`) must not make one
            // agreement look like several.
            for agreement in page.agreements {
                if !all.iter().any(|a| a.id == agreement.id) {
                    all.push(agreement);
                }
            }
            if !more {
                return Ok(all);
            }
        }
        Err(ApiError::InvalidRequest {
            reason: format!(
                "customer {customer} has more than {} agreements; name the agreement instead",
                MAX_PAGES * 100
            ),
        })
    }

    /// An organization with its billing (`GET /api/v1/organization?code=…&expand=billing`,
    /// scope `read:organizations`).
    pub async fn organization_billing(&self, code: &OrgCode) -> Result<Organization, ApiError> {
        let query = [("code", code.as_str()), ("expand", "billing")];
        self.read(ORGANIZATION, &query, "read:organizations").await
    }

    /// A user with their billing (`GET /api/v1/user?id=…&expand=billing`, scope
    /// `read:users`).
    pub async fn user_billing(&self, id: &UserId) -> Result<User, ApiError> {
        let query = [("id", id.as_str()), ("expand", "billing")];
        self.read(USER, &query, "read:users").await
    }

    /// A `GET` of `path` with `query`, decoded as `T`.
    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        path: &'static str,
        query: &[(&str, &str)],
        scope: &'static str,
    ) -> Result<T, ApiError> {
        let answer = self
            .execute::<(), T>(Call {
                method: Method::GET,
                path,
                query,
                scope,
                body_limit: crate::api::body::MAX_READ_BODY,
                body: None,
                options: &RequestOptions::default(),
            })
            .await?;
        Ok(answer.data)
    }
}
