//! `capture()`: what metered code records, for unit tests, without a reporter.

use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::api::{FeatureCode, MeterType};
use crate::reporter::local::{self, LocalRecorder};
use crate::reporter::{AgreementRef, InvalidValue};

#[derive(Default, Debug)]
struct Data {
    usage: BTreeMap<(String, String, MeterType), u64>,
    unattributed: BTreeMap<String, u64>,
    invalid: Vec<String>,
}

#[derive(Default, Debug)]
struct CaptureLog {
    data: Mutex<Data>,
}

impl CaptureLog {
    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add_usage(
        &self,
        agreement: Option<AgreementRef<'_>>,
        feature: &FeatureCode,
        meter_type: MeterType,
        value: u64,
    ) {
        let mut data = self.data();
        if let Err(e) = FeatureCode::new_checked(feature) {
            return data.invalid.push(e.to_string());
        }
        let agreement = match agreement {
            None => {
                *data.unattributed.entry(feature.to_string()).or_default() += value;
                return;
            }
            Some(agreement) => match agreement.to_id() {
                Ok(id) => id.to_string(),
                Err(e) => return data.invalid.push(e.to_string()),
            },
        };
        let slot = data
            .usage
            .entry((agreement, feature.to_string(), meter_type))
            .or_default();
        match meter_type {
            MeterType::Delta => *slot = slot.saturating_add(value),
            MeterType::Absolute => *slot = value,
        }
    }
}

impl LocalRecorder for CaptureLog {
    fn record(
        &self,
        agreement: Option<AgreementRef<'_>>,
        feature: &FeatureCode,
        meter_type: MeterType,
        value: u64,
    ) {
        self.add_usage(agreement, feature, meter_type, value);
    }

    fn invalid(&self, feature: &FeatureCode, invalid: &InvalidValue) {
        self.data().invalid.push(format!("{feature}: {invalid}"));
    }
}

fn install(sink: &Arc<CaptureLog>) {
    local::install(Arc::clone(sink) as Arc<dyn LocalRecorder>);
}

fn uninstall(sink: &Arc<CaptureLog>) {
    local::uninstall(&(Arc::clone(sink) as Arc<dyn LocalRecorder>));
}

/// Starts capturing what metered code records on this thread, instead of sending it to
/// the global reporter, until the returned [`Capture`] drops.
///
/// Captures are per thread (and per future with [`Capture::scope`]), so tests running in
/// parallel in one process do not see each other's usage. They nest: the innermost wins.
///
/// ```
/// use kinde_meter::{enter_agreement, meter, testing};
///
/// #[meter(feature = "exports", value = rows.len())]
/// fn export(rows: &[u32]) -> usize {
///     rows.len()
/// }
///
/// let capture = testing::capture();
/// let _scope = enter_agreement("agreement_acme".parse()?);
/// export(&[1, 2, 3]);
/// export(&[4]);
/// assert_eq!(capture.total("agreement_acme", "exports"), 4);
/// # Ok::<(), kinde_meter::api::InvalidInput>(())
/// ```
pub fn capture() -> Capture {
    let sink = Arc::new(CaptureLog::default());
    install(&sink);
    Capture {
        sink,
        _not_send: PhantomData,
    }
}

/// What metered code recorded while it was installed. Created by [`capture`].
#[derive(Debug)]
#[must_use = "usage is captured only while the `Capture` is alive"]
pub struct Capture {
    sink: Arc<CaptureLog>,
    // Installed on the creating thread, so it must be dropped there.
    _not_send: PhantomData<*const ()>,
}

/// Usage of one key, as captured.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub struct Captured {
    /// The agreement.
    pub agreement: String,
    /// The feature.
    pub feature: String,
    /// Delta (summed) or absolute (last value).
    pub meter_type: MeterType,
    /// The sum (delta) or last value (absolute).
    pub value: u64,
}

impl Capture {
    /// The delta usage of `feature` recorded for `agreement`.
    pub fn total(&self, agreement: &str, feature: &str) -> u64 {
        let key = (agreement.to_owned(), feature.to_owned(), MeterType::Delta);
        self.sink.data().usage.get(&key).copied().unwrap_or(0)
    }

    /// Delta usage captured for `customer` (in a customer scope, or with
    /// `#[meter(customer = ...)]`) and `feature`: billed to whichever agreement the
    /// customer resolves to when the reporter sends it.
    pub fn customer_total(&self, customer: &crate::Customer, feature: &str) -> u64 {
        self.total(&customer.placeholder(), feature)
    }

    /// The last absolute value of `feature` recorded for `agreement`.
    pub fn absolute(&self, agreement: &str, feature: &str) -> Option<u64> {
        let key = (
            agreement.to_owned(),
            feature.to_owned(),
            MeterType::Absolute,
        );
        self.sink.data().usage.get(&key).copied()
    }

    /// Usage of `feature` recorded with no agreement in scope.
    pub fn unattributed(&self, feature: &str) -> u64 {
        self.sink
            .data()
            .unattributed
            .get(feature)
            .copied()
            .unwrap_or(0)
    }

    /// Calls refused as invalid (feature code, agreement id or value), with the reason.
    pub fn invalid(&self) -> Vec<String> {
        self.sink.data().invalid.clone()
    }

    /// Everything captured, one entry per key, sorted.
    pub fn usage(&self) -> Vec<Captured> {
        self.sink
            .data()
            .usage
            .iter()
            .map(|((agreement, feature, meter_type), value)| Captured {
                agreement: agreement.clone(),
                feature: feature.clone(),
                meter_type: *meter_type,
                value: *value,
            })
            .collect()
    }

    /// Whether nothing at all was captured.
    pub fn is_empty(&self) -> bool {
        let data = self.sink.data();
        data.usage.is_empty() && data.unattributed.is_empty() && data.invalid.is_empty()
    }

    /// Runs `future` with this capture installed on whichever thread polls it, so usage
    /// from a task on a multi-thread runtime is captured too.
    pub fn scope<F: Future>(&self, future: F) -> CaptureScope<F> {
        CaptureScope {
            sink: Arc::clone(&self.sink),
            future,
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        uninstall(&self.sink);
    }
}

pin_project! {
    /// A future run under a capture. Created by [`Capture::scope`].
    #[must_use = "futures do nothing unless polled"]
    pub struct CaptureScope<F> {
        sink: Arc<CaptureLog>,
        #[pin]
        future: F,
    }
}

impl<F> std::fmt::Debug for CaptureScope<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureScope").finish_non_exhaustive()
    }
}

impl<F: Future> Future for CaptureScope<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        struct Installed<'a>(&'a Arc<CaptureLog>);
        impl Drop for Installed<'_> {
            fn drop(&mut self) {
                uninstall(self.0);
            }
        }
        install(this.sink);
        let _installed = Installed(this.sink);
        this.future.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgreementId, enter_agreement, record};

    #[test]
    fn captures_on_parallel_threads_see_only_their_own_usage() {
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|scope| {
            let workers: Vec<_> = [3u64, 5]
                .into_iter()
                .map(|value| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        let usage = capture();
                        let _scope =
                            enter_agreement(AgreementId::new("agreement_same").expect("id"));
                        barrier.wait();
                        for _ in 0..1_000 {
                            record("isolated", value);
                        }
                        usage.total("agreement_same", "isolated")
                    })
                })
                .collect();
            let totals: Vec<u64> = workers
                .into_iter()
                .map(|w| w.join().expect("thread"))
                .collect();
            assert_eq!(totals, [3_000, 5_000]);
        });
    }

    #[test]
    fn captures_nest_and_the_innermost_wins() {
        let _scope = enter_agreement(AgreementId::new("agreement_nest").expect("id"));
        let outer = capture();
        record("nested", 1);
        {
            let inner = capture();
            record("nested", 10);
            assert_eq!(inner.total("agreement_nest", "nested"), 10);
        }
        record("nested", 100);
        assert_eq!(outer.total("agreement_nest", "nested"), 101);
    }
}
