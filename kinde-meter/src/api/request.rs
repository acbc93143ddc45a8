//! The one request path every endpoint takes: an access token (minted and cached by
//! `token.rs`), one fresh token after a 401/403, a deadline covering both, a body that
//! tells whether it was sent (`sent.rs`), an answer read through the size cap
//! (`body.rs`), and the classification of the outcome into [`ApiError`]. An endpoint
//! module says only its method, path, body and answer type.

use std::time::Duration;

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION};
use http::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::body::read_capped_to;
use super::client::{ApiResponse, Client, RequestOptions, deadline_after};
use super::error::{ApiError, BoxError, TokenError};
use super::model::ErrorBody;
use super::sent::{Sent, watch};

/// The scope `POST /api/v1/billing/meter_usage` needs.
pub(super) const METER_USAGE_SCOPE: &str = "create:meter_usage";

/// One call of an endpoint, before the shared path takes it.
pub(super) struct Call<'a, B> {
    pub(super) method: Method,
    /// The path on the Kinde domain, `/api/v1/...`.
    pub(super) path: &'a str,
    /// Query parameters, encoded onto the path.
    pub(super) query: &'a [(&'a str, &'a str)],
    /// The scope the endpoint needs, named when the token is refused.
    pub(super) scope: &'static str,
    /// The longest answer read (`body::MAX_BODY` for most).
    pub(super) body_limit: usize,
    /// Sent as JSON, when there is one.
    pub(super) body: Option<&'a B>,
    pub(super) options: &'a RequestOptions,
}

/// The idempotency key as a header value, or why it cannot be one.
fn idempotency_header(key: Option<&str>) -> Result<Option<HeaderValue>, ApiError> {
    match key {
        None => Ok(None),
        Some(key) if !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(HeaderValue::from_str(key).ok())
        }
        Some(_) => Err(ApiError::InvalidRequest {
            reason: "the idempotency key must be non-empty visible ASCII (no spaces)".to_owned(),
        }),
    }
}

impl Client {
    /// Sends `call` and decodes a success as `T`.
    ///
    /// A token that Kinde refuses with 401 or 403 is replaced once by a freshly minted
    /// one (client credentials only) before the error is returned. The timeout (the
    /// call's, else the client's) covers getting a token too.
    pub(super) async fn execute<B: Serialize, T: DeserializeOwned>(
        &self,
        call: Call<'_, B>,
    ) -> Result<ApiResponse<T>, ApiError> {
        let inner = &*self.inner;
        let timeout = call.options.timeout.unwrap_or(inner.request_timeout);
        let deadline = deadline_after(timeout);
        let body = match call.body {
            Some(body) => Some(
                serde_json::to_vec(body).map_err(|e| ApiError::InvalidRequest {
                    reason: e.to_string(),
                })?,
            ),
            None => None,
        };
        let idempotency_key = idempotency_header(call.options.idempotency_key.as_deref())?;
        let mut url = inner.domain.url(call.path);
        if !call.query.is_empty() {
            let query =
                serde_urlencoded::to_string(call.query).map_err(|e| ApiError::InvalidRequest {
                    reason: e.to_string(),
                })?;
            url.push('?');
            url.push_str(&query);
        }
        let mut reminted = false;
        loop {
            let token = inner
                .tokens
                .get(&inner.http, deadline)
                .await
                .map_err(ApiError::Token)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ApiError::Token(TokenError::Timeout { after: timeout }));
            }
            let mut builder = inner
                .http
                .request(call.method.clone(), &url)
                .header(AUTHORIZATION, token.authorization.clone())
                .header(ACCEPT, "application/json")
                .timeout(left);
            let sent = match &body {
                Some(body) => {
                    let (watched, sent) = watch(body.clone());
                    builder = builder
                        .header(CONTENT_TYPE, "application/json")
                        .body(watched);
                    sent
                }
                // Without a body nothing tells whether the request left: assume it may have.
                None => Sent::assumed(),
            };
            if let Some(key) = &idempotency_key {
                builder = builder.header("Idempotency-Key", key.clone());
            }
            let response = builder
                .send()
                .await
                .map_err(|e| transport_error(e, timeout, &sent))?;
            let status = response.status();
            if (status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN)
                && !reminted
                && inner.tokens.can_remint()
            {
                // The token was believed valid; it may have been revoked or expired early.
                inner.tokens.invalidate(&token);
                reminted = true;
                tracing::debug!(target: "kinde_meter", %status, "Kinde refused the access token; minting a new one");
                continue;
            }
            let headers = response.headers().clone();
            let body = read_capped_to(response, call.body_limit)
                .await
                .map_err(|e| transport_error(e, timeout, &sent))?;
            if body.cut && status.is_success() {
                return Err(ApiError::Undecodable {
                    status,
                    reason: format!(
                        "the body is longer than {} bytes (cut there)",
                        call.body_limit
                    ),
                    body: excerpt(&body.bytes),
                });
            }
            return decode(status, headers, &body.bytes).map_err(|e| match e {
                ApiError::Unauthorized { status, errors, .. } => ApiError::Unauthorized {
                    status,
                    errors,
                    scope: call.scope,
                },
                other => other,
            });
        }
    }
}

/// Classifies a failed request by whether any of it may have reached Kinde.
///
/// Only a request whose body hyper asked for can have been applied (see `sent.rs`): a
/// failure before that, whatever reqwest calls it (a refused connection, a TLS failure, a
/// timeout during either), is `NotSent`. reqwest's own "connect" flag is not enough: a
/// request timeout that fires while connecting is reported as a plain timeout.
fn transport_error(e: reqwest::Error, timeout: Duration, sent: &Sent) -> ApiError {
    // Withholds the body if it was not sent: do this first, whatever the error.
    let may_have_been_sent = sent.may_have_been_sent();
    if e.is_builder() {
        // Nothing was sent, and the same request would fail the same way again.
        return ApiError::InvalidRequest {
            reason: super::error::chain(&e),
        };
    }
    let timed_out = e.is_timeout();
    let source: BoxError = Box::new(e);
    if !may_have_been_sent {
        ApiError::NotSent { source }
    } else if timed_out {
        ApiError::Timeout { after: timeout }
    } else {
        ApiError::Transport { source }
    }
}

/// A short printable excerpt of a body, for error messages.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    }
}

/// Seconds from `RateLimit-Reset`, else `Retry-After` (delta-seconds form).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    ["ratelimit-reset", "retry-after"].iter().find_map(|name| {
        let v = headers.get(*name)?.to_str().ok()?.trim();
        let secs: f64 = v.parse().ok()?;
        (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
    })
}

/// Classifies an answer: a success whose body is a JSON object that decodes as `T`, or
/// the [`ApiError`] its status and body make it.
pub(super) fn decode<T: DeserializeOwned>(
    status: StatusCode,
    headers: HeaderMap,
    body: &[u8],
) -> Result<ApiResponse<T>, ApiError> {
    if status.is_success() {
        let data = match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v @ serde_json::Value::Object(_)) => {
                serde_json::from_value::<T>(v).map_err(|e| e.to_string())
            }
            Ok(_) => Err("the body is JSON but not an object".to_owned()),
            Err(_) if body.is_empty() => Err("the body is empty".to_owned()),
            Err(e) => Err(format!("the body is not JSON ({e})")),
        };
        return match data {
            Ok(data) => Ok(ApiResponse {
                data,
                status,
                headers,
            }),
            Err(reason) => Err(ApiError::Undecodable {
                status,
                reason,
                body: excerpt(body),
            }),
        };
    }
    let errors = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.errors)
        .unwrap_or_default();
    Err(match status {
        StatusCode::TOO_MANY_REQUESTS => ApiError::Throttled {
            retry_after: retry_after(&headers),
            errors,
        },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            // The endpoint's scope is filled in by `execute`; this is meter usage's.
            ApiError::Unauthorized {
                status,
                errors,
                scope: METER_USAGE_SCOPE,
            }
        }
        StatusCode::REQUEST_TIMEOUT => ApiError::Server { status, errors },
        s if s.is_redirection() => ApiError::Redirected {
            status,
            location: headers
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(str::to_owned),
        },
        s if s.is_client_error() => ApiError::Rejected { status, errors },
        s if s.is_server_error() => ApiError::Server { status, errors },
        _ => ApiError::Undecodable {
            status,
            reason: "unexpected status".to_owned(),
            body: excerpt(body),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CreateMeterUsageRecordResponse, Disposition};

    /// `decode` for the meter usage answer, the type these cases were written for.
    fn decode(
        status: StatusCode,
        headers: HeaderMap,
        body: &[u8],
    ) -> Result<ApiResponse<CreateMeterUsageRecordResponse>, ApiError> {
        super::decode(status, headers, body)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn statuses_are_classified() {
        let cases: &[(u16, &[u8], Disposition)] = &[
            (
                400,
                br#"{"errors":[{"code":"INVALID","message":"bad"}]}"#,
                Disposition::Rejected,
            ),
            (401, b"", Disposition::Rejected),
            (403, b"<html>", Disposition::Rejected),
            (404, b"", Disposition::Rejected),
            (302, b"", Disposition::Rejected),
            (408, b"", Disposition::NotApplied),
            (429, b"", Disposition::NotApplied),
            (500, b"", Disposition::Ambiguous),
            (502, b"<html>bad gateway</html>", Disposition::Ambiguous),
            (503, b"", Disposition::NotApplied),
            (504, b"", Disposition::Ambiguous),
            (200, b"", Disposition::Ambiguous),
            (200, b"<html>OK</html>", Disposition::Ambiguous),
            (200, b"[1]", Disposition::Ambiguous),
            (200, br#"{"message":"Success""#, Disposition::Ambiguous),
        ];
        for (status, body, want) in cases {
            let status = StatusCode::from_u16(*status).expect("status");
            let got = decode(status, HeaderMap::new(), body).expect_err("an error");
            assert_eq!(got.disposition(), *want, "{status}: {got}");
            assert_eq!(got.status(), Some(status));
        }
        let ok = decode(
            StatusCode::OK,
            HeaderMap::new(),
            br#"{"message":"Success","code":"OK","extra":1}"#,
        )
        .expect("success");
        assert_eq!(ok.data.code.as_deref(), Some("OK"));
        assert_eq!(ok.data.message.as_deref(), Some("Success"));
        assert!(
            decode(StatusCode::OK, HeaderMap::new(), b"{}").is_ok(),
            "both fields are optional"
        );
    }

    #[test]
    fn kinde_errors_are_kept() {
        let e = decode(
            StatusCode::BAD_REQUEST,
            HeaderMap::new(),
            br#"{"errors":[{"code":"FEATURE_NOT_FOUND","message":"no such feature"}]}"#,
        )
        .expect_err("rejected");
        assert_eq!(
            e.kinde_errors()[0].code.as_deref(),
            Some("FEATURE_NOT_FOUND")
        );
        let shown = e.to_string();
        assert!(
            shown.contains("FEATURE_NOT_FOUND: no such feature"),
            "{shown}"
        );
        assert!(shown.contains("resending it will fail"), "{shown}");
    }

    #[test]
    fn throttle_waits_come_from_the_headers() {
        let wait = |h: &[(&'static str, &str)]| match decode(
            StatusCode::TOO_MANY_REQUESTS,
            headers(h),
            b"",
        ) {
            Err(ApiError::Throttled { retry_after, .. }) => retry_after,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            wait(&[("ratelimit-reset", "7")]),
            Some(Duration::from_secs(7))
        );
        assert_eq!(wait(&[("retry-after", "3")]), Some(Duration::from_secs(3)));
        assert_eq!(
            wait(&[("ratelimit-reset", "2"), ("retry-after", "9")]),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            wait(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            None
        );
        assert_eq!(wait(&[("ratelimit-reset", "-1")]), None);
        assert_eq!(wait(&[]), None);
    }

    #[tokio::test]
    async fn a_request_that_cannot_be_built_is_rejected_not_ambiguous() {
        let http = reqwest::Client::new();
        let e = http
            .post("http://127.0.0.1:1/")
            .header("x-broken", "a\nb")
            .send()
            .await
            .expect_err("a builder error");
        assert!(e.is_builder(), "{e:?}");
        let (_, sent) = watch(b"{}".to_vec());
        let e = transport_error(e, Duration::from_secs(1), &sent);
        assert!(matches!(e, ApiError::InvalidRequest { .. }), "{e:?}");
        assert_eq!(e.disposition(), Disposition::Rejected);
        assert!(!sent.may_have_been_sent());
    }

    #[test]
    fn long_bodies_are_cut_in_messages() {
        let body = "x".repeat(10_000);
        let e = decode(StatusCode::OK, HeaderMap::new(), body.as_bytes()).expect_err("undecodable");
        assert!(e.to_string().len() < 600);
    }
}
