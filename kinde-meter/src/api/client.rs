//! The client: its settings, its connection pool and token cache. Requests go through
//! `request.rs`; each endpoint is a module of `endpoints/`.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http::header::HeaderMap;
use tokio::time::Instant;

use super::domain::{Credentials, Domain};
use super::error::BuildError;
use super::token::TokenSource;

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
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) http: reqwest::Client,
    pub(super) domain: Domain,
    pub(super) tokens: TokenSource,
    pub(super) request_timeout: Duration,
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
    pub(super) idempotency_key: Option<String>,
    pub(super) timeout: Option<Duration>,
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
}

/// `timeout` from now; a timeout too long for the clock (`Duration::MAX` for "none")
/// is a deadline decades away rather than an overflow.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400))
}
