//! Access tokens: a static one, or minted with Kinde's client-credentials grant, cached,
//! renewed 60 s before expiry, one request at a time.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use serde::Deserialize;
use tokio::time::Instant;

use super::body::{MAX_BODY, read_capped};
use super::domain::{Credentials, Domain, Secret};
use super::error::{BoxError, TokenError};

/// Renew this long before a token expires, as Kinde's SDKs do.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Assumed lifetime when the token response has no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// Longest lifetime trusted: a longer `expires_in` costs only an earlier renewal, and
/// an absurd one would overflow the clock when the renewal time is computed.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// `Kinde-SDK: Rust/<crate version>/<rustc version>/rust`, sent on token requests.
pub(crate) const KINDE_SDK: &str = concat!(
    "Rust/",
    env!("CARGO_PKG_VERSION"),
    "/",
    env!("KINDE_METER_RUSTC_VERSION"),
    "/rust"
);

/// A token and the generation it belongs to (to invalidate exactly that one).
#[derive(Clone)]
pub(crate) struct Token {
    /// `Bearer <token>`, checked by [`authorization`] when the token is made, so a meter
    /// request never fails to be built because of its token.
    pub(crate) authorization: HeaderValue,
    generation: u64,
}

/// `Bearer <token>` as a header value marked sensitive (`Debug` shows `Sensitive`), or
/// why `token` cannot be one.
///
/// Stricter than HTTP, which allows spaces and bytes above 127 in a header: an OAuth
/// bearer token is visible ASCII (RFC 6750), so anything else is a damaged token (a
/// pasted line break, a stray space), better refused here than by Kinde after sending.
pub(crate) fn authorization(token: &str) -> Result<HeaderValue, &'static str> {
    if token.is_empty() {
        return Err("it is empty");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("an access token is visible ASCII, without spaces, tabs or line breaks");
    }
    let mut value = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|_| "it is not a valid HTTP header value")?;
    value.set_sensitive(true);
    Ok(value)
}

struct Cached {
    token: Token,
    refresh_at: Instant,
}

pub(crate) struct Minter {
    client_id: String,
    client_secret: Secret,
    token_url: String,
    audience: String,
    cached: Mutex<Option<Cached>>,
    /// Held while a token request is in flight: concurrent callers wait for it instead
    /// of sending their own.
    single_flight: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    /// Mint attempts started, and why the last one failed (if it did).
    attempts: AtomicU64,
    last_failure: Mutex<Option<String>>,
}

pub(crate) enum TokenSource {
    Static(Token),
    Minted(Box<Minter>),
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: Option<String>,
    error_description: Option<String>,
}

impl TokenSource {
    /// Fails, saying why, when a static token cannot be sent (see [`authorization`]).
    pub(crate) fn new(domain: &Domain, credentials: &Credentials) -> Result<Self, &'static str> {
        Ok(match credentials {
            Credentials::AccessToken(secret) => TokenSource::Static(Token {
                authorization: authorization(secret.expose())?,
                generation: 0,
            }),
            Credentials::ClientCredentials {
                client_id,
                client_secret,
            } => TokenSource::Minted(Box::new(Minter {
                client_id: client_id.clone(),
                client_secret: client_secret.clone(),
                token_url: domain.url("/oauth2/token"),
                audience: domain.audience(),
                cached: Mutex::new(None),
                single_flight: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
                attempts: AtomicU64::new(0),
                last_failure: Mutex::new(None),
            })),
        })
    }

    /// Whether a refused token can be replaced by minting a new one.
    pub(crate) fn can_remint(&self) -> bool {
        matches!(self, TokenSource::Minted(_))
    }

    /// A valid token, minting one if the cached one is missing or about to expire.
    pub(crate) async fn get(
        &self,
        http: &reqwest::Client,
        deadline: Instant,
    ) -> Result<Token, TokenError> {
        let m = match self {
            TokenSource::Static(t) => return Ok(t.clone()),
            TokenSource::Minted(m) => m,
        };
        if let Some(t) = m.fresh() {
            return Ok(t);
        }
        // Which attempt this caller would wait behind: if that one fails, its waiters
        // share the failure instead of each trying the token endpoint in turn.
        let attempts_before = m.attempts.load(Relaxed);
        let budget = deadline.saturating_duration_since(Instant::now());
        let _flight = tokio::time::timeout_at(deadline, m.single_flight.lock())
            .await
            .map_err(|_| TokenError::Timeout { after: budget })?;
        // Another caller may have minted one while this one waited.
        if let Some(t) = m.fresh() {
            return Ok(t);
        }
        if m.attempts.load(Relaxed) != attempts_before {
            let reason = m
                .last_failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(reason) = reason {
                return Err(TokenError::Unavailable { reason });
            }
        }
        m.attempts.fetch_add(1, Relaxed);
        let minted = m.mint(http, deadline).await;
        *m.last_failure.lock().unwrap_or_else(|e| e.into_inner()) =
            minted.as_ref().err().map(ToString::to_string);
        minted
    }

    /// Forgets `token` after Kinde refused it, unless a newer one replaced it already.
    pub(crate) fn invalidate(&self, token: &Token) {
        if let TokenSource::Minted(m) = self {
            let mut cached = m.cached.lock().unwrap_or_else(|e| e.into_inner());
            if cached
                .as_ref()
                .is_some_and(|c| c.token.generation == token.generation)
            {
                *cached = None;
            }
        }
    }
}

fn boxed(e: reqwest::Error) -> BoxError {
    Box::new(e)
}

impl Minter {
    fn fresh(&self) -> Option<Token> {
        let cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        cached
            .as_ref()
            .filter(|c| Instant::now() < c.refresh_at)
            .map(|c| c.token.clone())
    }

    async fn mint(&self, http: &reqwest::Client, deadline: Instant) -> Result<Token, TokenError> {
        let budget = deadline.saturating_duration_since(Instant::now());
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
            ("audience", self.audience.as_str()),
        ];
        let sent = http
            .post(&self.token_url)
            .header("Kinde-SDK", KINDE_SDK)
            .header(http::header::ACCEPT, "application/json")
            .form(&form)
            .timeout(budget)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Err(TokenError::Timeout { after: budget }),
            Err(e) if e.is_connect() => return Err(TokenError::NotSent { source: boxed(e) }),
            Err(e) => return Err(TokenError::Transport { source: boxed(e) }),
        };
        let status = response.status();
        let body = match read_capped(response).await {
            Ok(b) => b,
            Err(e) if e.is_timeout() => return Err(TokenError::Timeout { after: budget }),
            Err(e) => return Err(TokenError::Transport { source: boxed(e) }),
        };
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(TokenError::Unavailable {
                reason: format!("the token endpoint answered {status}"),
            });
        }
        if body.cut {
            return Err(TokenError::TooLarge {
                status,
                limit: MAX_BODY,
            });
        }
        let body = body.bytes;
        if status != StatusCode::OK {
            let oauth: Option<OAuthError> = serde_json::from_slice(&body).ok();
            return Err(TokenError::Refused {
                status,
                error: oauth.as_ref().and_then(|o| o.error.clone()),
                description: oauth.and_then(|o| o.error_description),
            });
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| TokenError::Undecodable {
                status,
                reason: e.to_string(),
            })?;
        // A token that cannot go in a header is a bad answer from the token endpoint, not
        // a meter request that failed: nothing is sent with it, and the error is a
        // retryable token error, since the next answer may be a good one.
        let authorization =
            authorization(&parsed.access_token).map_err(|why| TokenError::Undecodable {
                status,
                reason: format!("`access_token` cannot be sent: {why}"),
            })?;
        let lifetime = lifetime(parsed.expires_in);
        let refresh_after = refresh_after(lifetime);
        let token = Token {
            authorization,
            generation: self.generation.fetch_add(1, Relaxed) + 1,
        };
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some(Cached {
            token: token.clone(),
            refresh_at: Instant::now() + refresh_after,
        });
        tracing::debug!(target: "kinde_meter", lifetime_secs = lifetime.as_secs(), "minted a Kinde access token");
        Ok(token)
    }
}

/// The lifetime to trust: `expires_in` (at most a day), or an hour when absent.
fn lifetime(expires_in: Option<u64>) -> Duration {
    expires_in.map_or(DEFAULT_LIFETIME, |secs| {
        Duration::from_secs(secs).min(MAX_LIFETIME)
    })
}

/// When to renew: 60 s before expiry, as Kinde's SDKs do; tokens shorter than two
/// minutes at half their life.
fn refresh_after(lifetime: Duration) -> Duration {
    if lifetime > 2 * REFRESH_MARGIN {
        lifetime - REFRESH_MARGIN
    } else {
        lifetime / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_a_minute_early_and_an_hour_is_assumed() {
        let secs = |s| Duration::from_secs(s);
        assert_eq!(refresh_after(lifetime(Some(3600))), secs(3540));
        assert_eq!(refresh_after(lifetime(None)), secs(3540));
        assert_eq!(
            refresh_after(lifetime(Some(86_400 * 7))),
            secs(86_340),
            "a week is trusted for a day"
        );
        assert_eq!(refresh_after(lifetime(Some(100))), secs(50));
        assert_eq!(refresh_after(lifetime(Some(0))), secs(0));
        assert_eq!(refresh_after(lifetime(Some(u64::MAX))), secs(86_340));
    }
}
