//! A local, stateful Kinde for tests: what stripe-mock is for Stripe, with a ledger.
//!
//! [`Emulator`] serves the endpoints a Kinde billing client talks to — the
//! client-credentials token endpoint and the meter usage endpoint — on
//! `127.0.0.1`, checks every request against Kinde's documented contract,
//! keeps a ledger of the usage it accepted, and can misbehave on demand:
//! throttling, injected faults, latency, going down and coming back.
//!
//! It also holds billing objects — plans, billing customers (organizations, users
//! or neither) and their agreements with monthly-style cycles — answers the billing
//! read endpoints a client uses to find a customer's agreement, and POSTs signed
//! billing webhooks (RS256 JWTs, key published at `/.well-known/jwks`) when plans are
//! assigned, changed or cancelled. See [billing objects](#billing-objects).
//!
//! It speaks HTTP and JSON only: it validates the raw JSON on the wire on its own
//! and shares no code or types with any client (kinde-meter included), so it can
//! referee it.
//!
//! Two ways to use it:
//!
//! - **As a library** (a dev-dependency) in Rust tests: [`Emulator::start`] or
//!   [`Emulator::builder`] runs it on its own thread, and its methods read the
//!   ledger and change its behaviour directly.
//! - **As the `kinde-emulator` binary**, for tests in any language or a service run by
//!   hand: `cargo run -p kinde-meter-emulator -- --port 8787`. It prints its base URL
//!   (`http://127.0.0.1:PORT`) as one line on stdout when ready, and stops on SIGINT or
//!   SIGTERM with exit status 0. `kinde-emulator --help` lists its flags.
//!
//! # The control API
//!
//! Every emulator (library or binary) also answers a control API under the reserved
//! prefix `/_emulator/`, on the same port, JSON in and out. Its requests are never
//! logged, throttled, faulted or marked down. Amounts are decimal strings (`"2.5"`),
//! times are milliseconds since the emulator started; errors are `{"error": "..."}`
//! with 400 (bad body), 404 (no such route) or 405 (wrong method, with `Allow`).
//!
//! | Method | Path | Does |
//! | --- | --- | --- |
//! | `GET` | `/_emulator/ledger` | `{"totals": [{"agreement", "feature", "total"}], "sum"}` |
//! | `GET` | `/_emulator/accepted` | the records applied, in order ([`AcceptedRecord`]) |
//! | `GET` | `/_emulator/requests` | every meter (and unknown-route) request, in order ([`ReceivedRequest`]; the `Authorization` value is hidden) |
//! | `GET` | `/_emulator/token-requests` | every token request ([`TokenRequest`]) |
//! | `GET` | `/_emulator/counts` | the tallies ([`Counts`]) |
//! | `GET` | `/_emulator/status` | `{"down", "in_flight", "max_in_flight"}` |
//! | `GET` | `/_emulator/faults` | the faults in effect |
//! | `PUT` or `POST` | `/_emulator/faults` | replaces the faults: `{"status_503": 0.2, "latency_ms": 20}`; absent fields are zero (names as in [`Faults`], plus `latency_ms` and `latency_jitter_ms`) |
//! | `POST` | `/_emulator/expire-tokens` | makes every issued token invalid ([`Emulator::expire_tokens`]) |
//! | `POST` | `/_emulator/down` | `{"seconds": N}`: for N seconds the token and meter endpoints answer 503 with `Retry-After`, without applying; `0` ends it ([`Emulator::unavailable_for`]) |
//! | `POST` | `/_emulator/up` | ends a `down` period early |
//! | `POST` | `/_emulator/reset` | clears the ledger, the logs, the counts, the faults and the webhook deliveries ([`Emulator::reset`]) |
//! | `GET` | `/_emulator/billing` | `{"plans": [{"code", "features"}], "customers": [{"customer_id", "org_code", "user_id", "agreements": [...]}], "cycle_length_secs", "cancelled_agreements_accept_usage"}`; agreements as the agreements endpoint lists them, cancelled ones included |
//! | `POST` | `/_emulator/plans` | `{"code", "features": [..]}` ([`Emulator::add_plan`]) |
//! | `POST` | `/_emulator/organizations` | `{"code", "plan", "name"?}` → `{"customer_id", "agreement_id"}` ([`Emulator::add_organization`]) |
//! | `POST` | `/_emulator/users` | `{"id", "plan"}` → `{"customer_id", "agreement_id"}` ([`Emulator::add_user`]) |
//! | `POST` | `/_emulator/customers` | `{"plan"}` → `{"customer_id", "agreement_id"}` ([`Emulator::add_customer`]) |
//! | `POST` | `/_emulator/change-plan` | `{"customer_id", "plan"}` → `{"agreement_id"}` ([`Emulator::change_plan`]) |
//! | `POST` | `/_emulator/cancel-agreement` | `{"agreement_id"}` ([`Emulator::cancel_agreement`]) |
//! | `POST` | `/_emulator/period-end` | `{"agreement_id", "period_end": "<RFC 3339>"}` or `{"agreement_id", "in_ms": N}` (from now, negative for the past) → the agreement plus `customer_id` and `current_period_index` ([`Emulator::set_period_end`]) |
//! | `GET`, `PUT` or `POST` | `/_emulator/scopes` | `{"scopes": [..]}`, read or replaced ([`Emulator::set_scopes`]) |
//! | `GET`, `PUT` or `POST` | `/_emulator/billing-settings` | `{"cycle_length_secs", "cancelled_agreements_accept_usage"}`; absent fields stay |
//! | `GET`, `PUT` or `POST` | `/_emulator/webhook` | `{"url": "http://…" \| null, "retry_delays_ms": [..]}`; absent fields stay ([`Emulator::set_webhook_url`]) |
//! | `GET` | `/_emulator/webhook-deliveries` | `[{"webhook_id", "event_id", "type", "customer_id", "data", "url", "attempts", "last_status", "last_error", "delivered", "finished"}]` ([`WebhookDelivery`]) |
//!
//! In `/_emulator/accepted` each record also has `cycle` and `arrival_cycle`:
//! `{"index", "start", "end"}` (RFC 3339) or `null` ([`AcceptedRecord::cycle`]).
//! Billing errors are 400 `{"error": "..."}` naming the problem.
//!
//! `down` keeps the port open so that the control API stays reachable: clients see a
//! 503 (a failure that was certainly not applied), not a refused connection. To have
//! connections refused, use [`Emulator::go_down`] or [`Emulator::down_for`] from the
//! library.
//!
//! # Billing objects
//!
//! Plans map a code to feature codes. A billing customer (`customer_<32 hex>`) is an
//! organization, a user (`kp_…`) or neither, and has agreements
//! (`agreement_<32 hex>`) on plans; an agreement's entitlements are its plan's
//! features, each with an `entitlement_<32 hex>` id. [`Emulator::change_plan`]
//! makes a new agreement and cancels the customer's active ones, as Kinde does, so
//! agreement ids change with plans. Every agreement made this way is accepted by the
//! meter usage endpoint even when [`EmulatorBuilder::known_agreements`] restricts
//! agreements; usage for a cancelled one is refused (400 `AGREEMENT_CANCELLED`)
//! unless [`Emulator::set_cancelled_agreements_accept_usage`].
//!
//! Each agreement has a current cycle, 30 days from its creation by default
//! ([`EmulatorBuilder::cycle_length`]). Cycles roll lazily: on any read once the
//! current end has passed, the next cycle starts at the old end. [`Emulator::set_period_end`]
//! moves the current end, which is how a test crosses a boundary. Each accepted
//! record carries the cycle its usage falls in ([`AcceptedRecord::cycle`], by its
//! `meter_usage_timestamp`) and the one current at its arrival
//! ([`AcceptedRecord::arrival_cycle`], where Kinde records it).
//!
//! Read endpoints (bearer token as for meter usage, then the scope; JSON like Kinde's;
//! every request is in [`Emulator::requests`] with its query):
//!
//! - `GET /api/v1/billing/agreements?customer_id=…[&feature_code=…][&page_size=N][&starting_after=<agreement id>]`
//!   (`read:billing_agreements`): `{"code": "OK", "message": "Success", "has_more",
//!   "agreements": [{"id", "plan_code", "expires_on", "billing_group_id",
//!   "current_period_start", "current_period_end", "entitlements": [{"feature_code",
//!   "entitlement_id"}]}]}`, the customer's active agreements oldest first.
//!   `page_size` is 1..=500 (default 10). Times are RFC 3339 UTC to the second.
//!   Unknown customer: 400 `CUSTOMER_NOT_FOUND`; no `customer_id`: 400
//!   `MISSING_PARAMETER`; a bad `page_size`, an unknown `starting_after` or a repeated
//!   parameter: 400 `INVALID_PARAMETER`.
//! - `GET /api/v1/organization?code=…[&expand=billing]` (`read:organizations`):
//!   `{"code", "name", "handle", "is_default", "external_id",
//!   "is_auto_membership_enabled"}` and, with `expand` naming `billing`,
//!   `"billing": {"billing_customer_id", "agreements": [{"plan_code", "agreement_id"}]}`
//!   (active agreements). Unknown: 404 `ORGANIZATION_NOT_FOUND`.
//! - `GET /api/v1/user?id=…[&expand=billing]` (`read:users`): `{"id", "provided_id",
//!   "preferred_email", "username", "first_name", "last_name", "is_suspended"}` and
//!   `"billing": {"customer_id"}`. Unknown: 404 `USER_NOT_FOUND`.
//! - `GET /.well-known/jwks` (no token): the webhook signing key ([`WebhookSigner::jwks_json`]).
//!
//! A missing scope is a 403 `{"errors": [{"code": "FORBIDDEN", "message": "the
//! application lacks the scope read:users"}]}`; meter usage needs
//! `create:meter_usage`. By default all four are granted ([`DEFAULT_SCOPES`]).
//!
//! # Webhooks
//!
//! With a webhook URL set ([`EmulatorBuilder::webhook_url`]), each billing event is
//! POSTed with `Content-Type: application/jwt` and a `webhook-id` header that stays
//! the same on every retry. The body is a compact JWS signed RS256 with the key of
//! [`Emulator::webhook_signer`], header `{"alg": "RS256", "typ": "JWT", "kid"}`,
//! claims `{"type", "event_id", "event_timestamp", "timestamp", "source": "api",
//! "iat", "exp" (iat + 300), "data": {"customer_id", "agreement_id",
//! "previous_agreement_id" (plan changes), "plan_code", "org_code" (organizations),
//! "user_id" (users)}}`; `timestamp`, `iat` and `exp` are those of each attempt.
//! Events: a first plan raises `customer.agreement_created` then
//! `customer.plan_assigned`; a plan change `customer.agreement_created`,
//! `customer.agreement_cancelled` (per cancelled agreement) then
//! `customer.plan_changed`; a cancellation `customer.agreement_cancelled`. Billing
//! objects made by the builder raise none. Delivery is asynchronous, in order per
//! customer; any answer other than 200 (or none within 5 s) is retried after
//! each of [`DEFAULT_RETRY_DELAYS`] (configurable; Kinde's own schedule runs from
//! 5 s to 36 h). [`Emulator::webhook_deliveries`] and [`Emulator::wait_webhooks`]
//! let a test wait for them.

mod amount;
mod billing;
mod clock;
pub mod codes;
mod control;
mod exchange;
mod faults;
mod ledger;
mod limits;
mod server;
mod validate;
mod webhook;
mod webhook_delivery;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub use amount::{Amount, ParseAmountError};
pub use billing::{
    Agreement, BILLING_GROUP_ID, BillingCustomer, BillingError, Cycle, DEFAULT_CYCLE_LENGTH,
    Entitlement,
};
pub use faults::{FaultKind, Faults};
pub use ledger::{
    AcceptedRecord, Counts, DEFAULT_SCOPES, ReceivedRequest, RequestOutcome,
    SCOPE_BILLING_AGREEMENTS, SCOPE_METER_USAGE, SCOPE_ORGANIZATIONS, SCOPE_USERS, TokenRequest,
};
pub use limits::RateLimit;
pub use validate::EmulatedMeterType;
pub use webhook::{
    DEFAULT_RETRY_DELAYS, WEBHOOK_TOKEN_LIFETIME_SECS, WebhookDelivery, WebhookSigner,
    base64url_decode, base64url_encode,
};

use exchange::Shared;
use ledger::{Config, Fixture, State};
use server::{Command, ServerHandle};

/// A local Kinde on `127.0.0.1`: token endpoint, meter usage endpoint, a
/// ledger, and fault injection.
///
/// It runs on its own thread with its own runtime, so it can be started and
/// inspected from plain synchronous code as well as from inside any tokio
/// runtime. Every method takes `&self` and returns at once (the few that
/// talk to the server thread wait at most about two seconds). Dropping it
/// stops the server.
///
/// Endpoints:
/// - `POST /oauth2/token` — form-encoded `grant_type=client_credentials`,
///   `client_id`, `client_secret` and `audience` (= [`audience`](Self::audience));
/// - `POST /api/v1/billing/meter_usage` — bearer token, JSON body checked field
///   by field; errors use the emulator's own [`codes`];
/// - `GET /api/v1/billing/agreements`, `GET /api/v1/organization`, `GET /api/v1/user`
///   and `GET /.well-known/jwks` (see [billing objects](crate#billing-objects)); these
///   answer 503 while [`unavailable_for`](Self::unavailable_for) but are never
///   throttled or faulted;
/// - the control API under `/_emulator/` (see the [crate documentation](crate)).
///
/// Request handling on the meter endpoint, in order: unavailability (503, see
/// [`unavailable_for`](Self::unavailable_for)), authentication (403, or
/// 401 when configured), throttling (429), then one fault draw, the latency,
/// the not-applied faults, validation (400/415), the apply, and the
/// after-apply faults.
///
/// What a meter usage body must be (anything else is a 400, or a 415 for a
/// `Content-Type` other than `application/json`; bodies over 64 KiB are a 413):
/// a JSON object without repeated or unknown keys; `customer_agreement_id` and
/// `billing_feature_code` non-empty strings; `meter_value` a string of ASCII
/// digits with an optional `.` and one to nine more digits (a JSON number, a
/// sign, an exponent, `"1."` or `".5"` is refused); `meter_usage_timestamp`,
/// when present, an RFC 3339 date-time `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`
/// with real range checks — stricter than the RFC in that `T` and `Z` must be
/// upper case, the fraction has at most nine digits and leap seconds are
/// refused; `meter_type_code`, when present, `"absolute"` or `"delta"` (when
/// absent the record counts as a delta). An optional field set to `null` is
/// refused too: a client should leave it out.
///
/// Every method that reports state works from any thread; the ledger is
/// exact ([`Amount`]). `Debug` shows the address and the counts, never the
/// client secret or a token.
///
/// ```
/// use std::io::{Read, Write};
/// use kinde_meter_emulator::Emulator;
///
/// let kinde = Emulator::start()?;
/// let token = kinde.issue_token();
/// let body = r#"{"customer_agreement_id":"agreement_1","billing_feature_code":"api_calls","meter_value":"3","meter_type_code":"delta"}"#;
///
/// let mut conn = std::net::TcpStream::connect(kinde.addr())?;
/// write!(
///     conn,
///     "POST /api/v1/billing/meter_usage HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
///      Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
///     kinde.addr(),
///     body.len(),
/// )?;
/// let mut response = String::new();
/// conn.read_to_string(&mut response)?;
/// assert!(response.starts_with("HTTP/1.1 200"));
///
/// assert_eq!(kinde.total("agreement_1", "api_calls"), 3);
/// assert_eq!(kinde.counts().accepted, 1);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Emulator {
    shared: Arc<Shared>,
    server: ServerHandle,
    base_url: String,
    client_id: String,
    client_secret: String,
    static_token: Option<String>,
}

impl fmt::Debug for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emulator")
            .field("base_url", &self.base_url)
            .field("up", &self.is_up())
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Starts an emulator with the default settings (see [`EmulatorBuilder`])
    /// on a free port.
    ///
    /// # Errors
    /// When the thread, the runtime or the listening socket cannot be created.
    pub fn start() -> io::Result<Emulator> {
        EmulatorBuilder::default().start()
    }

    /// A builder for an emulator with non-default settings.
    pub fn builder() -> EmulatorBuilder {
        EmulatorBuilder::default()
    }

    // ----- addresses and credentials -----

    /// `http://127.0.0.1:<port>`, without a trailing slash: the Kinde domain
    /// to configure a client with.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// The port the emulator listens on (kept across [`go_down`](Self::go_down)).
    pub fn port(&self) -> u16 {
        self.server.addr.port()
    }

    /// The socket address the emulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// The `audience` the token endpoint expects: `<base_url>/api`.
    pub fn audience(&self) -> String {
        format!("{}/api", self.base_url)
    }

    /// The token endpoint's URL.
    pub fn token_url(&self) -> String {
        format!("{}{}", self.base_url, server::TOKEN_PATH)
    }

    /// The meter usage endpoint's URL.
    pub fn meter_usage_url(&self) -> String {
        format!("{}{}", self.base_url, server::METER_PATH)
    }

    /// The client id the token endpoint accepts.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The client secret the token endpoint accepts.
    pub fn client_secret(&self) -> &str {
        &self.client_secret
    }

    /// The static access token, when one was configured.
    pub fn static_token(&self) -> Option<&str> {
        self.static_token.as_deref()
    }

    // ----- tokens -----

    /// Mints a valid access token directly, as if the token endpoint had
    /// issued it (it counts in [`Counts::tokens_issued`]).
    pub fn issue_token(&self) -> String {
        self.shared.lock().mint_token(Instant::now())
    }

    /// Sets the lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.lock().config.token_lifetime = lifetime;
    }

    /// Whether token responses leave out `expires_in` (clients must then assume 3600 s).
    pub fn set_omit_expires_in(&self, omit: bool) {
        self.shared.lock().config.omit_expires_in = omit;
    }

    /// Makes every token issued so far invalid (the static token stays valid).
    pub fn expire_tokens(&self) {
        self.shared.lock().expire_tokens();
    }

    /// Every request to the token endpoint, in arrival order.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.shared.lock().token_requests().to_vec()
    }

    // ----- ledger and logs -----

    /// The running total of every (agreement, feature) that received usage.
    pub fn ledger(&self) -> BTreeMap<(String, String), Amount> {
        self.shared.lock().ledger().clone()
    }

    /// The running total of one (agreement, feature); zero when it has none.
    pub fn total(&self, agreement: &str, feature: &str) -> Amount {
        let key = (agreement.to_owned(), feature.to_owned());
        self.shared
            .lock()
            .ledger()
            .get(&key)
            .copied()
            .unwrap_or_default()
    }

    /// The sum of every running total.
    pub fn ledger_sum(&self) -> Amount {
        self.shared.lock().ledger().values().sum()
    }

    /// Every record applied to the ledger, in order of application.
    pub fn accepted(&self) -> Vec<AcceptedRecord> {
        self.shared.lock().accepted().to_vec()
    }

    /// Every request other than token requests, in arrival order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared.lock().requests().to_vec()
    }

    /// Tallies of what the emulator did.
    pub fn counts(&self) -> Counts {
        self.shared.lock().counts()
    }

    /// The sum of the values of the delta records that were applied without a
    /// clean 200 reaching the client ([`AcceptedRecord::ambiguous`]). A client
    /// that retries every ambiguous failure over-counts by exactly this much;
    /// one that never retries them under-reports its deliveries by this much.
    pub fn ambiguous_applied(&self) -> Amount {
        self.shared.lock().ambiguous_applied()
    }

    /// The most meter requests ever handled at once (since the last
    /// [`reset_max_in_flight`](Self::reset_max_in_flight)); throttled ones
    /// count while they are being answered.
    pub fn max_in_flight_seen(&self) -> usize {
        self.shared.lock().max_in_flight
    }

    /// Restarts [`max_in_flight_seen`](Self::max_in_flight_seen) from the current count.
    pub fn reset_max_in_flight(&self) {
        let mut state = self.shared.lock();
        state.max_in_flight = state.in_flight;
    }

    /// Meter requests being handled right now.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().in_flight
    }

    /// Blocks until no meter request is being handled, or `timeout` passes;
    /// returns whether it got idle. Useful after a client gave up on requests
    /// that the emulator is still delaying. Blocks the calling thread.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = ledger::later(Instant::now(), timeout);
        loop {
            if self.in_flight() == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    // ----- throttling -----

    /// Sets or removes the request-rate limit; the bucket starts full.
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        self.shared.lock().set_rate_limit(limit);
    }

    /// Sets or removes the concurrency limit: a meter request that arrives
    /// while `limit` others are being handled gets a 429 with `RateLimit-Reset: 1`.
    pub fn set_concurrency_limit(&self, limit: Option<usize>) {
        self.shared.lock().config.concurrency_limit = limit;
    }

    /// Answers every meter request with 429 for `duration` from now, with
    /// `RateLimit-Reset` = the remaining seconds rounded up. `Duration::ZERO` ends it.
    pub fn throttle_for(&self, duration: Duration) {
        self.shared.lock().throttle_for(duration);
    }

    /// Whether 429s also carry `Retry-After` (same value as `RateLimit-Reset`).
    pub fn set_retry_after_header(&self, enabled: bool) {
        self.shared.lock().config.retry_after_header = enabled;
    }

    // ----- faults -----

    /// Replaces the injected faults (takes effect for the next request).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().config.faults = faults;
    }

    /// The injected faults in effect.
    pub fn faults(&self) -> Faults {
        self.shared.lock().config.faults.clone()
    }

    /// Whether a request whose `Idempotency-Key` was already applied gets a
    /// 200 without being applied again. Off by default: Kinde documents no
    /// idempotency.
    pub fn set_honor_idempotency_key(&self, honor: bool) {
        self.shared.lock().config.honor_idempotency_key = honor;
    }

    // ----- availability -----

    /// Closes the listening socket and every open connection, keep-alive ones
    /// included: connecting is refused until [`come_up`](Self::come_up).
    /// Requests already past their read keep being applied; their clients see
    /// a closed connection.
    pub fn go_down(&self) {
        let _ = self.server.request(Command::GoDown);
    }

    /// Listens again on the same port, with the same state.
    ///
    /// # Errors
    /// When the port cannot be bound again (something else took it) or the
    /// server thread is gone.
    pub fn come_up(&self) -> io::Result<()> {
        self.server
            .request(Command::ComeUp)
            .unwrap_or_else(|| Err(io::Error::other("the emulator thread is not running")))
    }

    /// Goes down now and comes back up by itself after `duration` (unless
    /// [`come_up`](Self::come_up) or [`go_down`](Self::go_down) is called meanwhile).
    pub fn down_for(&self, duration: Duration) {
        let _ = self
            .server
            .request(|reply| Command::DownFor(duration, reply));
    }

    /// Keeps accepting connections but answers every token and meter request with
    /// 503 and `Retry-After` (the seconds left), without applying, for `duration`
    /// from now; `Duration::ZERO` ends it. The control API keeps answering. This is
    /// what `POST /_emulator/down` does; such meter requests count in
    /// [`Counts::unavailable`].
    pub fn unavailable_for(&self, duration: Duration) {
        self.shared.lock().unavailable_for(duration);
    }

    /// Forgets what happened: the ledger, the accepted records, the request logs, the
    /// counts and the webhook deliveries; removes the faults, any [`throttle_for`](Self::throttle_for) or
    /// [`unavailable_for`](Self::unavailable_for) period, and restarts the fault
    /// generator from its seed. Other settings stay, and so do the tokens issued and
    /// the billing objects. This is what `POST /_emulator/reset` does.
    pub fn reset(&self) {
        self.shared.lock().reset();
    }

    // ----- billing objects -----

    /// Adds a plan with its feature codes, or replaces the features of an existing
    /// one (agreements made before keep the entitlements they had).
    ///
    /// # Errors
    /// [`BillingError::Invalid`] for an empty code, a code with whitespace, or a
    /// repeated feature.
    pub fn add_plan<I, S>(&self, code: &str, features: I) -> Result<(), BillingError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let features = features.into_iter().map(Into::into).collect();
        self.shared.lock().billing.add_plan(code, features)
    }

    /// Makes organization `code` (its name is the code) a billing customer on
    /// `plan`: a new `customer_<32 hex>` and its first agreement. Sends
    /// `customer.agreement_created` and `customer.plan_assigned` when a webhook URL
    /// is set. The agreement is accepted by the meter usage endpoint even when
    /// [`EmulatorBuilder::known_agreements`] restricts agreements.
    ///
    /// # Errors
    /// [`BillingError::PlanNotFound`], [`BillingError::AlreadyExists`] for an
    /// organization added before, [`BillingError::Invalid`] for a malformed code.
    pub fn add_organization(
        &self,
        code: &str,
        plan: &str,
    ) -> Result<BillingCustomer, BillingError> {
        self.shared.lock().add_organization(code, code, plan)
    }

    /// [`add_organization`](Self::add_organization) with a display name (the
    /// organization endpoint's `name`).
    ///
    /// # Errors
    /// As [`add_organization`](Self::add_organization).
    pub fn add_named_organization(
        &self,
        code: &str,
        name: &str,
        plan: &str,
    ) -> Result<BillingCustomer, BillingError> {
        self.shared.lock().add_organization(code, name, plan)
    }

    /// Makes user `id` (`kp_…`) a billing customer on `plan`, as
    /// [`add_organization`](Self::add_organization) does for an organization.
    ///
    /// # Errors
    /// As [`add_organization`](Self::add_organization).
    pub fn add_user(&self, id: &str, plan: &str) -> Result<BillingCustomer, BillingError> {
        self.shared.lock().add_user(id, plan)
    }

    /// A billing customer that is neither an organization nor a user, on `plan`.
    ///
    /// # Errors
    /// [`BillingError::PlanNotFound`].
    pub fn add_customer(&self, plan: &str) -> Result<BillingCustomer, BillingError> {
        self.shared.lock().add_customer(plan)
    }

    /// Moves a customer to `new_plan`, as `POST /api/v1/billing/agreements` does: a
    /// new agreement on it (its id is returned), and every agreement of the customer
    /// that was active is cancelled now. Webhooks: `customer.agreement_created`, one
    /// `customer.agreement_cancelled` per cancelled agreement, then
    /// `customer.plan_changed` (with `previous_agreement_id`); or, when the customer
    /// had no active agreement, `customer.agreement_created` and
    /// `customer.plan_assigned`.
    ///
    /// # Errors
    /// [`BillingError::CustomerNotFound`], [`BillingError::PlanNotFound`].
    pub fn change_plan(&self, customer_id: &str, new_plan: &str) -> Result<String, BillingError> {
        self.shared.lock().change_plan(customer_id, new_plan)
    }

    /// Cancels one agreement now (`expires_on` set; webhook
    /// `customer.agreement_cancelled`). Usage for it is then refused with
    /// `AGREEMENT_CANCELLED` unless [`set_cancelled_agreements_accept_usage`](Self::set_cancelled_agreements_accept_usage).
    ///
    /// # Errors
    /// [`BillingError::AgreementNotFound`], or [`BillingError::AgreementCancelled`]
    /// when it already was.
    pub fn cancel_agreement(&self, agreement_id: &str) -> Result<(), BillingError> {
        self.shared.lock().cancel_agreement(agreement_id)
    }

    /// Moves the end of an active agreement's current cycle to `end` (after its
    /// start). Once `end` passes, the next read rolls the cycle: the next one starts
    /// at `end` and lasts the cycle length. Returns the agreement as it is now.
    ///
    /// # Errors
    /// [`BillingError::AgreementNotFound`], [`BillingError::AgreementCancelled`], or
    /// [`BillingError::Invalid`] when `end` is not after the current cycle's start.
    pub fn set_period_end(
        &self,
        agreement_id: &str,
        end: SystemTime,
    ) -> Result<Agreement, BillingError> {
        self.shared.lock().set_period_end(agreement_id, end)
    }

    /// One agreement, its current cycle rolled forward to now.
    pub fn agreement(&self, agreement_id: &str) -> Option<Agreement> {
        self.shared
            .lock()
            .billing
            .agreement(agreement_id, SystemTime::now())
    }

    /// Every agreement of a customer, cancelled ones included, oldest first.
    pub fn customer_agreements(&self, customer_id: &str) -> Vec<Agreement> {
        self.shared
            .lock()
            .billing
            .customer_agreements(customer_id, SystemTime::now())
    }

    /// The billing customer id of an organization.
    pub fn organization_customer(&self, code: &str) -> Option<String> {
        self.shared
            .lock()
            .billing
            .organization_customer(code)
            .map(str::to_owned)
    }

    /// The billing customer id of a user.
    pub fn user_customer(&self, id: &str) -> Option<String> {
        self.shared
            .lock()
            .billing
            .user_customer(id)
            .map(str::to_owned)
    }

    /// The cycle of `agreement_id` that contains `t` (see [`AcceptedRecord::cycle`]).
    pub fn cycle_at(&self, agreement_id: &str, t: SystemTime) -> Option<Cycle> {
        self.shared
            .lock()
            .billing
            .cycle_at(agreement_id, t, SystemTime::now())
    }

    /// Sets the length of billing cycles: the first cycle of agreements made from now
    /// on, and every cycle that starts from now on. Zero is refused (ignored).
    pub fn set_cycle_length(&self, length: Duration) {
        if !length.is_zero() {
            let mut state = self.shared.lock();
            // Cycles that ended under the old length roll with it.
            state.billing.roll_all(SystemTime::now());
            state.billing.cycle_length = length;
        }
    }

    /// Whether usage for a cancelled agreement is accepted (default false: 400
    /// `AGREEMENT_CANCELLED`).
    pub fn set_cancelled_agreements_accept_usage(&self, accept: bool) {
        self.shared.lock().billing.cancelled_accept_usage = accept;
    }

    // ----- scopes -----

    /// Replaces the scopes granted to the application (default: [`DEFAULT_SCOPES`]).
    /// Checked at each request, so tokens already issued are affected too; the
    /// token response's `scope` lists them, space-separated. An endpoint whose scope
    /// is missing answers 403 `FORBIDDEN`.
    pub fn set_scopes<I, S>(&self, scopes: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.shared.lock().config.scopes = scopes.into_iter().map(Into::into).collect();
    }

    /// The scopes granted to the application.
    pub fn scopes(&self) -> BTreeSet<String> {
        self.shared.lock().config.scopes.clone()
    }

    // ----- webhooks -----

    /// The key that signs webhooks and that `GET /.well-known/jwks` publishes,
    /// generated on first use.
    ///
    /// # Errors
    /// When the key cannot be generated.
    pub fn webhook_signer(&self) -> io::Result<&WebhookSigner> {
        self.shared.signer()
    }

    /// The URL of `GET /.well-known/jwks`.
    pub fn jwks_url(&self) -> String {
        format!("{}{}", self.base_url, server::JWKS_PATH)
    }

    /// Sets or removes the URL billing events are POSTed to. Events raised while
    /// none is set are not sent, nor recorded. Makes the signing key if there is
    /// none yet.
    ///
    /// # Errors
    /// `InvalidInput` for a URL other than `http://host:port/path`; or when the
    /// signing key cannot be generated.
    pub fn set_webhook_url(&self, url: Option<&str>) -> io::Result<()> {
        if let Some(url) = url {
            webhook::check_url(url).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            // Made here rather than on the server thread at the first event.
            self.shared.signer()?;
        }
        self.shared.lock().config.webhook_url = url.map(str::to_owned);
        Ok(())
    }

    /// Sets the waits between delivery attempts of events raised from now on: one
    /// attempt, then one more after each wait (default [`DEFAULT_RETRY_DELAYS`]).
    pub fn set_webhook_retry_delays(&self, delays: Vec<Duration>) {
        self.shared.lock().config.webhook_retry_delays = delays;
    }

    /// Every webhook delivery since the start (or the last [`reset`](Self::reset)), in the
    /// order the events were raised.
    pub fn webhook_deliveries(&self) -> Vec<WebhookDelivery> {
        self.shared.lock().webhook_deliveries().to_vec()
    }

    /// Blocks until every webhook delivery is finished (delivered, or out of
    /// attempts), or `timeout` passes; returns whether they all finished.
    pub fn wait_webhooks(&self, timeout: Duration) -> bool {
        let deadline = ledger::later(Instant::now(), timeout);
        loop {
            if self
                .shared
                .lock()
                .webhook_deliveries()
                .iter()
                .all(|d| d.finished)
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Whether the emulator accepts connections.
    pub fn is_up(&self) -> bool {
        self.shared.is_up()
    }

    /// Stops the server and joins its thread (what dropping does).
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.server.stop();
    }
}

/// Settings for an [`Emulator`]; every one has a default that suits tests. `Debug`
/// leaves out the client secret and the static token.
///
/// ```
/// use std::time::Duration;
/// use kinde_meter_emulator::{Emulator, Faults};
///
/// let kinde = Emulator::builder()
///     .client_credentials("my-client", "my-secret")
///     .token_lifetime(Duration::from_secs(120))
///     .known_agreements(["agreement_1"])
///     .faults(Faults::none().status_503(0.2))
///     .seed(42)
///     .start()?;
/// assert_eq!(kinde.client_id(), "my-client");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct EmulatorBuilder {
    config: Config,
    /// 0: a free port.
    port: u16,
}

impl fmt::Debug for EmulatorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.debug_struct("EmulatorBuilder")
            .field("client_id", &c.client_id)
            .field("port", &self.port)
            .field("token_lifetime", &c.token_lifetime)
            .field("unauthorized_status", &c.unauthorized_status)
            .field("seed", &c.seed)
            .field("faults", &c.faults)
            .finish_non_exhaustive()
    }
}

impl EmulatorBuilder {
    /// The client id and secret the token endpoint accepts (defaults:
    /// `emulator-client-id` / `emulator-client-secret`).
    pub fn client_credentials(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.config.client_id = id.into();
        self.config.client_secret = secret.into();
        self
    }

    /// An access token that is always valid, never expires and is not affected
    /// by [`Emulator::expire_tokens`] (for clients given a ready-made token).
    pub fn static_token(mut self, token: impl Into<String>) -> Self {
        self.config.static_token = Some(token.into());
        self
    }

    /// How long issued tokens stay valid (default one hour). `expires_in` is
    /// the whole seconds of it, so a sub-second lifetime reports 0.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.token_lifetime = lifetime;
        self
    }

    /// Leave `expires_in` out of token responses (default: included).
    pub fn omit_expires_in(mut self, omit: bool) -> Self {
        self.config.omit_expires_in = omit;
        self
    }

    /// The status for a missing, unknown or expired token: 403 (default, as
    /// Kinde documents) or 401. Any other value makes [`start`](Self::start) fail.
    pub fn unauthorized_status(mut self, status: u16) -> Self {
        self.config.unauthorized_status = status;
        self
    }

    /// Refuse usage for any other agreement (`AGREEMENT_NOT_FOUND`, 400).
    /// Default: every agreement is known.
    pub fn known_agreements<I, S>(mut self, agreements: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.known_agreements = Some(
            agreements
                .into_iter()
                .map(Into::into)
                .collect::<BTreeSet<_>>(),
        );
        self
    }

    /// Refuse usage for any other feature code (`FEATURE_NOT_FOUND`, 400).
    /// Default: every feature is known.
    pub fn known_features<I, S>(mut self, features: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.known_features = Some(
            features
                .into_iter()
                .map(Into::into)
                .collect::<BTreeSet<_>>(),
        );
        self
    }

    /// Seed of the generator behind fault draws (default 0, so runs are
    /// deterministic unless asked otherwise). With a given seed and the same
    /// sequence of requests the faults come in the same order.
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = seed;
        self
    }

    /// Listen on this port of 127.0.0.1 instead of a free one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// A request-rate limit on the meter usage endpoint (default none).
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.config.rate_limit = Some(limit);
        self
    }

    /// A limit on meter requests handled at once (default none).
    pub fn concurrency_limit(mut self, limit: usize) -> Self {
        self.config.concurrency_limit = Some(limit);
        self
    }

    /// Whether 429s also carry `Retry-After` (default false).
    pub fn retry_after_header(mut self, enabled: bool) -> Self {
        self.config.retry_after_header = enabled;
        self
    }

    /// Faults to inject from the start (default none).
    pub fn faults(mut self, faults: Faults) -> Self {
        self.config.faults = faults;
        self
    }

    /// Whether an already-applied `Idempotency-Key` gets a 200 without being
    /// applied again (default false).
    pub fn honor_idempotency_key(mut self, honor: bool) -> Self {
        self.config.honor_idempotency_key = honor;
        self
    }

    /// The scopes granted to the application (default [`DEFAULT_SCOPES`]); see
    /// [`Emulator::set_scopes`].
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// A plan with its feature codes, made at start (see [`Emulator::add_plan`]).
    pub fn plan<I, S>(mut self, code: impl Into<String>, features: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let features = features.into_iter().map(Into::into).collect();
        self.config
            .fixtures
            .push(Fixture::Plan(code.into(), features));
        self
    }

    /// An organization on a plan, made at start without webhooks (see
    /// [`Emulator::add_organization`]); read its ids with
    /// [`Emulator::organization_customer`] and [`Emulator::customer_agreements`].
    pub fn organization(mut self, code: impl Into<String>, plan: impl Into<String>) -> Self {
        self.config
            .fixtures
            .push(Fixture::Organization(code.into(), plan.into()));
        self
    }

    /// A user on a plan, made at start without webhooks (see [`Emulator::add_user`]).
    pub fn user(mut self, id: impl Into<String>, plan: impl Into<String>) -> Self {
        self.config
            .fixtures
            .push(Fixture::User(id.into(), plan.into()));
        self
    }

    /// The length of billing cycles (default [`DEFAULT_CYCLE_LENGTH`], 30 days); zero
    /// makes [`start`](Self::start) fail.
    pub fn cycle_length(mut self, length: Duration) -> Self {
        self.config.cycle_length = length;
        self
    }

    /// Whether usage for a cancelled agreement is accepted (default false: 400
    /// `AGREEMENT_CANCELLED`).
    pub fn cancelled_agreements_accept_usage(mut self, accept: bool) -> Self {
        self.config.cancelled_accept_usage = accept;
        self
    }

    /// The URL billing events are POSTed to (default none); `http://host:port/path`
    /// only, anything else makes [`start`](Self::start) fail.
    pub fn webhook_url(mut self, url: impl Into<String>) -> Self {
        self.config.webhook_url = Some(url.into());
        self
    }

    /// The waits between webhook delivery attempts (default [`DEFAULT_RETRY_DELAYS`]).
    pub fn webhook_retry_delays(mut self, delays: Vec<Duration>) -> Self {
        self.config.webhook_retry_delays = delays;
        self
    }

    /// Starts the emulator and waits until it accepts connections.
    ///
    /// # Errors
    /// When the settings are invalid (an unauthorized status other than 401
    /// or 403, a zero cycle length, a webhook URL that is not plain `http://`, a
    /// billing object that cannot be made, e.g. an organization on an unknown plan),
    /// or the thread, the runtime or the socket cannot be created (for instance when
    /// the fixed port is taken).
    pub fn start(self) -> io::Result<Emulator> {
        let config = self.config;
        let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
        if !matches!(config.unauthorized_status, 401 | 403) {
            return Err(invalid(
                "the unauthorized status must be 401 or 403".to_owned(),
            ));
        }
        if config.cycle_length.is_zero() {
            return Err(invalid(
                "the cycle length must be more than zero".to_owned(),
            ));
        }
        if let Some(url) = &config.webhook_url {
            webhook::check_url(url).map_err(invalid)?;
        }
        let client_id = config.client_id.clone();
        let client_secret = config.client_secret.clone();
        let static_token = config.static_token.clone();
        let mut state = State::new(config);
        state.apply_fixtures().map_err(|e| invalid(e.to_string()))?;
        let webhooks = state.config.webhook_url.is_some();
        let shared = Arc::new(Shared::new(state));
        if webhooks {
            // Made before the first event, not on the server thread.
            shared.signer()?;
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let server = server::spawn(shared.clone(), addr)?;
        Ok(Emulator {
            base_url: format!("http://{}", server.addr),
            shared,
            server,
            client_id,
            client_secret,
            static_token,
        })
    }
}
