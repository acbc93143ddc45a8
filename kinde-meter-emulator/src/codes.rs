//! The error codes the emulator puts in `{"errors":[{"code": ..., "message": ...}]}` bodies.
//!
//! These are the emulator's own: Kinde documents the shape of its error bodies
//! but not its codes, so a client must never branch on them. Tests may.

/// 400: the body is not UTF-8, not JSON, not a JSON object, or repeats a key.
pub const INVALID_JSON: &str = "INVALID_JSON";
/// 400: a required field is absent.
pub const MISSING_FIELD: &str = "MISSING_FIELD";
/// 400: a field has the wrong JSON type or a malformed value.
pub const INVALID_FIELD: &str = "INVALID_FIELD";
/// 400: the body has a field the contract does not define.
pub const UNKNOWN_FIELD: &str = "UNKNOWN_FIELD";
/// 400: `customer_agreement_id` is not one of the configured known agreements.
pub const AGREEMENT_NOT_FOUND: &str = "AGREEMENT_NOT_FOUND";
/// 400: `billing_feature_code` is not one of the configured known features.
pub const FEATURE_NOT_FOUND: &str = "FEATURE_NOT_FOUND";
/// 413: the body is larger than the emulator accepts (64 KiB).
pub const PAYLOAD_TOO_LARGE: &str = "PAYLOAD_TOO_LARGE";
/// 415: the `Content-Type` is not `application/json`.
pub const UNSUPPORTED_MEDIA_TYPE: &str = "UNSUPPORTED_MEDIA_TYPE";
/// 403 (or 401, see `EmulatorBuilder::unauthorized_status`): missing, unknown or expired bearer token.
pub const UNAUTHORIZED: &str = "UNAUTHORIZED";
/// 429: rate limited, concurrency limited, or inside `Emulator::throttle_for`.
pub const TOO_MANY_REQUESTS: &str = "TOO_MANY_REQUESTS";
/// 500: an injected internal error.
pub const INTERNAL_ERROR: &str = "INTERNAL_ERROR";
/// 503: an injected unavailability.
pub const SERVICE_UNAVAILABLE: &str = "SERVICE_UNAVAILABLE";
/// 404: no such route (any path or method other than the emulator's endpoints).
pub const ROUTE_NOT_FOUND: &str = "ROUTE_NOT_FOUND";
/// 400: usage for an agreement that was cancelled (a plan change or
/// `Emulator::cancel_agreement`), unless cancelled agreements accept usage.
pub const AGREEMENT_CANCELLED: &str = "AGREEMENT_CANCELLED";
/// 403: the token is valid but the application was not granted the endpoint's scope.
pub const FORBIDDEN: &str = "FORBIDDEN";
/// 400: `GET /api/v1/billing/agreements` for a `customer_id` the emulator does not know.
pub const CUSTOMER_NOT_FOUND: &str = "CUSTOMER_NOT_FOUND";
/// 404: `GET /api/v1/organization` for a `code` the emulator does not know.
pub const ORGANIZATION_NOT_FOUND: &str = "ORGANIZATION_NOT_FOUND";
/// 404: `GET /api/v1/user` for an `id` the emulator does not know.
pub const USER_NOT_FOUND: &str = "USER_NOT_FOUND";
/// 400: a read endpoint's required query parameter is absent or empty.
pub const MISSING_PARAMETER: &str = "MISSING_PARAMETER";
/// 400: a query parameter is repeated or malformed (`page_size` outside 1..=500,
/// `starting_after` not one of the listed agreements).
pub const INVALID_PARAMETER: &str = "INVALID_PARAMETER";
