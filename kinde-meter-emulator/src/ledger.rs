//! The emulator's state: configuration, tokens, ledger and logs, and the
//! decisions taken on each request. Nothing here knows about HTTP plumbing.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::amount::Amount;
use crate::billing::{
    Agreement, Billing, BillingCustomer, BillingError, BillingEvent, Cycle, Query, QueryError,
};
use crate::codes;
use crate::faults::{Draw, FaultKind, Faults};
use crate::limits::{RateLimit, TokenBucket, ceil_secs};
use crate::validate::{self, ApiError, EmulatedMeterType, Known};
use crate::webhook::{self, Outgoing, WebhookDelivery};

/// A usage record the emulator applied to its ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AcceptedRecord {
    /// `customer_agreement_id`.
    pub agreement: String,
    /// `billing_feature_code`.
    pub feature: String,
    /// `meter_value`.
    pub value: Amount,
    /// How the record changed the total.
    pub meter_type: EmulatedMeterType,
    /// Whether `meter_type_code` was present (when absent the record counts as a delta).
    pub meter_type_explicit: bool,
    /// `meter_usage_timestamp`, verbatim, when present.
    pub timestamp: Option<String>,
    /// The `Idempotency-Key` header, when present.
    pub idempotency_key: Option<String>,
    /// When the request arrived.
    pub arrived_at: Instant,
    /// When the record was applied (after any injected latency).
    pub applied_at: Instant,
    /// Index of the request in [`Emulator::requests`](crate::Emulator::requests).
    pub request_index: usize,
    /// Applied, but the client got no clean 200: an after-apply fault, or the
    /// client had gone (timed out, or the emulator went down) before the answer
    /// was ready. The latter is best effort: a client that gives up at the very
    /// moment the answer is produced may go unnoticed.
    pub ambiguous: bool,
    /// The cycle of the agreement that the usage belongs to: the one containing
    /// `meter_usage_timestamp`, or the arrival time when the record has none.
    /// `None` when the agreement is not one of the emulator's billing agreements
    /// ([`Emulator::add_organization`](crate::Emulator::add_organization) and the
    /// like), or the time is before its first cycle or after its current one.
    pub cycle: Option<Cycle>,
    /// The cycle that was current when the request arrived, which is where Kinde
    /// records usage ("usage that arrives after a cycle ended is recorded in the next
    /// one"). Differs from [`cycle`](Self::cycle) for usage sent late. `None` when the
    /// agreement is not one of the emulator's billing agreements.
    pub arrival_cycle: Option<Cycle>,
}

/// What became of a request to the emulator (other than a token request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestOutcome {
    /// Still being handled.
    Pending,
    /// Applied and answered 200.
    Accepted,
    /// Answered 200 without applying: its `Idempotency-Key` was already applied
    /// and the emulator honours idempotency keys.
    Replayed,
    /// Refused by validation: 400, 413 or 415.
    Rejected,
    /// Missing, unknown or expired bearer token: 403 (or 401).
    Unauthorized,
    /// A valid token, but the application lacks the endpoint's scope: 403.
    Forbidden,
    /// Answered 200 by a read endpoint (billing agreements, organization, user, JWKS).
    Read,
    /// Answered 429.
    Throttled,
    /// Unknown path or method: 404.
    NotFound,
    /// Answered 503 without applying because the emulator was marked unavailable
    /// ([`Emulator::unavailable_for`](crate::Emulator::unavailable_for), or
    /// `POST /_emulator/down`).
    Unavailable,
    /// An injected fault.
    Fault(FaultKind),
    /// The client closed the connection (or the emulator went down) before the
    /// answer was ready, so nothing was sent. `applied` tells whether the record
    /// reached the ledger anyway.
    Abandoned {
        /// Whether the record was applied.
        applied: bool,
    },
}

/// One HTTP request received by the emulator (every request except token
/// requests and the control API's).
///
/// Its `Debug` output hides the value of the `Authorization` header.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReceivedRequest {
    /// The request method, e.g. `POST`.
    pub method: String,
    /// The URI path, without the query.
    pub path: String,
    /// The query string, when present.
    pub query: Option<String>,
    /// Every header in arrival order; names lower case, values decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    /// The raw body (empty when it was over the size limit).
    pub body: Vec<u8>,
    /// When the request head arrived.
    pub arrived_at: Instant,
    /// When the answer was produced; `None` while pending and when no answer was sent.
    pub responded_at: Option<Instant>,
    /// The status sent; `None` while pending and when the connection was closed instead.
    pub status: Option<u16>,
    /// What became of the request.
    pub outcome: RequestOutcome,
    /// The `code`s of the error body sent, if any.
    pub error_codes: Vec<String>,
    /// The `RateLimit-Reset` seconds sent with a 429.
    pub rate_limit_reset: Option<u64>,
    /// The `Retry-After` seconds sent with a 429, when that header is enabled.
    pub retry_after: Option<u64>,
}

impl fmt::Debug for ReceivedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivedRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("headers", &RedactedHeaders(&self.headers))
            .field("body", &self.body_str())
            .field("arrived_at", &self.arrived_at)
            .field("responded_at", &self.responded_at)
            .field("status", &self.status)
            .field("outcome", &self.outcome)
            .field("error_codes", &self.error_codes)
            .field("rate_limit_reset", &self.rate_limit_reset)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

/// Headers for `Debug`, credentials hidden.
struct RedactedHeaders<'a>(&'a [(String, String)]);

impl fmt::Debug for RedactedHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, value)| {
                if is_secret_header(name) {
                    (name.as_str(), "<redacted>")
                } else {
                    (name.as_str(), value.as_str())
                }
            }))
            .finish()
    }
}

/// Whether a header carries credentials (hidden from `Debug` and the control API).
pub(crate) fn is_secret_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("authorization")
        || name.eq_ignore_ascii_case("proxy-authorization")
        || name.eq_ignore_ascii_case("cookie")
}

impl ReceivedRequest {
    /// The first value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn body_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// The body parsed as JSON, when it is JSON.
    pub fn body_json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// One request to the token endpoint (its body, which holds the client secret, is
/// not kept). Its `Debug` output hides the value of the `Authorization` header.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenRequest {
    /// Every header in arrival order; names lower case, values decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    /// When the request head arrived.
    pub arrived_at: Instant,
    /// The `grant_type` form field.
    pub grant_type: Option<String>,
    /// The `client_id` form field.
    pub client_id: Option<String>,
    /// The `audience` form field.
    pub audience: Option<String>,
    /// The status sent.
    pub status: u16,
    /// The OAuth `error` sent, when refused.
    pub error: Option<String>,
    /// Whether a token was issued.
    pub issued: bool,
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRequest")
            .field("headers", &RedactedHeaders(&self.headers))
            .field("arrived_at", &self.arrived_at)
            .field("grant_type", &self.grant_type)
            .field("client_id", &self.client_id)
            .field("audience", &self.audience)
            .field("status", &self.status)
            .field("error", &self.error)
            .field("issued", &self.issued)
            .finish()
    }
}

impl TokenRequest {
    /// The first value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The `Kinde-SDK` header.
    pub fn kinde_sdk(&self) -> Option<&str> {
        self.header("kinde-sdk")
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Tallies of what the emulator did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counts {
    /// Records applied to the ledger, ambiguous ones included (`accepted().len()`).
    pub accepted: usize,
    /// 200s without applying for an already-applied `Idempotency-Key`.
    pub replayed: usize,
    /// Requests refused by validation (400, 413, 415).
    pub rejected: usize,
    /// Requests refused for their credentials (403 or 401).
    pub unauthorized: usize,
    /// Requests refused for a scope the application lacks (403).
    pub forbidden: usize,
    /// Read requests answered 200 (billing agreements, organization, user, JWKS).
    pub reads: usize,
    /// 429s.
    pub throttled: usize,
    /// 404s.
    pub not_found: usize,
    /// 503s answered while the emulator was marked unavailable (meter requests only).
    pub unavailable: usize,
    /// Injected faults that answered (500, 502, 503, 500 after apply, malformed 200).
    pub faults: usize,
    /// Connections closed on purpose without an answer (both drop faults).
    pub dropped: usize,
    /// Requests whose client went away before the answer was ready.
    pub abandoned: usize,
    /// Records applied without a clean 200 reaching the client.
    pub ambiguous: usize,
    /// Access tokens issued.
    pub tokens_issued: usize,
}

/// An answer to send: a response or a closed connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    Respond(Reply),
    Drop,
}

/// A response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: String,
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub(crate) fn json(status: u16, body: &serde_json::Value) -> Self {
        Reply {
            status,
            content_type: "application/json",
            body: body.to_string(),
            headers: Vec::new(),
        }
    }

    pub(crate) fn errors(status: u16, errors: &[ApiError]) -> Self {
        let list: Vec<_> = errors
            .iter()
            .map(|e| json!({"code": e.code, "message": e.message}))
            .collect();
        Reply::json(status, &json!({ "errors": list }))
    }

    fn error(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Reply::errors(status, &[ApiError::new(code, message)])
    }

    fn oauth_error(status: u16, error: &str, description: &str) -> Self {
        Reply::json(
            status,
            &json!({"error": error, "error_description": description}),
        )
    }
}

/// Settings that may change while the emulator runs. `Debug` hides the secret
/// and the static token.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    pub(crate) static_token: Option<String>,
    pub(crate) token_lifetime: Duration,
    pub(crate) omit_expires_in: bool,
    pub(crate) unauthorized_status: u16,
    pub(crate) known_agreements: Option<BTreeSet<String>>,
    pub(crate) known_features: Option<BTreeSet<String>>,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) concurrency_limit: Option<usize>,
    pub(crate) retry_after_header: bool,
    pub(crate) honor_idempotency_key: bool,
    pub(crate) faults: Faults,
    pub(crate) seed: u64,
    /// The scopes granted to the application (checked at each request).
    pub(crate) scopes: BTreeSet<String>,
    pub(crate) webhook_url: Option<String>,
    pub(crate) webhook_retry_delays: Vec<Duration>,
    pub(crate) cycle_length: Duration,
    pub(crate) cancelled_accept_usage: bool,
    /// Billing objects to make at start.
    pub(crate) fixtures: Vec<Fixture>,
}

/// A billing object made when the emulator starts (no webhook is sent for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fixture {
    Plan(String, Vec<String>),
    Organization(String, String),
    User(String, String),
}

/// The scope of `POST /api/v1/billing/meter_usage`.
pub const SCOPE_METER_USAGE: &str = "create:meter_usage";
/// The scope of `GET /api/v1/billing/agreements`.
pub const SCOPE_BILLING_AGREEMENTS: &str = "read:billing_agreements";
/// The scope of `GET /api/v1/organization`.
pub const SCOPE_ORGANIZATIONS: &str = "read:organizations";
/// The scope of `GET /api/v1/user`.
pub const SCOPE_USERS: &str = "read:users";
/// The scopes granted by default: all four the emulator knows.
pub const DEFAULT_SCOPES: [&str; 4] = [
    SCOPE_METER_USAGE,
    SCOPE_BILLING_AGREEMENTS,
    SCOPE_ORGANIZATIONS,
    SCOPE_USERS,
];

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field(
                "static_token",
                &self.static_token.as_ref().map(|_| "<redacted>"),
            )
            .field("token_lifetime", &self.token_lifetime)
            .field("omit_expires_in", &self.omit_expires_in)
            .field("unauthorized_status", &self.unauthorized_status)
            .field("known_agreements", &self.known_agreements)
            .field("known_features", &self.known_features)
            .field("rate_limit", &self.rate_limit)
            .field("concurrency_limit", &self.concurrency_limit)
            .field("retry_after_header", &self.retry_after_header)
            .field("honor_idempotency_key", &self.honor_idempotency_key)
            .field("faults", &self.faults)
            .field("seed", &self.seed)
            .field("scopes", &self.scopes)
            .field("webhook_url", &self.webhook_url)
            .field("webhook_retry_delays", &self.webhook_retry_delays)
            .field("cycle_length", &self.cycle_length)
            .field("cancelled_accept_usage", &self.cancelled_accept_usage)
            .field("fixtures", &self.fixtures)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            client_id: "emulator-client-id".to_owned(),
            client_secret: "emulator-client-secret".to_owned(),
            static_token: None,
            token_lifetime: Duration::from_secs(3600),
            omit_expires_in: false,
            unauthorized_status: 403,
            known_agreements: None,
            known_features: None,
            rate_limit: None,
            concurrency_limit: None,
            retry_after_header: false,
            honor_idempotency_key: false,
            faults: Faults::default(),
            seed: 0,
            scopes: DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
            webhook_url: None,
            webhook_retry_delays: webhook::DEFAULT_RETRY_DELAYS.to_vec(),
            cycle_length: crate::billing::DEFAULT_CYCLE_LENGTH,
            cancelled_accept_usage: false,
            fixtures: Vec::new(),
        }
    }
}

/// Everything behind the emulator's mutex. `Debug` shows the settings (secrets
/// hidden) and sizes, never the tokens.
pub(crate) struct State {
    pub(crate) config: Config,
    pub(crate) audience: String,
    /// When the emulator was created: the origin of the control API's millisecond times.
    pub(crate) started_at: Instant,
    /// Until when the token and meter endpoints answer 503.
    unavailable_until: Option<Instant>,
    ledger: BTreeMap<(String, String), Amount>,
    accepted: Vec<AcceptedRecord>,
    requests: Vec<ReceivedRequest>,
    token_requests: Vec<TokenRequest>,
    tokens: HashMap<String, Instant>,
    tokens_issued: usize,
    applied_keys: HashSet<String>,
    rng: fastrand::Rng,
    token_rng: fastrand::Rng,
    bucket: Option<TokenBucket>,
    throttle_until: Option<Instant>,
    pub(crate) in_flight: usize,
    pub(crate) max_in_flight: usize,
    /// Bumped by every reset (see [`State::epoch`]).
    epoch: u64,
    /// The wall-clock time at `started_at`.
    started_wall: SystemTime,
    pub(crate) billing: Billing,
    webhooks: Vec<WebhookDelivery>,
    /// Bumped when the deliveries are cleared, so a sending task writes no stale record.
    webhook_epoch: u64,
    webhook_rng: fastrand::Rng,
    /// Where webhook deliveries go to be sent (set by `Shared::new`).
    pub(crate) outbox: Option<tokio::sync::mpsc::UnboundedSender<Outgoing>>,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("config", &self.config)
            .field("audience", &self.audience)
            .field("ledger", &self.ledger)
            .field("accepted", &self.accepted.len())
            .field("requests", &self.requests.len())
            .field("token_requests", &self.token_requests.len())
            .field("live_tokens", &self.tokens.len())
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl State {
    pub(crate) fn new(config: Config) -> Self {
        let now = Instant::now();
        let seed = config.seed;
        let mut billing = Billing::new(seed);
        billing.cycle_length = config.cycle_length;
        billing.cancelled_accept_usage = config.cancelled_accept_usage;
        State {
            rng: fastrand::Rng::with_seed(config.seed),
            // Separate stream, so the fault sequence does not depend on token traffic.
            token_rng: fastrand::Rng::with_seed(config.seed ^ 0x9e37_79b9_7f4a_7c15),
            bucket: config.rate_limit.map(|l| TokenBucket::new(l, now)),
            config,
            audience: String::new(),
            started_at: now,
            unavailable_until: None,
            ledger: BTreeMap::new(),
            accepted: Vec::new(),
            requests: Vec::new(),
            token_requests: Vec::new(),
            tokens: HashMap::new(),
            tokens_issued: 0,
            applied_keys: HashSet::new(),
            throttle_until: None,
            in_flight: 0,
            max_in_flight: 0,
            epoch: 0,
            started_wall: SystemTime::now(),
            billing,
            webhooks: Vec::new(),
            webhook_epoch: 0,
            webhook_rng: fastrand::Rng::with_seed(seed ^ 0x5eb0_0c5e_ed00_0001),
            outbox: None,
        }
    }

    // ----- inspection -----

    pub(crate) fn ledger(&self) -> &BTreeMap<(String, String), Amount> {
        &self.ledger
    }

    pub(crate) fn accepted(&self) -> &[AcceptedRecord] {
        &self.accepted
    }

    pub(crate) fn requests(&self) -> &[ReceivedRequest] {
        &self.requests
    }

    pub(crate) fn token_requests(&self) -> &[TokenRequest] {
        &self.token_requests
    }

    pub(crate) fn counts(&self) -> Counts {
        let mut c = Counts {
            accepted: self.accepted.len(),
            ambiguous: self.accepted.iter().filter(|a| a.ambiguous).count(),
            tokens_issued: self.tokens_issued,
            ..Counts::default()
        };
        for r in &self.requests {
            match r.outcome {
                RequestOutcome::Pending | RequestOutcome::Accepted => {}
                RequestOutcome::Replayed => c.replayed += 1,
                RequestOutcome::Rejected => c.rejected += 1,
                RequestOutcome::Unauthorized => c.unauthorized += 1,
                RequestOutcome::Forbidden => c.forbidden += 1,
                RequestOutcome::Read => c.reads += 1,
                RequestOutcome::Throttled => c.throttled += 1,
                RequestOutcome::NotFound => c.not_found += 1,
                RequestOutcome::Unavailable => c.unavailable += 1,
                RequestOutcome::Fault(k) if k.drops_connection() => c.dropped += 1,
                RequestOutcome::Fault(_) => c.faults += 1,
                RequestOutcome::Abandoned { .. } => c.abandoned += 1,
            }
        }
        c
    }

    pub(crate) fn ambiguous_applied(&self) -> Amount {
        self.accepted
            .iter()
            .filter(|a| a.ambiguous && a.meter_type == EmulatedMeterType::Delta)
            .map(|a| a.value)
            .sum()
    }

    // ----- settings -----

    pub(crate) fn set_rate_limit(&mut self, limit: Option<RateLimit>) {
        self.config.rate_limit = limit;
        self.bucket = limit.map(|l| TokenBucket::new(l, Instant::now()));
    }

    pub(crate) fn throttle_for(&mut self, d: Duration) {
        self.throttle_until = (!d.is_zero()).then(|| later(Instant::now(), d));
    }

    pub(crate) fn expire_tokens(&mut self) {
        self.tokens.clear();
    }

    /// Marks the token and meter endpoints unavailable (503) for `d` from now;
    /// `Duration::ZERO` ends it.
    pub(crate) fn unavailable_for(&mut self, d: Duration) {
        self.unavailable_until = (!d.is_zero()).then(|| later(Instant::now(), d));
    }

    /// The seconds left (rounded up) while the endpoints are marked unavailable.
    fn unavailable_secs(&mut self, now: Instant) -> Option<u64> {
        let until = self.unavailable_until?;
        if until > now {
            return Some(ceil_secs(until - now));
        }
        self.unavailable_until = None;
        None
    }

    /// Whether the endpoints are marked unavailable right now.
    pub(crate) fn is_unavailable(&mut self) -> bool {
        self.unavailable_secs(Instant::now()).is_some()
    }

    /// Forgets what happened: ledger, accepted records, request logs, counts,
    /// applied idempotency keys, webhook deliveries; removes the faults, the throttling window and the
    /// unavailability, and restarts the fault generator from the seed. Settings
    /// and issued tokens stay.
    pub(crate) fn reset(&mut self) {
        self.epoch += 1;
        self.ledger.clear();
        self.accepted.clear();
        self.requests.clear();
        self.token_requests.clear();
        self.tokens_issued = 0;
        self.applied_keys.clear();
        self.config.faults = Faults::default();
        self.throttle_until = None;
        self.unavailable_until = None;
        self.rng = fastrand::Rng::with_seed(self.config.seed);
        self.bucket = self
            .config
            .rate_limit
            .map(|l| TokenBucket::new(l, Instant::now()));
        self.max_in_flight = self.in_flight;
        self.clear_webhook_deliveries();
    }

    // ----- tokens -----

    pub(crate) fn mint_token(&mut self, now: Instant) -> String {
        self.tokens.retain(|_, expiry| *expiry > now);
        let rng = &mut self.token_rng;
        let token = format!("emu_{:016x}{:016x}", rng.u64(..), rng.u64(..));
        self.tokens
            .insert(token.clone(), later(now, self.config.token_lifetime));
        self.tokens_issued += 1;
        token
    }

    /// Handles a token request and logs it.
    pub(crate) fn token_request(
        &mut self,
        headers: Vec<(String, String)>,
        body: Option<&[u8]>,
        arrived_at: Instant,
    ) -> Reply {
        let mut record = TokenRequest {
            headers,
            arrived_at,
            grant_type: None,
            client_id: None,
            audience: None,
            status: 200,
            error: None,
            issued: false,
        };
        let reply = self.token_reply(&mut record, body);
        record.status = reply.status;
        if reply.status != 200 {
            record.error = serde_json::from_str::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_owned));
        }
        self.token_requests.push(record);
        reply
    }

    fn token_reply(&mut self, record: &mut TokenRequest, body: Option<&[u8]>) -> Reply {
        if let Some(secs) = self.unavailable_secs(Instant::now()) {
            let mut reply = Reply::oauth_error(
                503,
                "temporarily_unavailable",
                "the emulator is marked down",
            );
            reply.headers.push(("retry-after", secs.to_string()));
            return reply;
        }
        let invalid = |d: &str| Reply::oauth_error(400, "invalid_request", d);
        let Some(body) = body else {
            return Reply::oauth_error(413, "invalid_request", "the request body is too large");
        };
        let content_type = find_header(&record.headers, "content-type");
        if !validate::is_media_type(content_type, "application/x-www-form-urlencoded") {
            return invalid("Content-Type must be application/x-www-form-urlencoded");
        }
        let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body) else {
            return invalid("the body is not a valid form");
        };
        let mut seen = HashSet::new();
        if let Some((dup, _)) = form.iter().find(|(k, _)| !seen.insert(k.as_str())) {
            return invalid(&format!("parameter `{dup}` is repeated"));
        }
        let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        record.grant_type = field("grant_type");
        record.client_id = field("client_id");
        record.audience = field("audience");
        match record.grant_type.as_deref() {
            None => return invalid("grant_type is required"),
            Some("client_credentials") => {}
            Some(_) => {
                return Reply::oauth_error(
                    400,
                    "unsupported_grant_type",
                    "only client_credentials is supported",
                );
            }
        }
        let credentials_ok = record.client_id.as_deref() == Some(self.config.client_id.as_str())
            && field("client_secret").as_deref() == Some(self.config.client_secret.as_str());
        if !credentials_ok {
            return Reply::oauth_error(401, "invalid_client", "client authentication failed");
        }
        match record.audience.as_deref() {
            None => return invalid("audience is required"),
            Some(a) if a == self.audience => {}
            Some(_) => {
                return Reply::oauth_error(
                    400,
                    "invalid_audience",
                    &format!("the audience must be {}", self.audience),
                );
            }
        }
        let token = self.mint_token(Instant::now());
        record.issued = true;
        let mut body = json!({
            "access_token": token,
            "expires_in": self.config.token_lifetime.as_secs(),
            "token_type": "bearer",
            "scope": self.scope_string(),
        });
        if self.config.omit_expires_in
            && let Some(map) = body.as_object_mut()
        {
            map.remove("expires_in");
        }
        let mut reply = Reply::json(200, &body);
        reply.headers.push(("cache-control", "no-store".to_owned()));
        reply
    }

    fn authorized(&self, authorization: Option<&str>, now: Instant) -> bool {
        let Some((scheme, token)) = authorization.and_then(|h| h.split_once(' ')) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return false;
        }
        self.config.static_token.as_deref() == Some(token)
            || self.tokens.get(token).is_some_and(|expiry| *expiry > now)
    }

    // ----- the meter endpoint -----

    /// How many resets the state has had: a request admitted before one applies nothing.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The answer to a request admitted before a reset: nothing applied, nothing logged
    /// in the new state, and a status that says it was not applied.
    pub(crate) fn reset_meanwhile() -> Answer {
        Answer::Respond(Reply::error(
            503,
            codes::SERVICE_UNAVAILABLE,
            "The emulator was reset while this request waited; nothing was applied",
        ))
    }

    /// Logs a request and returns its index.
    pub(crate) fn log_request(&mut self, request: ReceivedRequest) -> usize {
        self.requests.push(request);
        self.requests.len() - 1
    }

    /// Records the answer to request `idx` and returns it.
    fn finish(
        &mut self,
        idx: usize,
        outcome: RequestOutcome,
        answer: Answer,
        now: Instant,
    ) -> Answer {
        if let Some(r) = self.requests.get_mut(idx) {
            r.outcome = outcome;
            match &answer {
                Answer::Respond(reply) => {
                    r.status = Some(reply.status);
                    r.responded_at = Some(now);
                    r.error_codes = error_codes(reply);
                    for (name, value) in &reply.headers {
                        let secs = value.parse().ok();
                        match *name {
                            "ratelimit-reset" => r.rate_limit_reset = secs,
                            "retry-after" => r.retry_after = secs,
                            _ => {}
                        }
                    }
                }
                Answer::Drop => {
                    r.status = None;
                    r.responded_at = None;
                }
            }
        }
        answer
    }

    /// Answers a request whose body was over the size limit.
    pub(crate) fn too_large(&mut self, idx: usize, limit: usize, now: Instant) -> Answer {
        let reply = Reply::error(
            413,
            codes::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {limit} bytes"),
        );
        self.finish(idx, RequestOutcome::Rejected, Answer::Respond(reply), now)
    }

    /// A 503 when the endpoints are marked unavailable.
    pub(crate) fn unavailable(&mut self, idx: usize, now: Instant) -> Option<Answer> {
        let secs = self.unavailable_secs(now)?;
        let mut reply = Reply::error(
            503,
            codes::SERVICE_UNAVAILABLE,
            "Service unavailable (the emulator is marked down)",
        );
        reply.headers.push(("retry-after", secs.to_string()));
        Some(self.finish(
            idx,
            RequestOutcome::Unavailable,
            Answer::Respond(reply),
            now,
        ))
    }

    /// Answers an unknown route.
    pub(crate) fn not_found(&mut self, idx: usize, now: Instant) -> Answer {
        let reply = Reply::error(404, codes::ROUTE_NOT_FOUND, "no such route");
        self.finish(idx, RequestOutcome::NotFound, Answer::Respond(reply), now)
    }

    /// Authentication and throttling, answered at once. `Ok` means the
    /// request goes on, with the fault and latency drawn for it.
    pub(crate) fn admit(
        &mut self,
        idx: usize,
        authorization: Option<&str>,
        now: Instant,
    ) -> Result<Draw, Answer> {
        if !self.authorized(authorization, now) {
            let reply = Reply::error(
                self.config.unauthorized_status,
                codes::UNAUTHORIZED,
                "Invalid credentials",
            );
            return Err(self.finish(
                idx,
                RequestOutcome::Unauthorized,
                Answer::Respond(reply),
                now,
            ));
        }
        if let Some(answer) = self.lacks_scope(idx, SCOPE_METER_USAGE, now) {
            return Err(answer);
        }
        if let Some(reset) = self.throttled(now) {
            let mut reply = Reply::error(429, codes::TOO_MANY_REQUESTS, "Too many requests");
            reply.headers.push(("ratelimit-reset", reset.to_string()));
            if self.config.retry_after_header {
                reply.headers.push(("retry-after", reset.to_string()));
            }
            return Err(self.finish(idx, RequestOutcome::Throttled, Answer::Respond(reply), now));
        }
        Ok(self.config.faults.draw(&mut self.rng))
    }

    /// The `RateLimit-Reset` seconds when the request must be throttled.
    fn throttled(&mut self, now: Instant) -> Option<u64> {
        if let Some(until) = self.throttle_until {
            if until > now {
                return Some(ceil_secs(until - now));
            }
            self.throttle_until = None;
        }
        if let Some(limit) = self.config.concurrency_limit
            && self.in_flight > limit
        {
            return Some(1);
        }
        self.bucket.as_mut().and_then(|b| b.try_take(now).err())
    }

    /// Everything after the latency: not-applied faults, validation, apply,
    /// after-apply faults.
    pub(crate) fn decide(
        &mut self,
        idx: usize,
        draw: Draw,
        content_type: Option<&str>,
        body: &[u8],
        idempotency_key: Option<String>,
        now: Instant,
    ) -> Answer {
        let fault = draw.fault;
        if let Some(kind) = fault {
            let answer = match kind {
                FaultKind::Status500 => Some(Answer::Respond(Reply::error(
                    500,
                    codes::INTERNAL_ERROR,
                    "Internal server error",
                ))),
                FaultKind::Status502 => Some(Answer::Respond(bad_gateway())),
                FaultKind::Status503 => Some(Answer::Respond(Reply::error(
                    503,
                    codes::SERVICE_UNAVAILABLE,
                    "Service unavailable",
                ))),
                FaultKind::DropBeforeApply => Some(Answer::Drop),
                _ => None,
            };
            if let Some(answer) = answer {
                return self.finish(idx, RequestOutcome::Fault(kind), answer, now);
            }
        }

        let known = Known {
            agreements: self.config.known_agreements.as_ref(),
            features: self.config.known_features.as_ref(),
        };
        let usage = match validate::validate_usage(content_type, body, known) {
            Ok(usage) => usage,
            Err((status, errors)) => {
                let reply = Reply::errors(status, &errors);
                return self.finish(idx, RequestOutcome::Rejected, Answer::Respond(reply), now);
            }
        };

        if self.billing.is_cancelled(&usage.agreement) && !self.billing.cancelled_accept_usage {
            let reply = Reply::error(
                400,
                codes::AGREEMENT_CANCELLED,
                format!("the customer agreement {} was cancelled", usage.agreement),
            );
            return self.finish(idx, RequestOutcome::Rejected, Answer::Respond(reply), now);
        }

        let replay = self.config.honor_idempotency_key
            && idempotency_key
                .as_ref()
                .is_some_and(|k| self.applied_keys.contains(k));
        if !replay {
            let key = (usage.agreement.clone(), usage.feature.clone());
            let total = self.ledger.entry(key).or_default();
            *total = match usage.meter_type {
                EmulatedMeterType::Delta => *total + usage.value,
                EmulatedMeterType::Absolute => usage.value,
            };
            if let Some(k) = &idempotency_key {
                self.applied_keys.insert(k.clone());
            }
            let arrived_at = self.requests.get(idx).map_or(now, |r| r.arrived_at);
            let (cycle, arrival_cycle) =
                self.cycles_of(&usage.agreement, usage.timestamp.as_deref(), arrived_at);
            self.accepted.push(AcceptedRecord {
                agreement: usage.agreement,
                feature: usage.feature,
                value: usage.value,
                meter_type: usage.meter_type,
                meter_type_explicit: usage.meter_type_explicit,
                timestamp: usage.timestamp,
                idempotency_key,
                arrived_at,
                applied_at: now,
                request_index: idx,
                ambiguous: fault.is_some_and(FaultKind::applies),
                cycle,
                arrival_cycle,
            });
        }

        let (outcome, answer) = match fault {
            Some(kind @ FaultKind::Status500AfterApply) => (
                RequestOutcome::Fault(kind),
                Answer::Respond(Reply::error(
                    500,
                    codes::INTERNAL_ERROR,
                    "Internal server error",
                )),
            ),
            Some(kind @ FaultKind::DropAfterApply) => (RequestOutcome::Fault(kind), Answer::Drop),
            Some(kind @ FaultKind::Malformed200) => {
                let reply = if draw.truncated_json {
                    Reply {
                        status: 200,
                        content_type: "application/json",
                        body: r#"{"message":"Succ"#.to_owned(),
                        headers: Vec::new(),
                    }
                } else {
                    Reply {
                        status: 200,
                        content_type: "text/html",
                        body: "<html>OK</html>".to_owned(),
                        headers: Vec::new(),
                    }
                };
                (RequestOutcome::Fault(kind), Answer::Respond(reply))
            }
            _ => (
                if replay {
                    RequestOutcome::Replayed
                } else {
                    RequestOutcome::Accepted
                },
                Answer::Respond(Reply::json(
                    200,
                    &json!({"message": "Success", "code": "OK"}),
                )),
            ),
        };
        self.finish(idx, outcome, answer, now)
    }

    /// The client went away before request `idx` could be answered.
    pub(crate) fn abandon(&mut self, idx: usize) {
        let Some(r) = self.requests.get_mut(idx) else {
            return;
        };
        let applied = match r.outcome {
            RequestOutcome::Accepted => true,
            RequestOutcome::Replayed | RequestOutcome::Rejected | RequestOutcome::Pending => false,
            // Injected faults keep their outcome: they already count as such.
            _ => return,
        };
        r.outcome = RequestOutcome::Abandoned { applied };
        r.status = None;
        r.responded_at = None;
        if applied
            && let Some(a) = self
                .accepted
                .iter_mut()
                .rev()
                .find(|a| a.request_index == idx)
        {
            a.ambiguous = true;
        }
    }
}

/// A read endpoint of the emulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadRoute {
    /// `GET /api/v1/billing/agreements`.
    Agreements,
    /// `GET /api/v1/organization`.
    Organization,
    /// `GET /api/v1/user`.
    User,
}

impl ReadRoute {
    fn scope(self) -> &'static str {
        match self {
            ReadRoute::Agreements => SCOPE_BILLING_AGREEMENTS,
            ReadRoute::Organization => SCOPE_ORGANIZATIONS,
            ReadRoute::User => SCOPE_USERS,
        }
    }
}

impl State {
    // ----- scopes -----

    /// The granted scopes, space-separated (the token response's `scope`).
    pub(crate) fn scope_string(&self) -> String {
        self.config
            .scopes
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A 403 when the application lacks `scope`.
    fn lacks_scope(&mut self, idx: usize, scope: &str, now: Instant) -> Option<Answer> {
        if self.config.scopes.contains(scope) {
            return None;
        }
        let reply = Reply::error(
            403,
            codes::FORBIDDEN,
            format!("the application lacks the scope {scope}"),
        );
        Some(self.finish(idx, RequestOutcome::Forbidden, Answer::Respond(reply), now))
    }

    // ----- read endpoints -----

    /// Answers a read request: unavailability, the token, the scope, then the query.
    pub(crate) fn read(
        &mut self,
        idx: usize,
        route: ReadRoute,
        authorization: Option<&str>,
        query: Option<&str>,
        now: Instant,
    ) -> Answer {
        if let Some(answer) = self.unavailable(idx, now) {
            return answer;
        }
        if !self.authorized(authorization, now) {
            let reply = Reply::error(
                self.config.unauthorized_status,
                codes::UNAUTHORIZED,
                "Invalid credentials",
            );
            return self.finish(
                idx,
                RequestOutcome::Unauthorized,
                Answer::Respond(reply),
                now,
            );
        }
        if let Some(answer) = self.lacks_scope(idx, route.scope(), now) {
            return answer;
        }
        let wall = SystemTime::now();
        let result = Query::parse(query).and_then(|q| match route {
            ReadRoute::Agreements => self.billing.list_agreements(&q, wall),
            ReadRoute::Organization => self.billing.get_organization(&q, wall),
            ReadRoute::User => self.billing.get_user(&q),
        });
        self.read_reply(idx, result, now)
    }

    /// Records and returns the answer of a read request.
    pub(crate) fn read_reply(
        &mut self,
        idx: usize,
        result: Result<Value, QueryError>,
        now: Instant,
    ) -> Answer {
        let (outcome, reply) = match result {
            Ok(body) => (RequestOutcome::Read, Reply::json(200, &body)),
            Err((status, code, message)) => (
                if status == 404 {
                    RequestOutcome::NotFound
                } else {
                    RequestOutcome::Rejected
                },
                Reply::error(status, code, message),
            ),
        };
        self.finish(idx, outcome, Answer::Respond(reply), now)
    }

    // ----- billing objects -----

    /// The wall-clock time of an `Instant` of this emulator.
    fn wall_time(&self, t: Instant) -> SystemTime {
        let since = t.saturating_duration_since(self.started_at);
        self.started_wall
            .checked_add(since)
            .unwrap_or(self.started_wall)
    }

    /// The cycles of a record: by its timestamp (or arrival), and at its arrival.
    fn cycles_of(
        &mut self,
        agreement: &str,
        timestamp: Option<&str>,
        arrived_at: Instant,
    ) -> (Option<Cycle>, Option<Cycle>) {
        let arrived = self.wall_time(arrived_at);
        let now = SystemTime::now();
        let at = timestamp
            .and_then(crate::clock::parse_rfc3339)
            .unwrap_or(arrived);
        (
            self.billing.cycle_at(agreement, at, now),
            self.billing.cycle_at(agreement, arrived, now),
        )
    }

    /// Makes the builder's billing objects (without webhooks).
    pub(crate) fn apply_fixtures(&mut self) -> Result<(), BillingError> {
        let now = SystemTime::now();
        let mut ignored = Vec::new();
        for fixture in std::mem::take(&mut self.config.fixtures) {
            match fixture {
                Fixture::Plan(code, features) => self.billing.add_plan(&code, features)?,
                Fixture::Organization(code, plan) => {
                    let made =
                        self.billing
                            .add_organization(&code, &code, &plan, now, &mut ignored)?;
                    self.know(&made.agreement_id);
                }
                Fixture::User(id, plan) => {
                    let made = self.billing.add_user(&id, &plan, now, &mut ignored)?;
                    self.know(&made.agreement_id);
                }
            }
        }
        Ok(())
    }

    /// Adds a new agreement to the known agreements, when those are restricted.
    fn know(&mut self, agreement: &str) {
        if let Some(known) = &mut self.config.known_agreements {
            known.insert(agreement.to_owned());
        }
    }

    pub(crate) fn add_organization(
        &mut self,
        code: &str,
        name: &str,
        plan: &str,
    ) -> Result<BillingCustomer, BillingError> {
        let mut events = Vec::new();
        let made =
            self.billing
                .add_organization(code, name, plan, SystemTime::now(), &mut events)?;
        self.know(&made.agreement_id);
        self.emit(events);
        Ok(made)
    }

    pub(crate) fn add_user(
        &mut self,
        id: &str,
        plan: &str,
    ) -> Result<BillingCustomer, BillingError> {
        let mut events = Vec::new();
        let made = self
            .billing
            .add_user(id, plan, SystemTime::now(), &mut events)?;
        self.know(&made.agreement_id);
        self.emit(events);
        Ok(made)
    }

    pub(crate) fn add_customer(&mut self, plan: &str) -> Result<BillingCustomer, BillingError> {
        let mut events = Vec::new();
        let made = self
            .billing
            .add_customer(plan, SystemTime::now(), &mut events)?;
        self.know(&made.agreement_id);
        self.emit(events);
        Ok(made)
    }

    pub(crate) fn change_plan(
        &mut self,
        customer_id: &str,
        plan: &str,
    ) -> Result<String, BillingError> {
        let mut events = Vec::new();
        let id = self
            .billing
            .change_plan(customer_id, plan, SystemTime::now(), &mut events)?;
        self.know(&id);
        self.emit(events);
        Ok(id)
    }

    pub(crate) fn cancel_agreement(&mut self, agreement_id: &str) -> Result<(), BillingError> {
        let mut events = Vec::new();
        self.billing
            .cancel_agreement(agreement_id, SystemTime::now(), &mut events)?;
        self.emit(events);
        Ok(())
    }

    pub(crate) fn set_period_end(
        &mut self,
        agreement_id: &str,
        end: SystemTime,
    ) -> Result<Agreement, BillingError> {
        self.billing
            .set_period_end(agreement_id, end, SystemTime::now())
    }

    // ----- webhooks -----

    /// Queues the events for delivery, when a webhook URL is set.
    fn emit(&mut self, events: Vec<BillingEvent>) {
        let Some(url) = self.config.webhook_url.clone() else {
            return;
        };
        for event in events {
            let rng = &mut self.webhook_rng;
            let event_id = format!("event_{:016x}{:016x}", rng.u64(..), rng.u64(..));
            let webhook_id = format!("msg_{:016x}{:016x}", rng.u64(..), rng.u64(..));
            let claims = json!({
                "type": event.event_type,
                "event_id": event_id,
                "event_timestamp": crate::clock::format_rfc3339(event.at),
                "source": "api",
                "data": event.data,
            });
            self.webhooks.push(WebhookDelivery {
                webhook_id: webhook_id.clone(),
                event_id,
                event_type: event.event_type.to_owned(),
                customer_id: event.customer_id.clone(),
                data: event.data,
                url: url.clone(),
                attempts: 0,
                last_status: None,
                last_error: None,
                delivered: false,
                finished: false,
            });
            let outgoing = Outgoing {
                index: self.webhooks.len() - 1,
                epoch: self.webhook_epoch,
                customer_id: event.customer_id,
                webhook_id,
                url: url.clone(),
                claims,
                retry_delays: self.config.webhook_retry_delays.clone(),
            };
            let sent = self
                .outbox
                .as_ref()
                .is_some_and(|tx| tx.send(outgoing).is_ok());
            if !sent && let Some(d) = self.webhooks.last_mut() {
                d.last_error = Some("the emulator is not running".to_owned());
                d.finished = true;
            }
        }
    }

    /// Records one delivery attempt.
    pub(crate) fn webhook_attempted(
        &mut self,
        index: usize,
        epoch: u64,
        result: Result<u16, String>,
        finished: bool,
    ) {
        if epoch != self.webhook_epoch {
            return;
        }
        if let Some(d) = self.webhooks.get_mut(index) {
            d.attempts += 1;
            match result {
                Ok(status) => {
                    d.last_status = Some(status);
                    d.last_error = None;
                    d.delivered = status == 200;
                }
                Err(e) => {
                    d.last_status = None;
                    d.last_error = Some(e);
                }
            }
            d.finished = finished;
        }
    }

    pub(crate) fn webhook_deliveries(&self) -> &[WebhookDelivery] {
        &self.webhooks
    }

    /// Forgets the deliveries recorded (those still being sent go on, unrecorded).
    pub(crate) fn clear_webhook_deliveries(&mut self) {
        self.webhooks.clear();
        self.webhook_epoch += 1;
    }
}

fn bad_gateway() -> Reply {
    Reply {
        status: 502,
        content_type: "text/html",
        body: "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n\
               <center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
            .to_owned(),
        headers: Vec::new(),
    }
}

fn error_codes(reply: &Reply) -> Vec<String> {
    if reply.status < 400 || reply.content_type != "application/json" {
        return Vec::new();
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&reply.body) else {
        return Vec::new();
    };
    v.get("errors")
        .and_then(|e| e.as_array())
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e.get("code")?.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `now + d`, or a century from now when `d` is longer than an `Instant` can reach (a
/// duration given as "forever").
pub(crate) fn later(now: Instant, d: std::time::Duration) -> Instant {
    const CENTURY: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);
    now.checked_add(d.min(CENTURY)).unwrap_or(now)
}
