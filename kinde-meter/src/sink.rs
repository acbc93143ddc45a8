//! The delivery seam: what carries a record once the outbox policy has chosen to send
//! it. Today Kinde's client ([`KindeSink`]); a journal wrapping it, or a hand-off to
//! another process, are other sinks.
//!
//! Shaped like sentry's `Transport` and OpenTelemetry's `SpanExporter`: the reporter
//! keeps the policy (batching into windows, retries, backoff, rate and concurrency
//! limits, shutdown), and a sink only carries one record and says what became of it. The
//! answer is an [`ApiError`] on failure because the policy goes by its
//! [`disposition`](ApiError::disposition): a sink that is not Kinde says the same three
//! things (not applied, may have been applied, refused) with the variants that fit,
//! `NotSent`, `Transport`/`Timeout` and `Rejected`.

use std::future::Future;
use std::time::Duration;

use crate::api::{ApiError, Client, RequestOptions};
use crate::usage::UsageRecord;

/// What became of one record handed to a [`Sink`]: `Ok` when it was delivered, else
/// the error, whose [`ApiError::disposition`] decides whether it is retried.
pub type SendResult = Result<(), ApiError>;

/// Carries records to where they are billed.
///
/// The reporter calls [`Sink::send`] from its own thread and runtime, at most
/// `max_in_flight` calls at once, each with the time it may take; it never calls it twice
/// at once for absolute records of one key. A record that fails with a retryable error is
/// sent again later with the same [`UsageRecord::idempotency_key`] and timestamp.
///
/// A sink that records what it is given, to test what a reporter delivers:
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use kinde_meter::{Config, Reporter, Sink, SendResult, UsageRecord, api::{Credentials, Domain}};
///
/// #[derive(Clone, Default)]
/// struct Recorded(Arc<Mutex<Vec<UsageRecord>>>);
///
/// impl Sink for Recorded {
///     async fn send(&self, record: &UsageRecord, _timeout: Duration) -> SendResult {
///         self.0.lock().unwrap().push(record.clone());
///         Ok(())
///     }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = Config::new(Domain::parse("acme.kinde.com")?, Credentials::access_token("unused"));
/// let sink = Recorded::default();
/// let reporter = Reporter::start_with_sink(config, sink.clone())?;
/// reporter.record_for(&"agreement_acme".parse()?, &"api_calls".parse()?, 3);
/// let report = reporter.shutdown_blocking(Duration::from_secs(5));
/// assert!(report.is_complete());
/// assert_eq!(sink.0.lock().unwrap()[0].value, 3);
/// # Ok(()) }
/// ```
pub trait Sink: Send + Sync + 'static {
    /// Delivers `record`, within `timeout`: past it the reporter drops the call and
    /// counts the record as possibly applied (retried or handed back per `Delivery`).
    ///
    /// Runs on the reporter's own runtime, several at once: it must not block its thread
    /// (no `std::thread::sleep`, blocking locks or blocking I/O). A sink that does stalls
    /// every delivery; shutdown still returns by its deadline plus one second, with a
    /// report that says it failed.
    fn send(
        &self,
        record: &UsageRecord,
        timeout: Duration,
    ) -> impl Future<Output = SendResult> + Send;
}

/// The sink [`Reporter::start`](crate::Reporter::start) uses: each record becomes one
/// `POST /api/v1/billing/meter_usage`, its idempotency key the `Idempotency-Key` header.
#[derive(Clone, Debug)]
pub struct KindeSink {
    client: Client,
}

impl KindeSink {
    /// Delivers through `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// The client it delivers through.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl Sink for KindeSink {
    async fn send(&self, record: &UsageRecord, timeout: Duration) -> SendResult {
        let options = RequestOptions::new()
            .idempotency_key(record.idempotency_key.clone())
            .timeout(timeout);
        self.client
            .create_meter_usage_record_with_options(&record.request(), &options)
            .await
            .map(drop)
    }
}
