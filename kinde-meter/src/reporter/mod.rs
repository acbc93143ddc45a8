//! The reporter: aggregates usage in memory and delivers it to Kinde in the background.
//!
//! - [`record`], [`record_for`] and `#[meter]` add usage to pre-aggregated cells of the
//!   global reporter. That works before [`init`]: usage waits for the reporter to start.
//! - [`init`] starts the global reporter's worker and returns a [`Guard`]; dropping the
//!   guard (or [`Guard::shutdown`]) flushes what is left within a deadline.
//! - [`Reporter::start`] runs a reporter of its own, fed only through
//!   [`Reporter::record_for`], for libraries and tests that must not touch the global one;
//!   [`Reporter::start_with_sink`] delivers through a [`Sink`] of your own.

mod accounting;
mod cells;
mod dispatch;
mod events;
pub(crate) mod local;
mod outbox;
mod shared;
mod worker;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub(crate) use self::cells::AgreementRef;
use self::dispatch::Resolution;
pub use self::events::{FlushReport, ShutdownReport, Stats};
use self::shared::BillingChange;
use self::shared::{CallProblem, Shared};
use self::worker::{Command, Reply, Settings, Worker};
use crate::api::{
    AgreementId, Customer, CustomerId, FeatureCode, MeterType, OrgCode, UserId, deadline_after,
};
#[cfg(feature = "fleet")]
use crate::config::Delivery;
use crate::config::{Config, ConfigError, defaults};
use crate::context::with_current;
use crate::resolve::{CacheSettings, Cached};
pub use crate::sink::{KindeSink, SendResult, Sink};
// Named here for `__private` and `testing::capture`, which take it from the reporter.
pub use crate::usage::InvalidValue;

/// The global reporter's cells and counters. They exist from the first recorded call, so
/// usage recorded before [`init`] is kept.
static GLOBAL: LazyLock<Arc<Shared>> =
    LazyLock::new(|| Arc::new(Shared::global(defaults::MAX_PENDING_KEYS)));

/// The global reporter's state: [`IDLE`], [`RUNNING`] or [`STOPPING`]. Set back to idle by
/// the worker itself once it has shut down, so a caller that stops waiting for
/// `shutdown` (a `select!`, a timeout) does not keep it taken.
static GLOBAL_STATE: AtomicU8 = AtomicU8::new(IDLE);
const IDLE: u8 = 0;
const RUNNING: u8 = 1;
const STOPPING: u8 = 2;

/// Whether a call succeeded, for `#[meter(on = "ok")]`.
///
/// Implemented for `Result` (`Ok`) and `Option` (`Some`); implement it for your own
/// return types.
///
/// ```
/// enum Reply { Done, Failed }
///
/// impl kinde_meter::Outcome for Reply {
///     fn is_success(&self) -> bool {
///         matches!(self, Reply::Done)
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`#[meter(on = \"ok\")]` needs a return type that implements `kinde_meter::Outcome`; `{Self}` does not",
    label = "this return type does not say whether the call succeeded",
    note = "`Outcome` is implemented for `Result` and `Option`; implement it for `{Self}`, or use `on = \"return\"`"
)]
pub trait Outcome {
    /// Whether the call succeeded (and its usage should be billed).
    fn is_success(&self) -> bool;
}

impl<T, E> Outcome for Result<T, E> {
    fn is_success(&self) -> bool {
        self.is_ok()
    }
}

impl<T> Outcome for Option<T> {
    fn is_success(&self) -> bool {
        self.is_some()
    }
}

/// A usage value and how Kinde applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Usage {
    /// Added to the current usage (summed in memory before sending).
    Delta(u64),
    /// Replaces the current usage (last write wins).
    Absolute(u64),
}

impl Usage {
    fn parts(self) -> (MeterType, u64) {
        match self {
            Usage::Delta(v) => (MeterType::Delta, v),
            Usage::Absolute(v) => (MeterType::Absolute, v),
        }
    }
}

impl From<u64> for Usage {
    fn from(value: u64) -> Self {
        Usage::Delta(value)
    }
}

/// Records `value` units of `feature` for the current agreement (see
/// [`with_agreement`](crate::with_agreement)), as `#[meter]` does.
///
/// Never blocks, allocates or fails on the steady path. Usage with no agreement in scope
/// is counted in [`Stats::unattributed`] and reported, never sent; a feature code that is
/// not valid is refused and reported the same way.
///
/// ```
/// use kinde_meter::{enter_agreement, record};
///
/// let _scope = enter_agreement("agreement_acme".parse()?);
/// record("api_calls", 3);
/// # Ok::<(), kinde_meter::api::InvalidInput>(())
/// ```
#[inline]
pub fn record(feature: &'static str, value: u64) {
    record_current(
        &FeatureCode::unchecked_static(feature),
        MeterType::Delta,
        value,
    );
}

/// Records usage for an explicit agreement, delta or absolute.
///
/// ```
/// use kinde_meter::{record_for, AgreementId, FeatureCode, Usage};
///
/// let acme: AgreementId = "agreement_acme".parse()?;
/// let seats = FeatureCode::new("seats")?;
/// record_for(&acme, &seats, Usage::Absolute(12));
/// record_for(&acme, &FeatureCode::from_static("api_calls"), 1);
/// # Ok::<(), kinde_meter::api::InvalidInput>(())
/// ```
#[inline]
pub fn record_for(agreement: &AgreementId, feature: &FeatureCode, usage: impl Into<Usage>) {
    let (meter_type, value) = usage.into().parts();
    record_explicit(agreement, feature, meter_type, value);
}

/// Records usage for a customer, resolved to its agreement when its window closes (see
/// [`with_customer`](crate::with_customer)). Builds the customer's key on each call (an
/// allocation); a customer scope builds it once.
///
/// ```
/// use kinde_meter::{record_for_customer, Customer, FeatureCode, Usage};
///
/// let acme = Customer::org("org_acme")?;
/// record_for_customer(&acme, &FeatureCode::from_static("api_calls"), Usage::Delta(3));
/// # Ok::<(), kinde_meter::api::InvalidInput>(())
/// ```
pub fn record_for_customer(customer: &Customer, feature: &FeatureCode, usage: impl Into<Usage>) {
    record_for(&AgreementId::for_customer(customer), feature, usage);
}

/// The global reporter's counters.
pub fn stats() -> Stats {
    GLOBAL.stats()
}

/// Tells the global reporter that a customer's billing changed (a plan changed, an
/// agreement was created or cancelled): its pending usage is sent at once, to the
/// agreement it was recorded under, and its cached agreements are forgotten, so usage
/// from now on is resolved afresh. What a billing webhook handler calls
/// ([`webhooks`](crate::webhooks) does). Name the customer any way you know it; returns
/// `false` when no reporter runs.
///
/// ```
/// let customer: kinde_meter::api::CustomerId = "customer_0195ac80a14c2ca2cec97d026d864de0".parse()?;
/// assert!(!kinde_meter::billing_changed(Some(&customer), None, None));
/// # Ok::<(), kinde_meter::api::InvalidInput>(())
/// ```
pub fn billing_changed(
    customer: Option<&CustomerId>,
    org: Option<&OrgCode>,
    user: Option<&UserId>,
) -> bool {
    GLOBAL.billing_changed(billing_change(customer, org, user))
}

fn billing_change(
    customer: Option<&CustomerId>,
    org: Option<&OrgCode>,
    user: Option<&UserId>,
) -> BillingChange {
    let mut named = Vec::new();
    named.extend(customer.map(|id| Customer::Id(id.clone())));
    named.extend(org.map(|code| Customer::Org(code.clone())));
    named.extend(user.map(|id| Customer::User(id.clone())));
    BillingChange {
        customer_id: customer.cloned(),
        named,
    }
}

/// The path of `record` and `#[meter]` without an explicit agreement.
#[inline(always)]
pub(crate) fn record_current(feature: &FeatureCode, meter_type: MeterType, value: u64) {
    if let Some(recorder) = local::current() {
        return with_current(|found| {
            recorder.record(
                found.agreement.map(AgreementRef::Id),
                feature,
                meter_type,
                value,
            )
        });
    }
    let added = with_current(|found| match found.agreement {
        Some(id) => match cells::record_cached(cells::GLOBAL_ID, id, feature, meter_type, value) {
            cells::Lookup::Hit => Ok(()),
            miss => record_in_global_table(AgreementRef::Id(id), feature, meter_type, value, miss),
        },
        None => Err(CallProblem::Unattributed {
            hidden: found.hidden,
        }),
    });
    // Reported after the lookup: hooks and logs are user code, and see the scopes whole.
    if let Err(problem) = added {
        GLOBAL.report(problem, feature, meter_type, value);
    }
}

/// The path of `record_for` and `#[meter(agreement = ...)]` (an id or a string, validated
/// when its key is first seen).
#[inline(always)]
pub(crate) fn record_explicit<'a, A: cells::ProbeAgreement + Into<AgreementRef<'a>>>(
    agreement: A,
    feature: &FeatureCode,
    meter_type: MeterType,
    value: u64,
) {
    if let Some(recorder) = local::current() {
        return recorder.record(Some(agreement.into()), feature, meter_type, value);
    }
    let added = match cells::record_cached(cells::GLOBAL_ID, agreement, feature, meter_type, value)
    {
        cells::Lookup::Hit => Ok(()),
        miss => record_in_global_table(agreement.into(), feature, meter_type, value, miss),
    };
    if let Err(problem) = added {
        GLOBAL.report(problem, feature, meter_type, value);
    }
}

/// Adds to the global cells through their table (a cache miss). Reporting is the caller's:
/// it may be inside a scope lookup, where no user code may run.
#[cold]
#[inline(never)]
fn record_in_global_table(
    agreement: AgreementRef<'_>,
    feature: &FeatureCode,
    meter_type: MeterType,
    value: u64,
    miss: cells::Lookup,
) -> Result<(), CallProblem> {
    Ok(GLOBAL
        .registry
        .record_in_table(agreement, feature, meter_type, value, miss)?)
}

/// A `#[meter(value = ...)]` that cannot be billed.
#[cold]
pub(crate) fn record_invalid(feature: &FeatureCode, invalid: InvalidValue) {
    if let Some(recorder) = local::current() {
        return recorder.invalid(feature, &invalid);
    }
    GLOBAL.invalid_value(feature, invalid);
}

/// Why a reporter could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum InitError {
    /// The global reporter is already running.
    AlreadyInitialized,
    /// The global reporter is still shutting down (a `shutdown` whose caller stopped
    /// waiting goes on until its deadline).
    ShuttingDown,
    /// The configuration is invalid.
    Config(ConfigError),
    /// The worker thread or its runtime could not be started.
    Spawn(std::io::Error),
    /// The journal could not be opened.
    Journal(crate::journal::JournalError),
}

impl std::fmt::Display for InitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InitError::AlreadyInitialized => f.write_str(
                "the global kinde-meter reporter is already running; keep the guard the first `init` returned, or \
                 shut it down before calling `init` again",
            ),
            InitError::ShuttingDown => f.write_str(
                "the global kinde-meter reporter is still shutting down (within its shutdown deadline); call \
                 `init` again once it has finished",
            ),
            InitError::Config(e) => write!(f, "invalid kinde-meter configuration: {e}"),
            InitError::Spawn(e) => write!(f, "could not start the kinde-meter worker thread: {e}"),
            InitError::Journal(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for InitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            InitError::AlreadyInitialized | InitError::ShuttingDown => None,
            InitError::Config(e) => Some(e),
            InitError::Spawn(e) => Some(e),
            InitError::Journal(e) => Some(e),
        }
    }
}

impl From<ConfigError> for InitError {
    fn from(e: ConfigError) -> Self {
        InitError::Config(e)
    }
}

/// Starts the global reporter: the one `#[meter]`, [`record`] and [`record_for`] feed.
///
/// Returns a guard that shuts it down when dropped, delivering what is left within
/// [`Config::shutdown_timeout`]. A second `init` while it runs is an error.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let guard = kinde_meter::init(kinde_meter::Config::from_env()?)?;
/// // ... serve requests ...
/// let report = guard.shutdown_blocking(std::time::Duration::from_secs(5));
/// println!("{report}");
/// # Ok(()) }
/// ```
pub fn init(config: Config) -> Result<Guard, InitError> {
    match GLOBAL_STATE.compare_exchange(IDLE, RUNNING, Relaxed, Relaxed) {
        Ok(_) => {}
        Err(STOPPING) => return Err(InitError::ShuttingDown),
        Err(_) => return Err(InitError::AlreadyInitialized),
    }
    let release = || GLOBAL_STATE.store(IDLE, Relaxed);
    match Reporter::start_with(config, Arc::clone(&GLOBAL), Some(Box::new(release))) {
        Ok(reporter) => Ok(Guard {
            reporter: Some(reporter),
        }),
        Err(e) => {
            release();
            Err(e)
        }
    }
}

/// The running global reporter. Dropping it shuts the reporter down (blocking for at most
/// the configured shutdown timeout); [`Guard::shutdown`] does the same and returns the
/// report.
#[must_use = "dropping the guard shuts the reporter down at once"]
#[derive(Debug)]
pub struct Guard {
    reporter: Option<Reporter>,
}

impl Guard {
    fn reporter(&self) -> Option<&Reporter> {
        self.reporter.as_ref()
    }

    /// Closes the current window and delivers everything pending, waiting at most `timeout`.
    pub async fn flush(&self, timeout: Duration) -> FlushReport {
        match self.reporter() {
            Some(r) => r.flush(timeout).await,
            None => FlushReport {
                waiting: 0,
                timed_out: false,
                durable: true,
            },
        }
    }

    /// [`Guard::flush`] for sync code.
    pub fn flush_blocking(&self, timeout: Duration) -> FlushReport {
        match self.reporter() {
            Some(r) => r.flush_blocking(timeout),
            None => FlushReport {
                waiting: 0,
                timed_out: false,
                durable: true,
            },
        }
    }

    /// The global reporter's counters.
    pub fn stats(&self) -> Stats {
        stats()
    }

    /// Delivers what is pending within `timeout` and stops the reporter.
    ///
    /// Cancel-safe: if the caller stops waiting, the reporter still shuts down within
    /// `timeout` (handing what is left to `on_unsent`), and `init` works again after.
    pub async fn shutdown(mut self, timeout: Duration) -> ShutdownReport {
        match self.reporter.take() {
            Some(r) => r.shutdown(timeout).await,
            None => already_shut_down(),
        }
    }

    /// [`Guard::shutdown`] for sync code. Safe to call on any thread, inside or outside a
    /// runtime: it waits on the reporter's own thread.
    pub fn shutdown_blocking(mut self, timeout: Duration) -> ShutdownReport {
        match self.reporter.take() {
            Some(r) => r.shutdown_blocking(timeout),
            None => already_shut_down(),
        }
    }
}

fn already_shut_down() -> ShutdownReport {
    ShutdownReport {
        stats: stats(),
        left: Vec::new(),
        kept: Vec::new(),
        deadline_reached: false,
        failure: Some("the reporter was already shut down".to_owned()),
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Dropping the reporter shuts it down; its worker marks the global one idle.
        drop(self.reporter.take());
    }
}

/// A running reporter with cells of its own (not the global ones).
///
/// Fed only through [`Reporter::record_for`]: `#[meter]` and [`record`] always go to the
/// global reporter. Dropping it shuts it down like [`Guard`].
#[must_use = "dropping the reporter shuts it down at once"]
pub struct Reporter {
    shared: Arc<Shared>,
    /// Whether this is the global reporter (its shutdown moves `GLOBAL_STATE`).
    global: bool,
    commands: mpsc::UnboundedSender<Command>,
    thread: Option<std::thread::JoinHandle<()>>,
    shutdown_timeout: Duration,
    stopped: AtomicBool,
    /// Fleet mode: this replica's deliverer, held so that it stops when this does.
    #[cfg(feature = "fleet")]
    _deliverer: Option<crate::fleet::Deliverer>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("shared", &self.shared)
            .field("stopped", &self.stopped.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl Reporter {
    /// Starts a reporter that is not the global one, delivering to Kinde.
    pub fn start(config: Config) -> Result<Self, InitError> {
        let shared = Arc::new(Shared::new(config.max_pending_keys));
        Self::start_with(config, shared, None)
    }

    /// Starts a reporter that is not the global one, delivering through `sink` instead of
    /// Kinde's client (a wrapper around [`KindeSink`], or a sink of your own in tests).
    /// `config`'s connection options are not used; its policy (windows, retries, limits,
    /// delivery guarantee, hooks) applies as with [`Reporter::start`].
    pub fn start_with_sink(config: Config, sink: impl Sink) -> Result<Self, InitError> {
        config.validate()?;
        let shared = Arc::new(Shared::new(config.max_pending_keys));
        Self::start_sink(config, shared, sink, None)
    }

    /// `on_stop` runs once the worker has shut down (the global reporter's release).
    fn start_with(
        mut config: Config,
        shared: Arc<Shared>,
        on_stop: Option<Box<dyn FnOnce() + Send>>,
    ) -> Result<Self, InitError> {
        config.validate()?;
        let client = config.client()?;
        if config.resolver.is_none() {
            config.resolver = Some(Arc::new(crate::resolve::KindeResolver::new(client.clone())));
        }
        #[cfg(feature = "fleet")]
        if config.fleet.is_some() {
            let sink = crate::fleet::HandoffSink::new(&config)?;
            return Self::start_sink(config, shared, sink, on_stop);
        }
        let sink = KindeSink::new(client);
        Self::start_sink(config, shared, sink, on_stop)
    }

    fn start_sink<S: Sink>(
        config: Config,
        shared: Arc<Shared>,
        sink: S,
        on_stop: Option<Box<dyn FnOnce() + Send>>,
    ) -> Result<Self, InitError> {
        // In a fleet, `delivery` and the limits are the deliverers', for the whole fleet; a
        // replica's outbox hands off to Redis, where a second hand-off of a record is a
        // no-op, so it resends freely and is held back by no limit meant for Kinde.
        #[cfg(feature = "fleet")]
        let (deliverer, policy_config) = match &config.fleet {
            Some(fleet) => {
                let deliverer = if fleet.deliver {
                    Some(
                        crate::fleet::Deliverer::start(&config).map_err(|e| match e {
                            crate::fleet::StartError::Config(e) => InitError::Config(e),
                            crate::fleet::StartError::Spawn(e) => InitError::Spawn(e),
                        })?,
                    )
                } else {
                    None
                };
                let policy = config
                    .clone()
                    .delivery(Delivery::AtLeastOnce)
                    .max_in_flight(FLEET_HANDOFFS_IN_FLIGHT)
                    .requests_per_second(crate::config::limits::REQUESTS_PER_SECOND.1);
                (deliverer, policy)
            }
            None => (None, config.clone()),
        };
        #[cfg(not(feature = "fleet"))]
        let policy_config = &config;
        // Opened first: a journal that cannot be opened leaves the cells as they were
        // (after a shutdown, still reporting new usage as recorded after it).
        let journal = match &config.journal_dir {
            Some(dir) => Some(
                crate::journal::Journal::open(dir, config.journal_max_bytes, journal_fs(&config))
                    .map_err(InitError::Journal)?,
            ),
            None => None,
        };
        shared
            .registry
            .set_max_pending_keys(config.max_pending_keys);
        shared.registry.restart();
        shared.set_hooks(config.on_error.clone(), config.on_unsent.clone());
        let settings = Settings {
            journal,
            flush_interval: config.flush_interval,
            request_timeout: config.client.request_timeout,
            policy: outbox::Policy {
                delivery: policy_config.delivery,
                max_in_flight: policy_config.max_in_flight,
                requests_per_second: policy_config.requests_per_second,
                backoff_initial: config.backoff_initial,
                backoff_max: config.backoff_max,
                coalesce_secs: config.coalesce_window.as_secs().max(1),
            },
            resolution: Resolution {
                cache: config.resolver.clone().map(|resolver| {
                    Arc::new(Cached::new(
                        resolver,
                        CacheSettings {
                            ttl: config.resolver_ttl,
                            negative_ttl: config.resolver_negative_ttl,
                            stale_for: config.resolver_ttl,
                            max_customers: config.resolver_max_customers,
                            lookup_timeout: config.client.request_timeout,
                        },
                    ))
                }),
                agreement_ended: config.agreement_ended,
            },
        };
        let (commands, receiver) = mpsc::unbounded_channel();
        let (billing, billing_news) = mpsc::unbounded_channel();
        shared.set_billing(Some(billing));
        let global = on_stop.is_some();
        let mut worker = Worker::new(
            Arc::clone(&shared),
            Arc::new(sink),
            settings,
            receiver,
            billing_news,
        );
        if let Some(on_stop) = on_stop {
            worker.on_stop(on_stop);
        }
        let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("kinde-meter".to_owned())
            .spawn(move || {
                // Built on this thread, so it is also dropped here, never inside the
                // application's runtime.
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let _ = started_tx.send(Ok(()));
                        serve(&runtime, &mut worker);
                        // Not a plain drop, which waits for blocking tasks (a DNS lookup
                        // in `getaddrinfo`) without bound and would hold a
                        // `shutdown_blocking` past its deadline.
                        runtime.shutdown_background();
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                    }
                }
                drop(worker);
            })
            .map_err(InitError::Spawn)?;
        match started_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(InitError::Spawn(e)),
            Err(_) => {
                return Err(InitError::Spawn(std::io::Error::other(
                    "the worker thread exited at start",
                )));
            }
        }
        Ok(Self {
            shared,
            global,
            commands,
            thread: Some(thread),
            shutdown_timeout: config.shutdown_timeout,
            stopped: AtomicBool::new(false),
            #[cfg(feature = "fleet")]
            _deliverer: deliverer,
        })
    }

    /// Records usage for a customer into this reporter's cells, resolved to its
    /// agreement by this reporter's resolver (see [`record_for_customer`]).
    pub fn record_for_customer(
        &self,
        customer: &Customer,
        feature: &FeatureCode,
        usage: impl Into<Usage>,
    ) {
        self.record_for(&AgreementId::for_customer(customer), feature, usage);
    }

    /// Records usage into this reporter's cells.
    #[inline]
    pub fn record_for(
        &self,
        agreement: &AgreementId,
        feature: &FeatureCode,
        usage: impl Into<Usage>,
    ) {
        let (meter_type, value) = usage.into().parts();
        self.shared
            .record(AgreementRef::Id(agreement), feature, meter_type, value);
    }

    /// [`billing_changed`] for this reporter.
    pub fn billing_changed(
        &self,
        customer: Option<&CustomerId>,
        org: Option<&OrgCode>,
        user: Option<&UserId>,
    ) -> bool {
        self.shared
            .billing_changed(billing_change(customer, org, user))
    }

    /// This reporter's counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Closes the current window and delivers everything pending, waiting at most `timeout`.
    pub async fn flush(&self, timeout: Duration) -> FlushReport {
        self.ask_flush(timeout)
            .await
            .unwrap_or_else(|| self.flush_failed())
    }

    /// [`Reporter::flush`] for sync code.
    pub fn flush_blocking(&self, timeout: Duration) -> FlushReport {
        block_on(
            self.ask_flush(timeout),
            timeout.saturating_add(ANSWER_GRACE),
        )
        .flatten()
        .unwrap_or_else(|| self.flush_failed())
    }

    /// The body of both flushes: `None` if the worker did not answer.
    async fn ask_flush(&self, timeout: Duration) -> Option<FlushReport> {
        let (tx, rx) = oneshot::channel();
        let deadline = deadline_after(timeout);
        self.commands
            .send(Command::Flush {
                deadline,
                reply: Reply(tx),
            })
            .ok()?;
        within(rx, timeout.saturating_add(ANSWER_GRACE)).await?.ok()
    }

    fn flush_failed(&self) -> FlushReport {
        FlushReport {
            waiting: self.shared.registry.pending_keys(),
            timed_out: true,
            durable: false,
        }
    }

    /// Delivers what is pending within `timeout` and stops the reporter.
    pub async fn shutdown(mut self, timeout: Duration) -> ShutdownReport {
        // The thread exits right after answering; it is not joined here, which would
        // block the caller's runtime.
        self.thread.take();
        self.ask_shutdown(timeout).await
    }

    /// [`Reporter::shutdown`] for sync code; returns within `timeout` plus one second.
    pub fn shutdown_blocking(mut self, timeout: Duration) -> ShutdownReport {
        self.stop_blocking(timeout)
    }

    /// Marks this reporter as shutting down (its worker finishes the job even if the
    /// caller stops waiting).
    fn stopping(&self) {
        self.stopped.store(true, Relaxed);
        if self.global {
            let _ = GLOBAL_STATE.compare_exchange(RUNNING, STOPPING, Relaxed, Relaxed);
        }
    }

    /// The body of both shutdowns.
    async fn ask_shutdown(&self, timeout: Duration) -> ShutdownReport {
        self.stopping();
        let (tx, rx) = oneshot::channel();
        let deadline = deadline_after(timeout);
        if self
            .commands
            .send(Command::Shutdown {
                deadline,
                reply: Reply(tx),
            })
            .is_err()
        {
            return self.failed_report("the reporter's thread is gone");
        }
        match within(rx, timeout.saturating_add(ANSWER_GRACE)).await {
            Some(Ok(report)) => report,
            Some(Err(_)) => self.failed_report("the reporter's thread stopped without answering"),
            None => self.failed_report("the reporter's thread did not answer within the deadline"),
        }
    }

    fn stop_blocking(&mut self, timeout: Duration) -> ShutdownReport {
        match block_on(
            self.ask_shutdown(timeout),
            timeout.saturating_add(ANSWER_GRACE),
        ) {
            // It has answered: it ends at once.
            Some(report) if report.failure.is_none() => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
                report
            }
            // It failed to (a panic in the middle of the shutdown): it may serve on until
            // this reporter's commands close, so it is not waited for.
            Some(report) => report,
            None => self.failed_report("the reporter's thread did not answer within the deadline"),
        }
    }

    fn failed_report(&self, why: &str) -> ShutdownReport {
        tracing::error!(target: "kinde_meter", "shutdown failed: {why}; pending usage is unaccounted for");
        ShutdownReport {
            stats: self.shared.stats(),
            left: Vec::new(),
            kept: Vec::new(),
            deadline_reached: true,
            failure: Some(why.to_owned()),
        }
    }
}

/// The file system the journal writes through: the real one, or a test's.
fn journal_fs(config: &Config) -> Arc<dyn crate::journal::fs::Fs> {
    #[cfg(test)]
    if let Some(fs) = &config.journal_fs {
        return Arc::clone(fs);
    }
    let _ = config;
    Arc::new(crate::journal::fs::RealFs)
}

/// Hand-offs to the fleet's Redis at once, per replica: each is one short script call.
#[cfg(feature = "fleet")]
const FLEET_HANDOFFS_IN_FLIGHT: usize = 32;

/// How long past its deadline a caller waits for the worker's answer.
const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// `future`'s output, or `None` once `limit` has passed. The timer is a thread of its own,
/// not `tokio::time`: this runs on the caller's runtime, which may have no timer enabled
/// (and a worker stalled by a sink that blocks its thread can answer late or never).
async fn within<F: Future>(future: F, limit: Duration) -> Option<F::Output> {
    let (expired, timer) = oneshot::channel::<()>();
    // Dropped when this function returns, which ends the timer thread at once.
    let (_answered, answered_rx) = std::sync::mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("kinde-meter-deadline".into())
        .spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = answered_rx.recv_timeout(limit)
            {
                let _ = expired.send(());
            }
        });
    if spawned.is_err() {
        // No thread to time it: wait for the answer, which the worker's own deadline bounds
        // unless a sink blocks it.
        return Some(future.await);
    }
    tokio::select! {
        biased;
        output = future => Some(output),
        _ = timer => None,
    }
}

/// Runs `future` on the calling thread for at most `limit`, parking it between wake-ups:
/// how each blocking form runs its async twin. Safe on any thread, a runtime's included,
/// because the futures it runs need no runtime (they wait on a channel the worker's own
/// thread answers).
fn block_on<F: Future>(future: F, limit: Duration) -> Option<F::Output> {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    let start = std::time::Instant::now();
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return Some(output);
        }
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            return None;
        }
        std::thread::park_timeout(left);
    }
}

/// Runs the worker on its thread until it shuts down. A panic in it (a bug) is
/// contained: what it held is handed back, and it serves on.
fn serve<S: Sink>(runtime: &tokio::runtime::Runtime, worker: &mut Worker<S>) {
    loop {
        match catch_unwind(AssertUnwindSafe(|| runtime.block_on(worker.run()))) {
            Ok(()) => return,
            Err(_) => worker.salvage(),
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if !self.stopped.load(Relaxed) {
            let report = self.stop_blocking(self.shutdown_timeout);
            tracing::debug!(target: "kinde_meter", %report, "reporter dropped and shut down");
        }
    }
}

#[cfg(test)]
mod journal_tests;
