//! Kinde's billing webhooks: verified, deduplicated, and served as a tower `Service`
//! (cargo feature `webhooks`).
//!
//! Kinde posts each webhook as a JWT (`application/jwt`) signed with the business's keys,
//! published at `https://<business>.kinde.com/.well-known/jwks`, with a `webhook-id`
//! header that stays the same across its retries (any answer but `200` is retried, for
//! up to 36 hours). [`WebhookHandler`] answers them; [`WebhookVerifier`] is the check
//! alone, for a server of another kind.
//!
//! ```no_run
//! use axum::Router;
//! use kinde_meter::api::Domain;
//! use kinde_meter::webhooks::{WebhookHandler, WebhookVerifier};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let verifier = WebhookVerifier::new(Domain::parse("acme.kinde.com")?)?;
//! let handler = WebhookHandler::new(verifier).on_event(|event| {
//!     if event.kind.changes_billing() {
//!         println!("{} for {:?}", event.kind, event.customer);
//!     }
//! });
//! let app: Router = Router::new().route_service("/kinde/webhooks", handler);
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! What is checked, and why:
//!
//! - the signature, RS256 only: `alg: none` and HMAC algorithms are refused, since
//!   trusting the header's choice is how forged tokens pass;
//! - the key, by `kid`, from the JWKS: an unknown `kid` makes the JWKS be fetched again,
//!   at most once per [`Jwks::min_refresh_interval`], so keys Kinde rotates are picked up
//!   and forged `kid`s cannot make this hammer Kinde;
//! - `exp`, `nbf` and `iat`, when present (Kinde does not document them), with a leeway;
//!   no `iss` is required (Kinde's webhook tokens may carry none);
//! - redeliveries: a verified webhook's id is remembered for the replay window (72 h by
//!   default), and a redelivery is refused as [`WebhookError::Replayed`], which the
//!   handler answers `200`. Remembered in memory only, so handlers must still be
//!   idempotent across restarts.
//!
//! The billing `data` payloads are not documented: [`WebhookEvent`] lists the fields it
//! assumes.
//!
//! Inside: `jws.rs` (the token and its signature), `jwks.rs` (keys, cache, refetch),
//! `claims.rs` (time claims), `event.rs` (the event and its data), `replay.rs` (ids
//! handled), `verifier.rs` (the checks in order), `handler.rs` (HTTP), `error.rs`,
//! `base64url.rs`.

mod base64url;
mod claims;
mod error;
mod event;
mod handler;
mod jwks;
mod jws;
mod replay;
mod verifier;

pub use error::WebhookError;
pub use event::{EventKind, WebhookEvent};
pub use handler::{ResponseFuture, WebhookHandler};
pub use jwks::{DEFAULT_FETCH_TIMEOUT, DEFAULT_MIN_REFRESH_INTERVAL, Jwks};
pub use verifier::{
    DEFAULT_LEEWAY, DEFAULT_REPLAY_CAPACITY, DEFAULT_REPLAY_WINDOW, MAX_BODY, WebhookVerifier,
    WebhookVerifierBuilder,
};

#[cfg(test)]
mod tests;
