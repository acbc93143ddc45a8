//! What `#[meter]` expansions call. Not public API: hidden from the docs and exempt from
//! semver. Everything a call needs at run time sits behind these few entry points so that
//! the generated code stays small and its behaviour is tested here, not in every expansion.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

pub use crate::api::MeterType;
pub use crate::reporter::Outcome;

use crate::api::{AgreementId, Customer, FeatureCode};
use crate::reporter;
pub use crate::reporter::InvalidValue;

/// One `#[meter]` call site. Expansions keep it in a `static`, so the feature code is
/// interned once per call site and the hot path compares pointers.
#[derive(Debug)]
pub struct CallSite {
    feature: FeatureCode,
    meter_type: MeterType,
}

impl CallSite {
    /// `feature` was validated by the macro; it is checked again (once per key) when its
    /// first usage is recorded.
    pub const fn new(feature: &'static str, meter_type: MeterType) -> Self {
        Self {
            feature: FeatureCode::unchecked_static(feature),
            meter_type,
        }
    }
}

/// The agreement in scope (task scope, else thread scope): the default `agreement`.
#[derive(Clone, Copy, Debug)]
pub struct CurrentAgreement;

/// An explicit agreement, resolved when the call completes (for `on = "return"`/`"ok"`).
#[derive(Debug)]
pub enum Deferred {
    /// Resolve the current agreement when the call completes.
    Current,
    /// This agreement.
    Id(AgreementId),
    /// An agreement string that failed validation.
    Invalid(String),
}

/// What `agreement = <expr>` may evaluate to.
#[diagnostic::on_unimplemented(
    message = "`#[meter(agreement = ...)]` must be an agreement id; `{Self}` is not",
    label = "expected `AgreementId`, `&AgreementId`, `&str` or `String`",
    note = "parse the agreement once (`let id: kinde_meter::AgreementId = s.parse()?`) and pass `&id`"
)]
pub trait AgreementArg {
    /// Records `value` now (for `on = "call"`).
    fn record(self, site: &'static CallSite, value: u64);
    /// Keeps the agreement for a later record, owning it so the body may move the
    /// arguments it came from.
    fn defer(self) -> Deferred;
}

impl AgreementArg for CurrentAgreement {
    #[inline]
    fn record(self, site: &'static CallSite, value: u64) {
        reporter::record_current(&site.feature, site.meter_type, value);
    }
    fn defer(self) -> Deferred {
        Deferred::Current
    }
}

impl AgreementArg for &AgreementId {
    #[inline]
    fn record(self, site: &'static CallSite, value: u64) {
        reporter::record_explicit(self, &site.feature, site.meter_type, value);
    }
    fn defer(self) -> Deferred {
        Deferred::Id(self.clone())
    }
}

impl AgreementArg for AgreementId {
    #[inline]
    fn record(self, site: &'static CallSite, value: u64) {
        (&self).record(site, value);
    }
    fn defer(self) -> Deferred {
        Deferred::Id(self)
    }
}

impl AgreementArg for &str {
    #[inline]
    fn record(self, site: &'static CallSite, value: u64) {
        reporter::record_explicit(self, &site.feature, site.meter_type, value);
    }
    fn defer(self) -> Deferred {
        match AgreementId::new(self) {
            Ok(id) => Deferred::Id(id),
            Err(_) => Deferred::Invalid(self.to_owned()),
        }
    }
}

impl AgreementArg for String {
    #[inline]
    fn record(self, site: &'static CallSite, value: u64) {
        self.as_str().record(site, value);
    }
    fn defer(self) -> Deferred {
        self.as_str().defer()
    }
}

impl AgreementArg for &String {
    #[inline]
    fn record(self, site: &'static CallSite, value: u64) {
        self.as_str().record(site, value);
    }
    fn defer(self) -> Deferred {
        self.as_str().defer()
    }
}

/// `customer = <expr>`: usage billed to the agreement `customer` resolves to. Builds the
/// customer's stand-in key on every call (an allocation), which a customer scope does
/// once per scope.
#[derive(Clone, Copy, Debug)]
pub struct ForCustomer<C>(pub C);

/// Wraps `customer = <expr>`; a function so that a wrong type is an error on the
/// expression itself.
#[inline]
pub fn for_customer<C: CustomerArg>(customer: C) -> ForCustomer<C> {
    ForCustomer(customer)
}

/// What `customer = <expr>` may evaluate to.
#[diagnostic::on_unimplemented(
    message = "`#[meter(customer = ...)]` must be a customer; `{Self}` is not",
    label = "expected `Customer` or `&Customer`",
    note = "build it once from the verified token: `kinde_meter::Customer::org(&claims.org_code)?`"
)]
pub trait CustomerArg {
    /// The customer.
    fn customer(&self) -> &Customer;
}

impl CustomerArg for Customer {
    fn customer(&self) -> &Customer {
        self
    }
}

impl CustomerArg for &Customer {
    fn customer(&self) -> &Customer {
        self
    }
}

impl<C: CustomerArg> AgreementArg for ForCustomer<C> {
    #[inline]
    fn record(self, site: &'static CallSite, value: u64) {
        let key = AgreementId::for_customer(self.0.customer());
        reporter::record_explicit(&key, &site.feature, site.meter_type, value);
    }
    fn defer(self) -> Deferred {
        Deferred::Id(AgreementId::for_customer(self.0.customer()))
    }
}

/// What `value = <expr>` may evaluate to: any integer. Negative values and values above
/// `u64::MAX` are refused at run time (counted and reported), never truncated.
#[diagnostic::on_unimplemented(
    message = "`#[meter(value = ...)]` must be an integer; `{Self}` is not",
    label = "expected an integer type such as `u64`, `u32` or `usize`",
    note = "decimal values cannot be aggregated in memory; send them with `kinde_meter::api::Client`"
)]
pub trait MeterValueArg {
    /// The value as a `u64`, or why it is not one.
    fn into_value(self) -> Result<u64, InvalidValue>;
}

macro_rules! unsigned {
    ($($t:ty),*) => {$(
        impl MeterValueArg for $t {
            #[inline]
            fn into_value(self) -> Result<u64, InvalidValue> {
                u64::try_from(self).map_err(|_| InvalidValue::too_large())
            }
        }
    )*};
}
macro_rules! signed {
    ($($t:ty),*) => {$(
        impl MeterValueArg for $t {
            #[inline]
            fn into_value(self) -> Result<u64, InvalidValue> {
                if self < 0 {
                    return Err(InvalidValue::negative(self as i128));
                }
                u64::try_from(self).map_err(|_| InvalidValue::too_large())
            }
        }
    )*};
}
unsigned!(u8, u16, u32, u64, u128, usize);
signed!(i8, i16, i32, i64, i128, isize);

/// `on = "call"`: records now.
#[inline]
pub fn record<A: AgreementArg, V: MeterValueArg>(site: &'static CallSite, agreement: A, value: V) {
    match value.into_value() {
        Ok(value) => agreement.record(site, value),
        Err(invalid) => reporter::record_invalid(&site.feature, invalid),
    }
}

/// A call whose usage is recorded when it completes (`on = "return"` / `on = "ok"`):
/// the agreement and value were evaluated when it started.
#[derive(Debug)]
#[must_use]
pub struct Pending {
    site: &'static CallSite,
    agreement: Deferred,
    value: Result<u64, InvalidValue>,
}

impl Pending {
    /// Evaluated at the start of the call, before the body can move the arguments.
    #[inline]
    pub fn new<A: AgreementArg, V: MeterValueArg>(
        site: &'static CallSite,
        agreement: A,
        value: V,
    ) -> Self {
        Self {
            site,
            agreement: agreement.defer(),
            value: value.into_value(),
        }
    }

    /// Records now.
    pub fn finish(self) {
        let Pending {
            site,
            agreement,
            value,
        } = self;
        let value = match value {
            Ok(value) => value,
            Err(invalid) => return reporter::record_invalid(&site.feature, invalid),
        };
        match agreement {
            Deferred::Current => CurrentAgreement.record(site, value),
            Deferred::Id(id) => id.record(site, value),
            Deferred::Invalid(s) => s.record(site, value),
        }
    }

    /// `on = "return"`, sync functions: records when the guard drops, unless the call is
    /// unwinding from a panic.
    pub fn on_return(self) -> ReturnGuard {
        ReturnGuard {
            pending: Some(self),
            panicking_at_start: std::thread::panicking(),
        }
    }

    /// `on = "call"`, a returned future that is not an `async` block written in the
    /// function: records when `fut` is first polled, not when it is built.
    pub fn on_first_poll<F: Future>(self, fut: F) -> OnFirstPoll<F> {
        OnFirstPoll {
            fut,
            pending: Some(self),
        }
    }

    /// `on = "return"`, async: records when `fut` completes; not if it is dropped first
    /// (cancelled) or panics.
    pub fn on_return_future<F: Future>(self, fut: F) -> OnReturn<F> {
        OnReturn {
            fut,
            pending: Some(self),
        }
    }

    /// `on = "ok"`, async: records when `fut` completes with a success.
    pub fn on_ok_future<F>(self, fut: F) -> OnOk<F>
    where
        F: Future,
        F::Output: Outcome,
    {
        OnOk {
            fut,
            pending: Some(self),
        }
    }
}

/// Records on drop unless unwinding. See [`Pending::on_return`].
#[derive(Debug)]
#[must_use = "the usage is recorded when this guard drops"]
pub struct ReturnGuard {
    pending: Option<Pending>,
    panicking_at_start: bool,
}

impl Drop for ReturnGuard {
    fn drop(&mut self) {
        // A call that started while already unwinding (from a `Drop` impl) returns
        // normally while `panicking()` is true; any other unwinding is a panic of its own.
        if std::thread::panicking() && !self.panicking_at_start {
            return;
        }
        if let Some(pending) = self.pending.take() {
            pending.finish();
        }
    }
}

pin_project! {
    /// See [`Pending::on_first_poll`].
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct OnFirstPoll<F> {
        #[pin]
        fut: F,
        pending: Option<Pending>,
    }
}

impl<F: Future> Future for OnFirstPoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if let Some(pending) = this.pending.take() {
            pending.finish();
        }
        this.fut.poll(cx)
    }
}

pin_project! {
    /// See [`Pending::on_return_future`].
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct OnReturn<F> {
        #[pin]
        fut: F,
        pending: Option<Pending>,
    }
}

impl<F: Future> Future for OnReturn<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.fut.poll(cx));
        if let Some(pending) = this.pending.take() {
            pending.finish();
        }
        Poll::Ready(out)
    }
}

pin_project! {
    /// See [`Pending::on_ok_future`].
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct OnOk<F> {
        #[pin]
        fut: F,
        pending: Option<Pending>,
    }
}

impl<F> Future for OnOk<F>
where
    F: Future,
    F::Output: Outcome,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.fut.poll(cx));
        if let Some(pending) = this.pending.take()
            && out.is_success()
        {
            pending.finish();
        }
        Poll::Ready(out)
    }
}
