//! The local-recorder seam: what metered calls on a thread record goes to the innermost
//! recorder installed on that thread, instead of to the reporter. `testing::capture`
//! installs one; nothing in production does.
//!
//! As tracing-core's scoped dispatchers and `metrics`' local recorder do, the slot costs a
//! metered call one relaxed load of a process-wide count while nothing is installed
//! anywhere, whatever cargo features are enabled: a test-only feature never changes the
//! production hot path.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::cells::AgreementRef;
use crate::api::{FeatureCode, MeterType};
use crate::usage::InvalidValue;

/// Receives a thread's metered calls while installed.
pub(crate) trait LocalRecorder: Send + Sync {
    /// A call's usage; `agreement` is `None` when no agreement was in scope.
    fn record(
        &self,
        agreement: Option<AgreementRef<'_>>,
        feature: &FeatureCode,
        meter_type: MeterType,
        value: u64,
    );
    /// A call whose value cannot be billed.
    fn invalid(&self, feature: &FeatureCode, invalid: &InvalidValue);
}

/// Recorders installed on any thread right now.
static INSTALLED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STACK: RefCell<Vec<Arc<dyn LocalRecorder>>> = const { RefCell::new(Vec::new()) };
}

/// The innermost recorder installed on this thread, if any.
#[inline(always)]
pub(crate) fn current() -> Option<Arc<dyn LocalRecorder>> {
    if INSTALLED.load(Relaxed) == 0 {
        return None;
    }
    innermost()
}

#[cold]
#[inline(never)]
fn innermost() -> Option<Arc<dyn LocalRecorder>> {
    STACK
        .try_with(|stack| stack.borrow().last().cloned())
        .ok()
        .flatten()
}

/// Makes `recorder` this thread's innermost recorder until [`uninstall`].
#[cfg_attr(
    not(feature = "testing"),
    allow(dead_code, reason = "used by `testing::capture`")
)]
pub(crate) fn install(recorder: Arc<dyn LocalRecorder>) {
    // During thread teardown (a thread-local destructor) the stack may be gone: the
    // recorder then sees nothing, rather than the install panicking.
    if STACK
        .try_with(|stack| stack.borrow_mut().push(recorder))
        .is_ok()
    {
        INSTALLED.fetch_add(1, Relaxed);
    }
}

/// Removes the innermost installation of `recorder` from this thread (installations may
/// end in any order).
#[cfg_attr(
    not(feature = "testing"),
    allow(dead_code, reason = "used by `testing::capture`")
)]
pub(crate) fn uninstall(recorder: &Arc<dyn LocalRecorder>) {
    let removed = STACK.try_with(|stack| {
        let mut stack = stack.borrow_mut();
        let i = stack
            .iter()
            .rposition(|r| std::ptr::addr_eq(Arc::as_ptr(r), Arc::as_ptr(recorder)))?;
        Some(stack.remove(i))
    });
    if let Ok(Some(removed)) = removed {
        INSTALLED.fetch_sub(1, Relaxed);
        // Dropped outside the borrow: a recorder's drop is its own code.
        drop(removed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::api::AgreementId;

    #[derive(Default)]
    struct Seen(Mutex<Vec<(Option<String>, String, u64)>>);

    impl LocalRecorder for Seen {
        fn record(
            &self,
            agreement: Option<AgreementRef<'_>>,
            feature: &FeatureCode,
            _: MeterType,
            value: u64,
        ) {
            let agreement = agreement.map(|a| match a {
                AgreementRef::Id(id) => id.to_string(),
                AgreementRef::Str(s) => s.to_owned(),
            });
            let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
            seen.push((agreement, feature.to_string(), value));
        }
        fn invalid(&self, _: &FeatureCode, _: &InvalidValue) {}
    }

    #[test]
    fn an_installed_recorder_gets_the_threads_calls_and_only_while_installed() {
        let seen = Arc::new(Seen::default());
        let recorder: Arc<dyn LocalRecorder> = seen.clone();
        let acme = AgreementId::new("agreement_local").expect("id");
        install(Arc::clone(&recorder));
        crate::in_agreement(acme.clone(), || crate::record("local_seam", 2));
        crate::record_for(&acme, &FeatureCode::from_static("local_seam"), 3);
        let other_thread = std::thread::spawn(|| current().is_none());
        assert!(other_thread.join().expect("thread"), "per thread");
        uninstall(&recorder);
        assert!(current().is_none());
        let seen = seen.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let acme = Some(String::from("agreement_local"));
        assert_eq!(
            seen,
            [
                (acme.clone(), String::from("local_seam"), 2),
                (acme, String::from("local_seam"), 3),
            ]
        );
    }
}
