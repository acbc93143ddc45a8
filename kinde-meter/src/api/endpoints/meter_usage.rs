//! `POST /api/v1/billing/meter_usage`: records usage against a customer agreement.

use http::Method;

use crate::api::client::{ApiResponse, Client, RequestOptions};
use crate::api::error::ApiError;
use crate::api::model::{CreateMeterUsageRecordRequest, CreateMeterUsageRecordResponse};
use crate::api::request::{Call, METER_USAGE_SCOPE};

const PATH: &str = "/api/v1/billing/meter_usage";

impl Client {
    /// Records usage (`POST /api/v1/billing/meter_usage`).
    pub async fn create_meter_usage_record(
        &self,
        request: &CreateMeterUsageRecordRequest,
    ) -> Result<CreateMeterUsageRecordResponse, ApiError> {
        Ok(self
            .create_meter_usage_record_with_http_info(request)
            .await?
            .data)
    }

    /// Records usage and returns the response with its status and headers.
    pub async fn create_meter_usage_record_with_http_info(
        &self,
        request: &CreateMeterUsageRecordRequest,
    ) -> Result<ApiResponse<CreateMeterUsageRecordResponse>, ApiError> {
        self.create_meter_usage_record_with_options(request, &RequestOptions::default())
            .await
    }

    /// Records usage with per-call options (idempotency key, timeout).
    ///
    /// A token that Kinde refuses with 401 or 403 is replaced once by a freshly minted
    /// one (client credentials only) before the error is returned.
    pub async fn create_meter_usage_record_with_options(
        &self,
        request: &CreateMeterUsageRecordRequest,
        options: &RequestOptions,
    ) -> Result<ApiResponse<CreateMeterUsageRecordResponse>, ApiError> {
        self.execute(Call {
            method: Method::POST,
            path: PATH,
            query: &[],
            scope: METER_USAGE_SCOPE,
            body_limit: crate::api::body::MAX_BODY,
            body: Some(request),
            options,
        })
        .await
    }
}
