//! What can go wrong talking to Kinde, and whether a retry is safe.

use std::fmt;
use std::time::Duration;

use http::StatusCode;

use super::model::KindeError;

/// A boxed error from the HTTP layer, kept as the `source` of an [`ApiError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a [`Client`](super::Client) could not be built. Nothing was sent.
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// `http://` for a host that is not loopback.
    InsecureHttp {
        /// The domain.
        domain: String,
    },
    /// A static access token that cannot be sent in an `Authorization` header.
    InvalidAccessToken {
        /// What is wrong with it (the token itself is never shown).
        reason: &'static str,
    },
    /// A builder option is out of range.
    InvalidOption {
        /// The option (builder method).
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built (TLS initialisation).
    Http {
        /// The underlying error.
        source: BoxError,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::InsecureHttp { domain } => write!(
                f,
                "{domain} uses plain http for a host that is not loopback, which would send access tokens \
                 unencrypted; use https:// (or allow it explicitly with `allow_http(true)` for a trusted proxy)"
            ),
            BuildError::InvalidAccessToken { reason } => write!(
                f,
                "the access token cannot be sent: {reason}; check the token given to \
                 `Credentials::access_token` (KINDE_ACCESS_TOKEN when read from the environment)"
            ),
            BuildError::InvalidOption { option, reason } => write!(f, "`{option}` {reason}"),
            BuildError::Http { source } => write!(f, "could not build the HTTP client: {source}"),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BuildError::Http { source } => Some(&**source),
            _ => None,
        }
    }
}

/// Whether a failed request may have changed Kinde's usage, which decides if resending
/// it is safe. Kinde documents no idempotency key, so this is all a client can go by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Disposition {
    /// Kinde did not apply the request (nothing was sent, or it answered 429, 408 or 503):
    /// safe to retry.
    NotApplied,
    /// Kinde may have applied it (a timeout or reset after sending, 500/502/504, an
    /// unreadable success body): a retried `delta` may count twice.
    Ambiguous,
    /// Kinde refused it: retrying the same request will fail the same way.
    Rejected,
}

/// A failed call to Kinde's meter usage API.
///
/// Never contains the access token or the client secret. [`ApiError::disposition`] says
/// whether the request is safe to retry.
#[derive(Debug)]
#[non_exhaustive]
pub enum ApiError {
    /// 429: Kinde's rate or concurrency limiter refused the request.
    Throttled {
        /// How long Kinde asked to wait (`RateLimit-Reset`, else `Retry-After`), if it said.
        retry_after: Option<Duration>,
        /// Kinde's error list.
        errors: Vec<KindeError>,
    },
    /// 400 or another 4xx: the request itself was refused.
    Rejected {
        /// The HTTP status.
        status: StatusCode,
        /// Kinde's error list.
        errors: Vec<KindeError>,
    },
    /// 401 or 403: the token was refused (after one fresh token was tried, when the
    /// credentials allow minting one).
    Unauthorized {
        /// The HTTP status.
        status: StatusCode,
        /// Kinde's error list.
        errors: Vec<KindeError>,
        /// The scope the endpoint needs (`create:meter_usage`, `read:billing_agreements`,
        /// `read:organizations`, `read:users`): a 403 usually means it was not granted.
        scope: &'static str,
    },
    /// 5xx, or 408: Kinde could not handle the request.
    Server {
        /// The HTTP status.
        status: StatusCode,
        /// Kinde's error list, when the body had one.
        errors: Vec<KindeError>,
    },
    /// 3xx: redirects are not followed (a bearer token must not travel to another host).
    Redirected {
        /// The HTTP status.
        status: StatusCode,
        /// Where Kinde pointed to.
        location: Option<String>,
    },
    /// The request failed before any of it was sent (DNS, connect, TLS, or the timeout
    /// running out during one of them).
    NotSent {
        /// The underlying error.
        source: BoxError,
    },
    /// The connection failed after the request was sent (reset, closed without answer).
    Transport {
        /// The underlying error.
        source: BoxError,
    },
    /// No answer within the request timeout, after the request was sent.
    Timeout {
        /// The timeout that elapsed.
        after: Duration,
    },
    /// A success status with a body that is not the documented JSON.
    Undecodable {
        /// The HTTP status.
        status: StatusCode,
        /// What was wrong with the body.
        reason: String,
        /// The start of the body, for diagnosis.
        body: String,
    },
    /// No access token could be obtained; the meter request was not sent.
    Token(TokenError),
    /// The request could not be built (for example an idempotency key that is not a
    /// valid header value); nothing was sent, and resending would fail the same way.
    InvalidRequest {
        /// What was wrong.
        reason: String,
    },
}

impl ApiError {
    /// Whether the request may have been applied, hence whether resending it is safe.
    ///
    /// ```
    /// use kinde_meter::api::{ApiError, Disposition};
    /// use http::StatusCode;
    ///
    /// let e = ApiError::Server { status: StatusCode::SERVICE_UNAVAILABLE, errors: vec![] };
    /// assert_eq!(e.disposition(), Disposition::NotApplied);
    /// let e = ApiError::Server { status: StatusCode::BAD_GATEWAY, errors: vec![] };
    /// assert_eq!(e.disposition(), Disposition::Ambiguous);
    /// ```
    pub fn disposition(&self) -> Disposition {
        match self {
            ApiError::Throttled { .. } | ApiError::NotSent { .. } | ApiError::Token(_) => {
                Disposition::NotApplied
            }
            ApiError::Server { status, .. }
                if *status == StatusCode::SERVICE_UNAVAILABLE
                    || *status == StatusCode::REQUEST_TIMEOUT =>
            {
                Disposition::NotApplied
            }
            ApiError::Server { .. }
            | ApiError::Transport { .. }
            | ApiError::Timeout { .. }
            | ApiError::Undecodable { .. } => Disposition::Ambiguous,
            ApiError::Rejected { .. }
            | ApiError::Unauthorized { .. }
            | ApiError::Redirected { .. }
            | ApiError::InvalidRequest { .. } => Disposition::Rejected,
        }
    }

    /// The HTTP status Kinde answered, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ApiError::Throttled { .. } => Some(StatusCode::TOO_MANY_REQUESTS),
            ApiError::Rejected { status, .. }
            | ApiError::Unauthorized { status, .. }
            | ApiError::Server { status, .. }
            | ApiError::Redirected { status, .. }
            | ApiError::Undecodable { status, .. } => Some(*status),
            ApiError::NotSent { .. }
            | ApiError::Transport { .. }
            | ApiError::Timeout { .. }
            | ApiError::Token(_)
            | ApiError::InvalidRequest { .. } => None,
        }
    }

    /// Kinde's error list, when it sent one.
    pub fn kinde_errors(&self) -> &[KindeError] {
        match self {
            ApiError::Throttled { errors, .. }
            | ApiError::Rejected { errors, .. }
            | ApiError::Unauthorized { errors, .. }
            | ApiError::Server { errors, .. } => errors,
            _ => &[],
        }
    }
}

/// An error and its causes, `outer: inner: root`, so the root cause is not hidden
/// (reqwest's own message is only "error sending request for url ...").
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            write!(f, ": {cause}")?;
            next = cause.source();
        }
        Ok(())
    }
}

/// [`Chain`] as a string.
pub(super) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    Chain(e).to_string()
}

struct Errors<'a>(&'a [KindeError]);

impl fmt::Display for Errors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no error detail");
        }
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Throttled {
                retry_after,
                errors,
            } => {
                write!(f, "Kinde throttled the request (429: {})", Errors(errors))?;
                match retry_after {
                    Some(d) => write!(
                        f,
                        "; retry in {} s and lower the request rate",
                        d.as_secs_f64().ceil()
                    ),
                    None => f.write_str("; retry later and lower the request rate"),
                }
            }
            ApiError::Rejected { status, errors } => write!(
                f,
                "Kinde rejected the request ({status}: {}); fix the request, resending it will fail the same way",
                Errors(errors)
            ),
            ApiError::Unauthorized {
                status,
                errors,
                scope,
            } => write!(
                f,
                "Kinde refused the access token ({status}: {}); check that the machine-to-machine application \
                 is authorized for the Kinde Management API with the `{scope}` scope",
                Errors(errors)
            ),
            ApiError::Server { status, errors } => {
                write!(
                    f,
                    "Kinde could not handle the request ({status}: {})",
                    Errors(errors)
                )?;
                if *status == StatusCode::SERVICE_UNAVAILABLE
                    || *status == StatusCode::REQUEST_TIMEOUT
                {
                    f.write_str("; it was not applied, retry later")
                } else {
                    f.write_str("; it may or may not have been applied")
                }
            }
            ApiError::Redirected { status, location } => write!(
                f,
                "Kinde answered a redirect ({status} to {}), which is not followed; call the Management API on \
                 your `<subdomain>.kinde.com` domain, not a custom domain (check KINDE_DOMAIN)",
                location.as_deref().unwrap_or("an unknown location")
            ),
            ApiError::NotSent { source } => write!(
                f,
                "could not reach Kinde ({}); nothing was sent, so a retry is safe",
                Chain(&**source)
            ),
            ApiError::Transport { source } => write!(
                f,
                "the connection to Kinde failed after the request was sent ({}); it may have been applied",
                Chain(&**source)
            ),
            ApiError::Timeout { after } => write!(
                f,
                "no answer from Kinde within {after:?} after the request was sent; it may have been applied"
            ),
            ApiError::Undecodable {
                status,
                reason,
                body,
            } => write!(
                f,
                "Kinde answered {status} with a body that is not the documented JSON ({reason}): {body:?}; \
                 it was probably applied"
            ),
            ApiError::Token(e) => write!(f, "{e}"),
            ApiError::InvalidRequest { reason } => {
                write!(f, "the request could not be built: {reason}")
            }
        }
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ApiError::NotSent { source } | ApiError::Transport { source } => Some(&**source),
            ApiError::Token(e) => Some(e),
            _ => None,
        }
    }
}

/// Why no access token could be obtained from `POST /oauth2/token`.
#[derive(Debug)]
#[non_exhaustive]
pub enum TokenError {
    /// The token endpoint refused the request, with the OAuth error it gave.
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// The OAuth `error`, such as `invalid_client`.
        error: Option<String>,
        /// The OAuth `error_description`.
        description: Option<String>,
    },
    // These transport variants mirror `ApiError`'s on purpose: a token request fails in
    // the same ways, and the meter request classifies them the same.
    /// The connection failed before the token request was sent.
    NotSent {
        /// The underlying error.
        source: BoxError,
    },
    /// The connection failed after the token request was sent, or no answer in time.
    Transport {
        /// The underlying error.
        source: BoxError,
    },
    /// No token within the time allowed.
    Timeout {
        /// The time allowed.
        after: Duration,
    },
    /// The token endpoint is failing (5xx, 429), or an attempt this call waited for just
    /// failed: retry later.
    Unavailable {
        /// What failed.
        reason: String,
    },
    /// A body longer than any token response (a proxy or a page answering in Kinde's
    /// place, or a hostile server); it was cut off unread at `limit` bytes.
    TooLarge {
        /// The HTTP status.
        status: StatusCode,
        /// The most the client reads of a body, in bytes.
        limit: usize,
    },
    /// A success status with a body that is not a token response.
    Undecodable {
        /// The HTTP status.
        status: StatusCode,
        /// What was wrong with it.
        reason: String,
    },
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("could not get a Kinde access token: ")?;
        match self {
            TokenError::Refused {
                status,
                error,
                description,
            } => {
                write!(f, "the token endpoint answered {status}")?;
                if let Some(e) = error {
                    write!(f, " `{e}`")?;
                }
                if let Some(d) = description {
                    write!(f, " ({d})")?;
                }
                f.write_str(
                    "; check KINDE_MANAGEMENT_CLIENT_ID and KINDE_MANAGEMENT_CLIENT_SECRET, and that the \
                     application is a machine-to-machine application authorized for the Management API",
                )
            }
            TokenError::NotSent { source } => {
                write!(
                    f,
                    "could not reach the token endpoint ({})",
                    Chain(&**source)
                )
            }
            TokenError::Transport { source } => {
                write!(f, "the token request failed ({})", Chain(&**source))
            }
            TokenError::Timeout { after } => write!(f, "no token within {after:?}"),
            TokenError::Unavailable { reason } => write!(f, "{reason}; retry later"),
            TokenError::TooLarge { status, limit } => write!(
                f,
                "the token endpoint answered {status} with a body larger than {limit} bytes, which no token \
                 response is, so the rest was not read; check that KINDE_DOMAIN is your \
                 `<subdomain>.kinde.com` domain and that no proxy answers in its place, then retry"
            ),
            TokenError::Undecodable { status, reason } => {
                write!(
                    f,
                    "the token endpoint answered {status} with an unreadable body ({reason})"
                )
            }
        }
    }
}

impl std::error::Error for TokenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokenError::NotSent { source } | TokenError::Transport { source } => Some(&**source),
            _ => None,
        }
    }
}
