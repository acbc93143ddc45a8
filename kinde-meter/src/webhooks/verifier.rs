//! [`WebhookVerifier`]: one webhook from body to [`WebhookEvent`], every check in order.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::claims::{Claims, TimeRules, unix_now};
use super::error::WebhookError;
use super::event::WebhookEvent;
use super::jwks::Jwks;
use super::jws;
use super::replay::{ReplayGuard, ReplayKey};
use crate::api::{BuildError, Domain};

/// Default clock skew allowed on `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// Default time a webhook id is remembered: Kinde retries for up to 36 hours, so twice
/// that covers every retry with room for a slow first delivery.
pub const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(72 * 3600);
/// Default number of webhook ids remembered (32 bytes and a timestamp each).
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;
/// The longest body accepted: webhooks are a few KiB.
pub const MAX_BODY: usize = 256 * 1024;
/// The longest `webhook-id` accepted.
const MAX_WEBHOOK_ID: usize = 1024;

/// Verifies Kinde's billing webhooks: the RS256 signature against the business's JWKS,
/// the time claims when present, and that the webhook was not handled already.
///
/// Cheap to clone: clones share the keys and the replay set, so one webhook is refused
/// as a replay by every clone. Keep one per Kinde business, for the life of the process.
///
/// ```no_run
/// use kinde_meter::api::Domain;
/// use kinde_meter::webhooks::WebhookVerifier;
///
/// # async fn run(webhook_id: Option<&str>, body: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
/// let verifier = WebhookVerifier::new(Domain::parse("acme.kinde.com")?)?;
/// match verifier.verify(webhook_id, body).await {
///     Ok(event) => println!("{} for {:?}", event.kind, event.customer),
///     Err(e) if e.is_replay() => {} // handled already: answer 200
///     Err(e) => eprintln!("refused ({}): {e}", e.status()),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WebhookVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    jwks: Jwks,
    replay: ReplayGuard,
    leeway: Duration,
}

impl fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookVerifier")
            .field("jwks", &self.inner.jwks)
            .field("leeway", &self.inner.leeway)
            .field("replay_window", &self.inner.replay.window())
            .finish_non_exhaustive()
    }
}

/// Builds a [`WebhookVerifier`] with options other than the defaults.
///
/// ```
/// use std::time::Duration;
/// use kinde_meter::api::Domain;
/// use kinde_meter::webhooks::{Jwks, WebhookVerifier};
///
/// let jwks = Jwks::new(Domain::parse("acme.kinde.com")?)?
///     .min_refresh_interval(Duration::from_secs(60));
/// let verifier = WebhookVerifier::builder(jwks)
///     .leeway(Duration::from_secs(30))
///     .replay_window(Duration::from_secs(48 * 3600))
///     .replay_capacity(10_000)
///     .build()?;
/// # let _ = verifier;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct WebhookVerifierBuilder {
    jwks: Jwks,
    leeway: Duration,
    replay_window: Duration,
    replay_capacity: usize,
}

impl WebhookVerifierBuilder {
    /// Clock skew allowed on `exp`, `nbf` and `iat` (default 60 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// How long a verified webhook's id is remembered, to refuse its redeliveries
    /// (default 72 h). A token issued (`iat`) longer ago than this is refused.
    pub fn replay_window(mut self, window: Duration) -> Self {
        self.replay_window = window;
        self
    }

    /// How many webhook ids are remembered at most (default 100 000); past it, the
    /// oldest are forgotten early.
    pub fn replay_capacity(mut self, capacity: usize) -> Self {
        self.replay_capacity = capacity;
        self
    }

    /// Checks the options and builds the verifier.
    pub fn build(self) -> Result<WebhookVerifier, BuildError> {
        if self.replay_window.is_zero() {
            return Err(BuildError::InvalidOption {
                option: "replay_window",
                reason: "must be greater than zero, or every redelivery is handled again \
                         (Kinde retries for up to 36 h)"
                    .to_owned(),
            });
        }
        if self.replay_capacity == 0 {
            return Err(BuildError::InvalidOption {
                option: "replay_capacity",
                reason: "must be greater than zero, or every redelivery is handled again"
                    .to_owned(),
            });
        }
        Ok(WebhookVerifier {
            inner: Arc::new(Inner {
                jwks: self.jwks,
                replay: ReplayGuard::new(self.replay_window, self.replay_capacity),
                leeway: self.leeway,
            }),
        })
    }
}

impl WebhookVerifier {
    /// A verifier of `domain`'s webhooks with the default options, fetching its keys from
    /// `<domain>/.well-known/jwks`.
    pub fn new(domain: Domain) -> Result<Self, BuildError> {
        Self::builder(Jwks::new(domain)?).build()
    }

    /// A verifier with fixed keys (a JWKS document), never fetched: for tests and
    /// offline checks.
    pub fn with_keys(jwks: &[u8]) -> Result<Self, BuildError> {
        Self::builder(Jwks::from_json(jwks)?).build()
    }

    /// A builder, for options other than the defaults.
    pub fn builder(jwks: Jwks) -> WebhookVerifierBuilder {
        WebhookVerifierBuilder {
            jwks,
            leeway: DEFAULT_LEEWAY,
            replay_window: DEFAULT_REPLAY_WINDOW,
            replay_capacity: DEFAULT_REPLAY_CAPACITY,
        }
    }

    /// The keys it verifies with.
    pub fn jwks(&self) -> &Jwks {
        &self.inner.jwks
    }

    /// Verifies one delivery: `webhook_id` is its `webhook-id` header, `body` the request
    /// body (the compact JWS).
    ///
    /// In order: the token's shape and header (`alg` must be RS256), its key (fetching
    /// the JWKS again for an unknown `kid`, within the refresh interval), the signature,
    /// the claims (`exp`, `nbf`, `iat` when present), and last that it was not verified
    /// before within the replay window. A webhook is remembered only once it verifies, so
    /// a forged body cannot use up a real webhook's id. What identifies it is the
    /// `webhook-id`, else the `event_id` claim, else the signature itself.
    pub async fn verify(
        &self,
        webhook_id: Option<&str>,
        body: &[u8],
    ) -> Result<WebhookEvent, WebhookError> {
        self.verify_keyed(webhook_id, body)
            .await
            .map(|(event, _)| event)
    }

    /// [`verify`](Self::verify), and the key the webhook is remembered under.
    pub(super) async fn verify_keyed(
        &self,
        webhook_id: Option<&str>,
        body: &[u8],
    ) -> Result<(WebhookEvent, ReplayKey), WebhookError> {
        if body.len() > MAX_BODY {
            return Err(WebhookError::TooLarge { limit: MAX_BODY });
        }
        if let Some(id) = webhook_id
            && (id.is_empty()
                || id.len() > MAX_WEBHOOK_ID
                || !id.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(WebhookError::malformed(format!(
                "the `webhook-id` header must be 1 to {MAX_WEBHOOK_ID} visible ASCII characters"
            )));
        }
        let inner = &*self.inner;
        let token = jws::parse(body)?;
        let key = inner.jwks.key(token.kid.as_deref()).await?;
        token.verify(&key)?;
        let claims = Claims::parse(&token.claims)?;
        claims.check_times(
            unix_now(),
            TimeRules {
                leeway: inner.leeway,
                max_age: inner.replay.window(),
            },
        )?;
        let event = WebhookEvent::new(webhook_id, claims);
        let (key, id) = match (&event.webhook_id, &event.event_id) {
            (Some(id), _) => (
                ReplayKey::new("webhook-id", id.as_bytes()),
                format!("{id:?}"),
            ),
            (None, Some(id)) => (
                ReplayKey::new("event_id", id.as_bytes()),
                format!("with event_id {id:?}"),
            ),
            (None, None) => (
                ReplayKey::new("signature", &token.signature),
                "with the same signature".to_owned(),
            ),
        };
        if !inner.replay.first_sight(key, Instant::now()) {
            return Err(WebhookError::Replayed { id });
        }
        Ok((event, key))
    }

    /// Forgets a webhook, so that its next delivery is handled again.
    pub(super) fn forget(&self, key: ReplayKey) {
        self.inner.replay.forget(key);
    }
}
