//! The HTTP client for `POST /api/v1/billing/meter_usage`.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION};
use tokio::time::Instant;

use super::body::{MAX_BODY, read_capped};
use super::domain::{Credentials, Domain};
use super::error::{ApiError, BoxError, BuildError};
use super::model::{CreateMeterUsageRecordRequest, CreateMeterUsageRecordResponse, ErrorBody};
use super::sent::{Sent, watch};
use super::token::TokenSource;

const METER_USAGE_PATH: &str = "/api/v1/billing/meter_usage";
const USER_AGENT: &str = concat!("kinde-meter/", env!("CARGO_PKG_VERSION"));

/// Default time allowed to open a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default time allowed for a whole request, token included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A typed client for Kinde's meter usage API, usable on its own.
///
/// Cheap to clone (clones share one connection pool and one token cache), `Send + Sync`.
/// Its methods must be awaited inside a tokio runtime. Redirects are not followed, and
/// plain `http` is only accepted for loopback hosts unless
/// [`ClientBuilder::allow_http`] is set.
///
/// ```no_run
/// use kinde_meter::api::{Client, Credentials, CreateMeterUsageRecordRequest, Domain};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = Client::new(
///     Domain::parse("acme.kinde.com")?,
///     Credentials::client_credentials("client-id", "client-secret"),
/// )?;
/// let request = CreateMeterUsageRecordRequest::new(
///     "agreement_0195ac80a14c2ca2cec97d026d864de0".parse()?,
///     "pro_gym".parse()?,
///     1,
/// );
/// let response = client.create_meter_usage_record(&request).await?;
/// println!("{response:?}");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    domain: Domain,
    meter_url: String,
    tokens: TokenSource,
    request_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("domain", &self.inner.domain)
            .field("request_timeout", &self.inner.request_timeout)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    pub(crate) domain: Domain,
    pub(crate) credentials: Credentials,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) allow_http: bool,
}

impl ClientBuilder {
    /// The domain the client will talk to.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// Time allowed to open a connection (default 3 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time allowed for a whole request, including getting a token (default 10 s).
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Accepts a plain `http://` domain that is not loopback, for a trusted proxy in
    /// front of Kinde. Tokens then cross the network unencrypted: avoid it.
    #[must_use]
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.allow_http = allow;
        self
    }

    /// Checks the settings and builds the client.
    pub fn build(self) -> Result<Client, BuildError> {
        if !self.domain.is_https() && !self.domain.is_loopback() && !self.allow_http {
            return Err(BuildError::InsecureHttp {
                domain: self.domain.to_string(),
            });
        }
        for (option, value) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if value.is_zero() {
                return Err(BuildError::InvalidOption {
                    option,
                    reason: "must be greater than zero".to_owned(),
                });
            }
        }
        let tokens = TokenSource::new(&self.domain, &self.credentials)
            .map_err(|reason| BuildError::InvalidAccessToken { reason })?;
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| BuildError::Http {
                source: Box::new(e),
            })?;
        Ok(Client {
            inner: Arc::new(Inner {
                meter_url: self.domain.url(METER_USAGE_PATH),
                tokens,
                domain: self.domain,
                http,
                request_timeout: self.request_timeout,
            }),
        })
    }
}

/// Per-call options for [`Client::create_meter_usage_record_with_options`].
#[derive(Clone, Debug, Default)]
pub struct RequestOptions {
    idempotency_key: Option<String>,
    timeout: Option<Duration>,
}

impl RequestOptions {
    /// Default options: no idempotency key, the client's request timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sent as the `Idempotency-Key` header. Kinde documents no idempotency, so this may
    /// or may not prevent a duplicate; it costs nothing.
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Overrides the client's request timeout for this call (token included).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// A decoded response with its HTTP status and headers.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ApiResponse<T> {
    /// The decoded body.
    pub data: T,
    /// The HTTP status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
}

impl Client {
    /// A client with default timeouts.
    pub fn new(domain: Domain, credentials: Credentials) -> Result<Self, BuildError> {
        Self::builder(domain, credentials).build()
    }

    /// A builder, to set timeouts.
    pub fn builder(domain: Domain, credentials: Credentials) -> ClientBuilder {
        ClientBuilder {
            domain,
            credentials,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            allow_http: false,
        }
    }

    /// The domain this client talks to.
    pub fn domain(&self) -> &Domain {
        &self.inner.domain
    }

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
        let inner = &*self.inner;
        let timeout = options.timeout.unwrap_or(inner.request_timeout);
        let deadline = deadline_after(timeout);
        let body = serde_json::to_vec(request).map_err(|e| ApiError::InvalidRequest {
            reason: e.to_string(),
        })?;
        let idempotency_key = match options.idempotency_key.as_deref() {
            None => None,
            Some(key) if !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic()) => {
                HeaderValue::from_str(key).ok()
            }
            Some(_) => {
                return Err(ApiError::InvalidRequest {
                    reason: "the idempotency key must be non-empty visible ASCII (no spaces)"
                        .to_owned(),
                });
            }
        };
        let mut reminted = false;
        loop {
            let token = inner
                .tokens
                .get(&inner.http, deadline)
                .await
                .map_err(ApiError::Token)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ApiError::Token(super::TokenError::Timeout {
                    after: timeout,
                }));
            }
            let (watched, sent) = watch(body.clone());
            let mut builder = inner
                .http
                .post(&inner.meter_url)
                .header(AUTHORIZATION, token.authorization.clone())
                .header(CONTENT_TYPE, "application/json")
                .header(ACCEPT, "application/json")
                .timeout(left)
                .body(watched);
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
            let body = read_capped(response)
                .await
                .map_err(|e| transport_error(e, timeout, &sent))?;
            if body.cut && status.is_success() {
                return Err(ApiError::Undecodable {
                    status,
                    reason: format!("the body is longer than {MAX_BODY} bytes (cut there)"),
                    body: excerpt(&body.bytes),
                });
            }
            return decode(status, headers, &body.bytes);
        }
    }
}

/// `timeout` from now; a timeout too long for the clock (`Duration::MAX` for "none")
/// is a deadline decades away rather than an overflow.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400))
}

/// Classifies a failed meter request by whether any of it may have reached Kinde.
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

fn decode(
    status: StatusCode,
    headers: HeaderMap,
    body: &[u8],
) -> Result<ApiResponse<CreateMeterUsageRecordResponse>, ApiError> {
    if status.is_success() {
        let data = match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v @ serde_json::Value::Object(_)) => {
                serde_json::from_value::<CreateMeterUsageRecordResponse>(v)
                    .map_err(|e| e.to_string())
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
            ApiError::Unauthorized { status, errors }
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
    use crate::api::Disposition;

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
