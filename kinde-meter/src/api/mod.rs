//! Kinde's billing API: the wire model of `POST /api/v1/billing/meter_usage`, a typed
//! client for it, and its errors. Usable on its own, without the reporter, and depends on
//! no other module of this crate.
//!
//! Inside: `client.rs` (settings, pool, token cache), `request.rs` (the one request path:
//! token, re-mint, deadline, capped body, classification), `endpoints/` (one module per
//! endpoint), `model.rs` (validated wire types), `error.rs`, `token.rs`, `sent.rs`,
//! `body.rs`, `domain.rs`.

mod billing;
mod body;
mod client;
mod domain;
mod endpoints;
mod error;
mod model;
mod request;
mod sent;
mod token;

#[cfg(feature = "webhooks")]
pub(crate) use billing::parse_date_time;
pub use billing::{
    Agreement, AgreementEntitlement, AgreementsPage, Customer, CustomerId, OrgCode, Organization,
    OrganizationAgreement, OrganizationBilling, User, UserBilling, UserId,
};
#[cfg(feature = "webhooks")]
pub(crate) use body::{MAX_BODY, read_capped};
pub(crate) use client::deadline_after;
pub use client::{
    ApiResponse, Client, ClientBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT,
    RequestOptions,
};
pub use domain::{Credentials, Domain, InvalidDomain, Secret};
pub use error::{ApiError, BoxError, BuildError, Disposition, TokenError};
/// HTTP types used in responses and errors (from the `http` crate).
pub use http::{HeaderMap, StatusCode};
pub(crate) use model::content_hash;
pub use model::{
    AgreementId, CreateMeterUsageRecordRequest, CreateMeterUsageRecordResponse, FeatureCode,
    InvalidInput, KindeError, MAX_ID_LEN, MeterType, MeterValue, Timestamp,
};
pub(crate) use token::authorization;
