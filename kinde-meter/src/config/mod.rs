//! Reporter configuration: from the environment or built in code.

#[cfg(feature = "fleet")]
mod fleet;
#[cfg(feature = "fleet")]
pub(crate) use fleet::FleetSettings;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{self, Client, ClientBuilder, Credentials, Domain, InvalidDomain};
use crate::resolve::AgreementResolver;
use crate::usage::{MeterError, UnsentRecord};

/// What to do with a record whose delivery may or may not have been applied (a timeout
/// after sending, a 500/502/504, an unreadable success body).
///
/// Kinde documents no idempotency key, so no choice is free: resending may count the
/// usage twice, not resending may lose it.
// Defined here, not beside the outbox policy that applies it: `Config::delivery` takes it,
// and config sits below the reporter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// Resend it (the default). Kinde may count it twice; the value is counted in
    /// [`Stats::ambiguous`](crate::Stats::ambiguous) so the excess is known.
    #[default]
    AtLeastOnce,
    /// Do not resend it: hand it to the `on_unsent` hook (and
    /// [`Stats::unsent`](crate::Stats::unsent)) for reconciliation.
    AtMostOnce,
}

/// What to do with usage recorded for a customer when Kinde refuses it because the
/// agreement it was resolved to has ended (a plan change cancelled it).
///
/// The default re-resolves: the usage is the same customer's, and only the agreement
/// that carries it changed, so sending it to the agreement the customer has now bills
/// the right customer and loses nothing. Handing it back is for services that follow
/// Kinde's own "unpaid usage is forgiven on a plan change" to the letter, or reconcile
/// plan changes themselves. Usage recorded for an explicit agreement is never re-resolved:
/// it is rejected as before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AgreementEnded {
    /// Forget the customer's cached agreements and send the usage to the agreement it
    /// resolves to now (the default). Done at most a few times per record; past that it
    /// is handed back.
    #[default]
    Reresolve,
    /// Hand the record to `on_unsent` ([`UnsentReason::AgreementEnded`](crate::UnsentReason::AgreementEnded)).
    HandBack,
}

// The hook types sit with the rest of the configuration, where they are set; the reporter
// is what calls them (`reporter::shared` on callers' threads, `reporter::accounting` on its own).
/// The error hook: called with every usage that was refused, rejected or could not be
/// attributed. Runs on the caller's thread or the reporter's thread: keep it short.
pub type ErrorHook = Arc<dyn Fn(&MeterError) + Send + Sync>;
/// The unsent hook: called with records that will not be delivered (at shutdown, or
/// ambiguous records under [`Delivery::AtMostOnce`]). With a journal, a record can reach
/// it twice: a process that dies after calling it, before the journal says so, leaves the
/// record to the next start, which hands it back again. Keep records by idempotency key.
pub type UnsentHook = Arc<dyn Fn(&[UnsentRecord]) + Send + Sync>;

/// The variables [`Config::from_env`] reads, in order of precedence within each group.
pub mod env {
    /// The Kinde business domain, `acme.kinde.com` or `https://acme.kinde.com`.
    pub const DOMAIN: &str = "KINDE_DOMAIN";
    /// Client-credentials pairs, tried in this order.
    pub const CLIENT_PAIRS: [(&str, &str); 3] = [
        (
            "KINDE_MANAGEMENT_CLIENT_ID",
            "KINDE_MANAGEMENT_CLIENT_SECRET",
        ),
        ("KINDE_M2M_CLIENT_ID", "KINDE_M2M_CLIENT_SECRET"),
        ("KINDE_CLIENT_ID", "KINDE_CLIENT_SECRET"),
    ];
    /// A static access token, used when no client-credentials pair is set.
    pub const ACCESS_TOKEN: &str = "KINDE_ACCESS_TOKEN";
    /// The journal's directory ([`Config::journal`](super::Config::journal)); unset, no journal.
    pub const JOURNAL_DIR: &str = "KINDE_METER_JOURNAL_DIR";
    /// The journal's size limit in bytes ([`Config::journal_max_bytes`](super::Config::journal_max_bytes)).
    pub const JOURNAL_MAX_BYTES: &str = "KINDE_METER_JOURNAL_MAX_BYTES";
    /// The fleet's Redis ([`Config::fleet`](super::Config), feature `fleet`); unset, no fleet.
    pub const REDIS_URL: &str = "KINDE_METER_REDIS_URL";
}

/// A configuration problem, naming the variable or option at fault and how to fix it.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// A required environment variable is not set.
    Missing {
        /// The variable.
        var: &'static str,
        /// What to set.
        hint: &'static str,
    },
    /// An environment variable is set but unusable.
    Malformed {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A static access token that cannot be sent in an `Authorization` header.
    InvalidAccessToken {
        /// What is wrong with it (the token itself is never shown).
        reason: &'static str,
    },
    /// `http://` for a host that is not loopback.
    InsecureHttp {
        /// The domain.
        domain: String,
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
        source: api::BoxError,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Missing { var, hint } => write!(f, "{var} is not set: {hint}"),
            ConfigError::Malformed { var, reason } => write!(f, "{var} is malformed: {reason}"),
            ConfigError::InvalidAccessToken { reason } => write!(
                f,
                "the access token cannot be sent: {reason}; check the token given to \
                 `Credentials::access_token` (KINDE_ACCESS_TOKEN when read from the environment)"
            ),
            ConfigError::InsecureHttp { domain } => write!(
                f,
                "{domain} uses plain http for a host that is not loopback, which would send access tokens \
                 unencrypted; use https:// (or allow it explicitly with `allow_http(true)` for a trusted proxy)"
            ),
            ConfigError::InvalidOption { option, reason } => write!(f, "`{option}` {reason}"),
            ConfigError::Http { source } => write!(f, "could not build the HTTP client: {source}"),
        }
    }
}

/// The client's own checks, under the names `Config` uses for the same options.
impl From<api::BuildError> for ConfigError {
    fn from(e: api::BuildError) -> Self {
        match e {
            api::BuildError::InsecureHttp { domain } => ConfigError::InsecureHttp { domain },
            api::BuildError::InvalidAccessToken { reason } => {
                ConfigError::InvalidAccessToken { reason }
            }
            api::BuildError::InvalidOption { option, reason } => {
                ConfigError::InvalidOption { option, reason }
            }
            api::BuildError::Http { source } => ConfigError::Http { source },
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Http { source } => Some(&**source),
            _ => None,
        }
    }
}

/// Everything the reporter needs: where Kinde is, how to authenticate, and how to
/// aggregate and deliver. Build it with [`Config::new`] or [`Config::from_env`], then
/// adjust with the setters.
///
/// ```
/// use std::time::Duration;
/// use kinde_meter::{api::{Credentials, Domain}, Config, Delivery};
///
/// let config = Config::new(
///     Domain::parse("acme.kinde.com")?,
///     Credentials::client_credentials("client-id", "client-secret"),
/// )
/// .flush_interval(Duration::from_secs(2))
/// .delivery(Delivery::AtMostOnce)
/// .on_error(|e| eprintln!("billing: {e}"));
/// assert!(!format!("{config:?}").contains("client-secret"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Config {
    /// Where Kinde is and how to reach it: the client's own settings, not copies of them.
    pub(crate) client: ClientBuilder,
    pub(crate) flush_interval: Duration,
    pub(crate) max_pending_keys: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) requests_per_second: f64,
    pub(crate) delivery: Delivery,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) coalesce_window: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) on_error: Option<ErrorHook>,
    pub(crate) on_unsent: Option<UnsentHook>,
    pub(crate) journal_dir: Option<PathBuf>,
    pub(crate) journal_max_bytes: u64,
    pub(crate) resolver: Option<Arc<dyn AgreementResolver>>,
    pub(crate) agreement_ended: AgreementEnded,
    pub(crate) resolver_ttl: Duration,
    pub(crate) resolver_negative_ttl: Duration,
    pub(crate) resolver_max_customers: usize,
    #[cfg(feature = "fleet")]
    pub(crate) fleet: Option<FleetSettings>,
    /// The journal's file system, replaced by the journal's fault tests.
    #[cfg(test)]
    pub(crate) journal_fs: Option<Arc<dyn crate::journal::fs::Fs>>,
}

/// The range each option must lie in (inclusive): `init` refuses anything outside,
/// naming the option. Wide enough for any real use, narrow enough that no arithmetic on
/// them can overflow.
pub mod limits {
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);
    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(86_400);

    /// `flush_interval`: 100 ms to 1 h.
    pub const FLUSH_INTERVAL: (Duration, Duration) = (Duration::from_millis(100), HOUR);
    /// `connect_timeout` and `request_timeout`: 1 ms to 1 h.
    pub const TIMEOUT: (Duration, Duration) = (MS, HOUR);
    /// `shutdown_timeout`: zero (hand everything back at once) to 1 day.
    pub const SHUTDOWN_TIMEOUT: (Duration, Duration) = (Duration::ZERO, DAY);
    /// `coalesce_window`: 1 s to 31 days.
    pub const COALESCE_WINDOW: (Duration, Duration) = (SEC, Duration::from_secs(31 * 86_400));
    /// Both `backoff` delays: 1 ms to 1 h.
    pub const BACKOFF: (Duration, Duration) = (MS, HOUR);
    /// `max_pending_keys`: 1 to 10 million.
    pub const MAX_PENDING_KEYS: (usize, usize) = (1, 10_000_000);
    /// `max_in_flight`: 1 to 1,024.
    pub const MAX_IN_FLIGHT: (usize, usize) = (1, 1024);
    /// `requests_per_second`: one per 100 s to 100,000.
    pub const REQUESTS_PER_SECOND: (f64, f64) = (0.01, 100_000.0);
    /// `journal_max_bytes`: 64 KiB to 1 TiB.
    pub const JOURNAL_MAX_BYTES: (u64, u64) = (crate::journal::MIN_BYTES, 1 << 40);
    /// `resolver_cache` time to live: 1 s to 1 day.
    pub const RESOLVER_TTL: (Duration, Duration) = (SEC, DAY);
    /// `resolver_cache` negative time to live: 1 s to 1 h.
    pub const RESOLVER_NEGATIVE_TTL: (Duration, Duration) = (SEC, HOUR);
    /// `resolver_max_customers`: 1 to 10 million.
    pub const RESOLVER_MAX_CUSTOMERS: (usize, usize) = (1, 10_000_000);
}

/// Defaults, also listed in the README's configuration table.
pub mod defaults {
    use std::time::Duration;

    /// How often usage is flushed.
    pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
    /// Distinct keys (agreement, feature, meter type) pending at once.
    pub const MAX_PENDING_KEYS: usize = 10_000;
    /// Requests in flight at once.
    pub const MAX_IN_FLIGHT: usize = 4;
    /// Client-side rate limit.
    pub const REQUESTS_PER_SECOND: f64 = 20.0;
    /// Time `shutdown` (and dropping the guard) may take.
    pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
    /// Waiting records of one key merge only within one such window.
    pub const COALESCE_WINDOW: Duration = Duration::from_secs(3600);
    /// First retry delay (full jitter: a random delay up to this).
    pub const BACKOFF_INITIAL: Duration = Duration::from_millis(250);
    /// Longest retry delay.
    pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
    /// The journal's size limit: 64 MiB, some 400,000 waiting records.
    pub const JOURNAL_MAX_BYTES: u64 = 64 * 1024 * 1024;
    /// How long a customer's agreements are used before they are asked for again (and
    /// as long again served stale while a refresh runs).
    pub const RESOLVER_TTL: Duration = Duration::from_secs(300);
    /// How long "this customer has no billing" is believed.
    pub const RESOLVER_NEGATIVE_TTL: Duration = Duration::from_secs(30);
    /// Customers whose agreements are held at once.
    pub const RESOLVER_MAX_CUSTOMERS: usize = 10_000;
}

/// `Ok` if `value` lies in `min..=max` (NaN does not), else an error naming `option`.
fn within<T: PartialOrd + fmt::Debug>(
    option: &'static str,
    value: T,
    (min, max): (T, T),
) -> Result<(), ConfigError> {
    if value >= min && value <= max {
        return Ok(());
    }
    Err(ConfigError::InvalidOption {
        option,
        reason: format!("must be between {min:?} and {max:?} (got {value:?})"),
    })
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("client", &self.client)
            .field("flush_interval", &self.flush_interval)
            .field("max_pending_keys", &self.max_pending_keys)
            .field("max_in_flight", &self.max_in_flight)
            .field("requests_per_second", &self.requests_per_second)
            .field("delivery", &self.delivery)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("coalesce_window", &self.coalesce_window)
            .field("on_error", &self.on_error.is_some())
            .field("on_unsent", &self.on_unsent.is_some())
            .field("journal_dir", &self.journal_dir)
            .field("resolver", &self.resolver.is_some())
            .field("agreement_ended", &self.agreement_ended)
            .field("resolver_ttl", &self.resolver_ttl)
            .field("journal_max_bytes", &self.journal_max_bytes)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A configuration with every default.
    pub fn new(domain: Domain, credentials: Credentials) -> Self {
        Self {
            client: Client::builder(domain, credentials),
            flush_interval: defaults::FLUSH_INTERVAL,
            max_pending_keys: defaults::MAX_PENDING_KEYS,
            max_in_flight: defaults::MAX_IN_FLIGHT,
            requests_per_second: defaults::REQUESTS_PER_SECOND,
            delivery: Delivery::default(),
            shutdown_timeout: defaults::SHUTDOWN_TIMEOUT,
            coalesce_window: defaults::COALESCE_WINDOW,
            backoff_initial: defaults::BACKOFF_INITIAL,
            backoff_max: defaults::BACKOFF_MAX,
            on_error: None,
            on_unsent: None,
            journal_dir: None,
            journal_max_bytes: defaults::JOURNAL_MAX_BYTES,
            resolver: None,
            agreement_ended: AgreementEnded::default(),
            resolver_ttl: defaults::RESOLVER_TTL,
            resolver_negative_ttl: defaults::RESOLVER_NEGATIVE_TTL,
            resolver_max_customers: defaults::RESOLVER_MAX_CUSTOMERS,
            #[cfg(feature = "fleet")]
            fleet: None,
            #[cfg(test)]
            journal_fs: None,
        }
    }

    /// Reads `KINDE_DOMAIN` and credentials from the environment:
    /// `KINDE_MANAGEMENT_CLIENT_ID`/`KINDE_MANAGEMENT_CLIENT_SECRET`, falling back to
    /// `KINDE_M2M_*`, then `KINDE_CLIENT_*`, or else a static `KINDE_ACCESS_TOKEN`.
    /// The error names the variable that is missing or malformed.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_env_with(|name| std::env::var(name).ok())
    }

    /// Like [`Config::from_env`], reading variables through `lookup` (a secrets store,
    /// a `.env` map, a test table). `lookup` returns `None` for unset variables. Values
    /// are trimmed, and an empty value counts as unset.
    ///
    /// ```
    /// use kinde_meter::Config;
    ///
    /// let vars = [("KINDE_DOMAIN", "acme.kinde.com"), ("KINDE_MANAGEMENT_CLIENT_ID", "id")];
    /// let lookup = |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
    /// let err = Config::from_env_with(lookup).unwrap_err();
    /// assert!(err.to_string().starts_with("KINDE_MANAGEMENT_CLIENT_SECRET is not set"));
    /// ```
    pub fn from_env_with(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        // An empty variable counts as unset: shells and .env files produce them often.
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let raw_domain = get(env::DOMAIN).ok_or(ConfigError::Missing {
            var: env::DOMAIN,
            hint: "set it to your Kinde business domain, like `acme.kinde.com`",
        })?;
        let domain =
            Domain::parse(&raw_domain).map_err(|e: InvalidDomain| ConfigError::Malformed {
                var: env::DOMAIN,
                reason: e.to_string(),
            })?;
        let mut credentials = None;
        for (id_var, secret_var) in env::CLIENT_PAIRS {
            match (get(id_var), get(secret_var)) {
                (Some(id), Some(secret)) => {
                    // Trimmed like the id and the token: a secret read from a file or a
                    // secret store often keeps its final newline, which Kinde would refuse.
                    credentials = Some(Credentials::client_credentials(id.trim(), secret.trim()));
                    break;
                }
                (Some(_), None) => {
                    return Err(ConfigError::Missing {
                        var: secret_var,
                        hint: "the client id is set, so its secret must be set too",
                    });
                }
                (None, Some(_)) => {
                    return Err(ConfigError::Missing {
                        var: id_var,
                        hint: "the client secret is set, so its id must be set too",
                    });
                }
                (None, None) => {}
            }
        }
        let credentials = match (credentials, get(env::ACCESS_TOKEN)) {
            (Some(c), _) => c,
            (None, Some(token)) => {
                let token = token.trim();
                // The rule the client applies, checked here to name the variable.
                if let Err(reason) = api::authorization(token) {
                    return Err(ConfigError::Malformed {
                        var: env::ACCESS_TOKEN,
                        reason: reason.to_owned(),
                    });
                }
                Credentials::access_token(token)
            }
            (None, None) => {
                return Err(ConfigError::Missing {
                    var: "KINDE_MANAGEMENT_CLIENT_ID",
                    hint: "set KINDE_MANAGEMENT_CLIENT_ID and KINDE_MANAGEMENT_CLIENT_SECRET (or the KINDE_M2M_* or \
                           KINDE_CLIENT_* pair), or KINDE_ACCESS_TOKEN",
                });
            }
        };
        let mut config = Self::new(domain, credentials);
        if let Some(dir) = get(env::JOURNAL_DIR) {
            config = config.journal(dir.trim());
        }
        if let Some(raw) = get(env::JOURNAL_MAX_BYTES) {
            let (min, max) = limits::JOURNAL_MAX_BYTES;
            let bytes = raw
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|b| (min..=max).contains(b))
                .ok_or_else(|| ConfigError::Malformed {
                    var: env::JOURNAL_MAX_BYTES,
                    reason: format!("must be a number of bytes from {min} to {max} (got {raw:?})"),
                })?;
            config = config.journal_max_bytes(bytes);
        }
        if let Some(url) = get(env::REDIS_URL) {
            #[cfg(feature = "fleet")]
            {
                let mut settings = FleetSettings::new(url.trim().to_owned());
                settings.source = env::REDIS_URL;
                config.fleet = Some(settings);
            }
            #[cfg(not(feature = "fleet"))]
            {
                let _ = url;
                return Err(ConfigError::Malformed {
                    var: env::REDIS_URL,
                    reason:
                        "is set, but kinde-meter was built without its `fleet` feature: enable it \
                             (`kinde-meter = { features = [\"fleet\"] }`) or unset the variable"
                            .to_owned(),
                });
            }
        }
        Ok(config)
    }

    /// Accept `http://` for a host that is not loopback (default `false`).
    #[must_use]
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.client = self.client.allow_http(allow);
        self
    }

    /// Time allowed to open a connection (default 3 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.client = self.client.connect_timeout(timeout);
        self
    }

    /// Time allowed per request, token included (default 10 s).
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.client = self.client.request_timeout(timeout);
        self
    }

    /// How often aggregated usage is flushed and sent (default 5 s, at least 100 ms).
    #[must_use]
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// Distinct keys (agreement, feature, meter type) that may be pending at once,
    /// counting records waiting for a retry (default 10,000). Past half of it the
    /// reporter flushes early; at the bound, usage for a new key is refused and reported.
    #[must_use]
    pub fn max_pending_keys(mut self, max: usize) -> Self {
        self.max_pending_keys = max;
        self
    }

    /// Requests in flight at once (default 4). Halved while Kinde throttles.
    #[must_use]
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max;
        self
    }

    /// Client-side rate limit in requests per second (default 20).
    #[must_use]
    pub fn requests_per_second(mut self, rate: f64) -> Self {
        self.requests_per_second = rate;
        self
    }

    /// What to do with records that may have been applied (default at-least-once).
    #[must_use]
    pub fn delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }

    /// Time that shutting down (and dropping the guard) may take (default 10 s).
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Waiting records of one key are merged only within windows of this length, so
    /// usage never moves across a billing-period boundary by more than this (default 1 h).
    #[must_use]
    pub fn coalesce_window(mut self, window: Duration) -> Self {
        self.coalesce_window = window;
        self
    }

    /// Retry delays: a random delay up to `initial × 2^attempt`, capped at `max`
    /// (defaults 250 ms and 30 s).
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// Called with every usage that was refused, rejected or could not be attributed.
    #[must_use]
    pub fn on_error(mut self, hook: impl Fn(&MeterError) + Send + Sync + 'static) -> Self {
        self.on_error = Some(Arc::new(hook));
        self
    }

    /// Called with records that will not be delivered, so they can be kept elsewhere.
    #[must_use]
    pub fn on_unsent(mut self, hook: impl Fn(&[UnsentRecord]) + Send + Sync + 'static) -> Self {
        self.on_unsent = Some(Arc::new(hook));
        self
    }

    /// Keeps usage in a durable journal in `dir` (created if absent), so a crash, a kill
    /// or a deploy loses at most the open window (default: no journal; the variable
    /// `KINDE_METER_JOURNAL_DIR` sets it too).
    ///
    /// Each closed window is written and synced before it is sent, and each attempt's
    /// start before its request leaves; the next start on the same directory delivers
    /// what a dead process left, with its timestamps and idempotency keys. Processes may
    /// share a directory: each writes its own run, and never delivers another live one's.
    /// With a journal, `flush` returns once the window it closed is on disk.
    ///
    /// ```
    /// # use kinde_meter::{Config, api::{Credentials, Domain}};
    /// let config = Config::new(Domain::parse("acme.kinde.com")?, Credentials::access_token("t"))
    ///     .journal("/var/lib/my-service/kinde-meter")
    ///     .journal_max_bytes(256 * 1024 * 1024);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn journal(mut self, dir: impl Into<PathBuf>) -> Self {
        self.journal_dir = Some(dir.into());
        self
    }

    /// The most the journal holds (default 64 MiB; 64 KiB to 1 TiB). When usage waits
    /// that long (delivery failing), new windows are kept in memory only, and said so:
    /// [`Stats::not_durable`](crate::Stats::not_durable), the error hook and a log line.
    #[must_use]
    pub fn journal_max_bytes(mut self, bytes: u64) -> Self {
        self.journal_max_bytes = bytes;
        self
    }

    /// Who answers a customer's agreements, for usage recorded in a customer scope
    /// ([`with_customer`](crate::with_customer), `#[meter(customer = ...)]`). The default
    /// asks Kinde ([`KindeResolver`](crate::resolve::KindeResolver), through the
    /// reporter's client: scopes `read:organizations`, `read:users` and
    /// `read:billing_agreements`); a reporter started with its own sink has no default,
    /// and hands such usage back. Answers are cached ([`Config::resolver_cache`]).
    ///
    /// ```
    /// # use kinde_meter::{Config, Customer, api::{Credentials, Domain}, resolve::StaticResolver};
    /// let resolver = StaticResolver::new();
    /// resolver.set(Customer::org("org_acme")?, "agreement_acme".parse()?, ["api_calls".parse()?]);
    /// let config = Config::new(Domain::parse("acme.kinde.com")?, Credentials::access_token("t"))
    ///     .resolver(resolver);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn resolver(mut self, resolver: impl AgreementResolver) -> Self {
        self.resolver = Some(Arc::new(resolver));
        self
    }

    /// How long a customer's agreements are used before being asked for again (default
    /// 5 min, 1 s to 1 day; as long again they are served while a refresh runs), and how
    /// long a customer with no billing is believed to have none (default 30 s, 1 s to
    /// 1 h). A billing webhook ([`billing_changed`](crate::billing_changed)) or an
    /// agreement Kinde says has ended forgets them at once.
    #[must_use]
    pub fn resolver_cache(mut self, ttl: Duration, negative_ttl: Duration) -> Self {
        self.resolver_ttl = ttl;
        self.resolver_negative_ttl = negative_ttl;
        self
    }

    /// Customers whose agreements are held at once (default 10,000; 1 to 10 million).
    #[must_use]
    pub fn resolver_max_customers(mut self, max: usize) -> Self {
        self.resolver_max_customers = max;
        self
    }

    /// What happens to a customer's usage when the agreement it was resolved to has
    /// ended (default [`AgreementEnded::Reresolve`]).
    #[must_use]
    pub fn agreement_ended(mut self, policy: AgreementEnded) -> Self {
        self.agreement_ended = policy;
        self
    }

    /// The file system the journal writes through, for fault tests.
    #[cfg(test)]
    pub(crate) fn journal_fs(mut self, fs: Arc<dyn crate::journal::fs::Fs>) -> Self {
        self.journal_fs = Some(fs);
        self
    }

    /// Fleet mode (feature `fleet`): hand each window's records to the Redis at `url`
    /// (`redis://[:password@]host[:port][/db]`), from which deliverers send one request
    /// per key and coalescing bucket for the whole fleet (`KINDE_METER_REDIS_URL` sets it
    /// too). See [`fleet`](crate::fleet) and the README's "Running a fleet".
    ///
    /// A replica hands off at least once whatever [`Config::delivery`] says (Redis drops a
    /// second hand-off of a record); `delivery`, `max_in_flight` and
    /// `requests_per_second` then apply to the deliverers, for the whole fleet.
    #[cfg(feature = "fleet")]
    #[must_use]
    pub fn fleet(mut self, url: impl Into<String>) -> Self {
        self.fleet = Some(FleetSettings::new(url.into()));
        self
    }

    /// The fleet's name in Redis, so that several fleets can share one server (default
    /// `kinde-meter`; ASCII letters, digits, `_`, `-`, `.`). Every replica and deliverer
    /// of a fleet must use the same.
    #[cfg(feature = "fleet")]
    #[must_use]
    pub fn fleet_namespace(mut self, namespace: impl Into<String>) -> Self {
        if let Some(fleet) = &mut self.fleet {
            fleet.namespace = namespace.into();
        }
        self
    }

    /// How long a deliverer owns what it claimed (default 60 s, at least
    /// `request_timeout` + 1 s). A deliverer that dies mid-send loses its claim after this,
    /// and the send counts as ambiguous.
    #[cfg(feature = "fleet")]
    #[must_use]
    pub fn fleet_lease(mut self, lease: Duration) -> Self {
        if let Some(fleet) = &mut self.fleet {
            fleet.lease = lease;
        }
        self
    }

    /// How long an entry waits after its first hand-off before it may be claimed, so that
    /// every replica's window joins one request (default: `flush_interval`).
    #[cfg(feature = "fleet")]
    #[must_use]
    pub fn fleet_gather(mut self, gather: Duration) -> Self {
        if let Some(fleet) = &mut self.fleet {
            fleet.gather = Some(gather);
        }
        self
    }

    /// How long Redis keeps a hand-off's marker when its replica does not remove it
    /// (default 24 h). A replica removes the markers of acknowledged hand-offs after a
    /// minute (a quarter of this, if less); the rest belong to hand-offs whose reply was
    /// lost with their process. The journal of such a process must be replayed (the
    /// replica restarted on it) within this time, or the replay counts those hand-offs
    /// twice.
    #[cfg(feature = "fleet")]
    #[must_use]
    pub fn fleet_marker_ttl(mut self, ttl: Duration) -> Self {
        if let Some(fleet) = &mut self.fleet {
            fleet.marker_ttl = ttl;
        }
        self
    }

    /// Whether this replica also delivers (default `true`). Set `false` when dedicated
    /// `kinde-meter deliver` processes do.
    #[cfg(feature = "fleet")]
    #[must_use]
    pub fn fleet_deliverer(mut self, deliver: bool) -> Self {
        if let Some(fleet) = &mut self.fleet {
            fleet.deliver = deliver;
        }
        self
    }

    /// The fleet options, checked.
    #[cfg(feature = "fleet")]
    pub(crate) fn fleet_settings(&self) -> Result<FleetSettings, ConfigError> {
        let fleet = self.fleet.clone().ok_or(ConfigError::Missing {
            var: env::REDIS_URL,
            hint: "fleet mode needs a Redis: call `Config::fleet(url)` or set KINDE_METER_REDIS_URL",
        })?;
        fleet.validate(self.client.request_timeout)?;
        Ok(fleet)
    }

    /// The domain usage is sent to.
    pub fn domain(&self) -> &Domain {
        self.client.domain()
    }

    /// Checks every option against the range in [`limits`]; `init` calls this.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        use limits::*;
        within("flush_interval", self.flush_interval, FLUSH_INTERVAL)?;
        within("connect_timeout", self.client.connect_timeout, TIMEOUT)?;
        within("request_timeout", self.client.request_timeout, TIMEOUT)?;
        within("shutdown_timeout", self.shutdown_timeout, SHUTDOWN_TIMEOUT)?;
        within("coalesce_window", self.coalesce_window, COALESCE_WINDOW)?;
        within("backoff", self.backoff_initial, BACKOFF)?;
        within("backoff", self.backoff_max, BACKOFF)?;
        if self.backoff_max < self.backoff_initial {
            return Err(ConfigError::InvalidOption {
                option: "backoff",
                reason: "needs initial <= max".to_owned(),
            });
        }
        within("max_pending_keys", self.max_pending_keys, MAX_PENDING_KEYS)?;
        within("max_in_flight", self.max_in_flight, MAX_IN_FLIGHT)?;
        // NaN compares false both ways, so it fails here too.
        within(
            "requests_per_second",
            self.requests_per_second,
            REQUESTS_PER_SECOND,
        )?;
        within(
            "journal_max_bytes",
            self.journal_max_bytes,
            JOURNAL_MAX_BYTES,
        )?;
        within("resolver_cache", self.resolver_ttl, RESOLVER_TTL)?;
        within(
            "resolver_cache",
            self.resolver_negative_ttl,
            RESOLVER_NEGATIVE_TTL,
        )?;
        within(
            "resolver_max_customers",
            self.resolver_max_customers,
            RESOLVER_MAX_CUSTOMERS,
        )?;
        #[cfg(feature = "fleet")]
        if let Some(fleet) = &self.fleet {
            fleet.validate(self.client.request_timeout)?;
        }
        Ok(())
    }

    /// Builds the API client these settings describe.
    pub fn client(&self) -> Result<Client, ConfigError> {
        self.client.clone().build().map_err(ConfigError::from)
    }
}
