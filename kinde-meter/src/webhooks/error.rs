//! Why a webhook was refused, and what the handler answers for each reason.

use std::fmt;

use http::StatusCode;

/// Why [`WebhookVerifier::verify`](super::WebhookVerifier::verify) refused a webhook.
///
/// Each variant says what to fix or why it was refused; [`status`](Self::status) is the
/// answer Kinde should get, and [`is_replay`](Self::is_replay) tells a redelivery of a
/// webhook already handled (to be answered `200` so Kinde stops retrying).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebhookError {
    /// The body is not a compact JWS (`header.claims.signature`, each base64url) with a
    /// JSON header and JSON claims, or a header or claim has the wrong type.
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// The body is longer than a webhook can be.
    TooLarge {
        /// The most bytes read.
        limit: usize,
    },
    /// The token's `alg` is not `RS256`, the one algorithm Kinde signs webhooks with.
    /// `none` and the HMAC algorithms are refused on purpose: trusting the header's
    /// choice is how forged tokens pass (an HS256 token "signed" with the public key).
    UnsupportedAlgorithm {
        /// The `alg` of the token's header.
        alg: String,
    },
    /// The token names no key (`kid`) and the JWKS has several.
    MissingKeyId {
        /// How many keys the JWKS has.
        keys: usize,
    },
    /// No key of the JWKS has the token's `kid`, even after fetching the JWKS again.
    UnknownKeyId {
        /// The token's `kid`.
        kid: String,
    },
    /// The signature does not verify with the key: the body was altered, or signed with
    /// another key.
    BadSignature {
        /// The key it was checked against, when the token named one.
        kid: Option<String>,
    },
    /// The token's `exp` has passed (beyond the leeway).
    Expired {
        /// The `exp` claim, in Unix seconds.
        expired_at: i64,
        /// This server's clock, in Unix seconds.
        now: i64,
        /// The leeway allowed, in seconds.
        leeway_secs: u64,
    },
    /// The token's `nbf` or `iat` is in the future (beyond the leeway).
    NotYetValid {
        /// `"nbf"` or `"iat"`.
        claim: &'static str,
        /// The claim, in Unix seconds.
        valid_from: i64,
        /// This server's clock, in Unix seconds.
        now: i64,
        /// The leeway allowed, in seconds.
        leeway_secs: u64,
    },
    /// The token's `iat` is older than the replay window: its webhook id may have been
    /// forgotten already, so a replay of it could not be told apart.
    TooOld {
        /// The `iat` claim, in Unix seconds.
        issued_at: i64,
        /// This server's clock, in Unix seconds.
        now: i64,
        /// The replay window, in seconds.
        window_secs: u64,
    },
    /// This webhook was already verified and handled within the replay window: Kinde
    /// delivers again when it did not get a `200`, with the same `webhook-id`.
    Replayed {
        /// What identified it: the `webhook-id`, else the `event_id`.
        id: String,
    },
    /// The signing keys could not be fetched, so the webhook could be neither verified
    /// nor refused: Kinde should deliver it again later.
    KeysUnavailable {
        /// The JWKS address.
        url: String,
        /// Why the last fetch failed.
        reason: String,
    },
}

impl WebhookError {
    /// Whether this is a redelivery of a webhook already handled. Answer it `200`, as
    /// [`WebhookHandler`](super::WebhookHandler) does, or Kinde retries it for 36 hours.
    pub fn is_replay(&self) -> bool {
        matches!(self, WebhookError::Replayed { .. })
    }

    /// The status to answer Kinde with: `200` for a replay (already handled), `400` for a
    /// body that is not a webhook, `503` when the keys could not be fetched (so Kinde
    /// retries), `401` for every other refusal.
    ///
    /// ```
    /// use kinde_meter::webhooks::WebhookError;
    ///
    /// let replay = WebhookError::Replayed { id: "msg_1".to_owned() };
    /// assert!(replay.is_replay());
    /// assert_eq!(replay.status(), http::StatusCode::OK);
    /// ```
    pub fn status(&self) -> StatusCode {
        match self {
            WebhookError::Replayed { .. } => StatusCode::OK,
            WebhookError::Malformed { .. } | WebhookError::TooLarge { .. } => {
                StatusCode::BAD_REQUEST
            }
            WebhookError::KeysUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The body of the handler's answer: the class of the refusal only. The details are
    /// in the log, not told to whoever sent a forged webhook.
    pub(super) fn summary(&self) -> &'static str {
        match self {
            WebhookError::Replayed { .. } => "already handled",
            WebhookError::Malformed { .. } => "not a Kinde webhook",
            WebhookError::TooLarge { .. } => "body too large",
            WebhookError::KeysUnavailable { .. } => "signing keys unavailable, retry later",
            _ => "webhook refused",
        }
    }

    pub(super) fn malformed(reason: impl Into<String>) -> Self {
        WebhookError::Malformed {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for WebhookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WebhookError::Malformed { reason } => write!(f, "not a Kinde webhook: {reason}"),
            WebhookError::TooLarge { limit } => write!(
                f,
                "the body is longer than {limit} bytes, far more than a Kinde webhook; it was not read"
            ),
            WebhookError::UnsupportedAlgorithm { alg } => write!(
                f,
                "the token is signed with {alg:?}, and only RS256 is accepted (Kinde signs \
                 webhooks with RS256; `none` or an HMAC algorithm is how forged tokens look)"
            ),
            WebhookError::MissingKeyId { keys } => write!(
                f,
                "the token names no key (`kid`) and the JWKS has {keys}, so it cannot be verified"
            ),
            WebhookError::UnknownKeyId { kid } => write!(
                f,
                "no key {kid:?} in the JWKS, even fetched again: the webhook was signed by \
                 another Kinde business (check the domain the verifier was built with) or forged"
            ),
            WebhookError::BadSignature { kid } => match kid {
                Some(kid) => write!(
                    f,
                    "the signature does not verify with key {kid:?}: the body was altered or forged"
                ),
                None => f.write_str(
                    "the signature does not verify with the JWKS's key: the body was altered or forged",
                ),
            },
            WebhookError::Expired {
                expired_at,
                now,
                leeway_secs,
            } => write!(
                f,
                "the token expired at {expired_at} (Unix seconds; now {now}, leeway {leeway_secs} s); \
                 if every webhook fails so, check this server's clock"
            ),
            WebhookError::NotYetValid {
                claim,
                valid_from,
                now,
                leeway_secs,
            } => write!(
                f,
                "the token's `{claim}` is {valid_from} (Unix seconds), in the future (now {now}, \
                 leeway {leeway_secs} s); if every webhook fails so, check this server's clock"
            ),
            WebhookError::TooOld {
                issued_at,
                now,
                window_secs,
            } => write!(
                f,
                "the token was issued at {issued_at} (Unix seconds; now {now}), before the replay \
                 window of {window_secs} s, so a replay of it could not be detected; widen \
                 `replay_window` if such old deliveries are expected"
            ),
            WebhookError::Replayed { id } => write!(
                f,
                "webhook {id} was already handled (a redelivery): answer 200 so Kinde stops retrying"
            ),
            WebhookError::KeysUnavailable { url, reason } => write!(
                f,
                "the signing keys at {url} could not be fetched ({reason}); the webhook is \
                 answered 503 so that Kinde delivers it again"
            ),
        }
    }
}

impl std::error::Error for WebhookError {}
