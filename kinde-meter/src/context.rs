//! The current customer agreement: whom metered calls bill.
//!
//! Two scopes, looked up in this order:
//! 1. the *task* scope, set for a future with [`with_agreement`] while it is polled (so it
//!    follows the future across the threads of a multi-thread runtime, under any executor),
//!    and
//! 2. the *thread* scope, set for sync code with [`enter_agreement`] (a thread-local that
//!    nests and is restored when the guard drops).
//!
//! A `#[meter]` with an explicit `agreement = ...` ignores both. A call with no agreement
//! in scope is never sent to a guessed agreement: it is counted as `unattributed`.

use std::cell::Cell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::api::AgreementId;

thread_local! {
    // The agreement of the innermost `WithAgreement` being polled on this thread, or null.
    // A raw pointer in a `const`, destructor-free thread-local: reading it is one load,
    // which matters because every metered call reads it.
    static TASK_AGREEMENT: Cell<*const AgreementId> = const { Cell::new(ptr::null()) };
}

thread_local! {
    // A `Cell`, not a `RefCell`: readers take the value out and put it back, so a hook
    // that enters another scope while a read is under way cannot hit a borrow panic.
    static THREAD_AGREEMENT: Cell<Option<AgreementId>> = const { Cell::new(None) };
}

/// Runs `future` with `agreement` as the current agreement (the task scope).
///
/// Every `#[meter]` call made while the future is polled bills `agreement`, unless the
/// attribute names its own. The scope does not follow `tokio::spawn`: carry it into a
/// spawned task with [`AgreementFutureExt::in_current_agreement`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use kinde_meter::{current_agreement, with_agreement, AgreementId};
///
/// let acme: AgreementId = "agreement_acme".parse()?;
/// let seen = with_agreement(acme.clone(), async { current_agreement() }).await;
/// assert_eq!(seen, Some(acme));
/// assert_eq!(current_agreement(), None);
/// # Ok(()) }
/// ```
pub fn with_agreement<F: Future>(agreement: AgreementId, future: F) -> WithAgreement<F> {
    WithAgreement {
        agreement: Some(agreement),
        future,
    }
}

/// Makes `agreement` the current agreement of this thread until the guard drops (the
/// thread scope, for sync code). Scopes nest: dropping a guard restores the previous one.
///
/// The guard is `!Send`, so it cannot be held across an `.await` of a `Send` future; in
/// async code use [`with_agreement`], which also wins over this scope when both are set.
///
/// ```
/// use kinde_meter::{current_agreement, enter_agreement, AgreementId};
///
/// let acme: AgreementId = "agreement_acme".parse()?;
/// let globex: AgreementId = "agreement_globex".parse()?;
/// {
///     let _acme = enter_agreement(acme.clone());
///     {
///         let _globex = enter_agreement(globex.clone());
///         assert_eq!(current_agreement(), Some(globex));
///     }
///     assert_eq!(current_agreement(), Some(acme));
/// }
/// assert_eq!(current_agreement(), None);
/// # Ok::<(), kinde_meter::api::InvalidInput>(())
/// ```
pub fn enter_agreement(agreement: AgreementId) -> AgreementGuard {
    let previous = THREAD_AGREEMENT.with(|cell| cell.replace(Some(agreement)));
    AgreementGuard {
        previous,
        _not_send: PhantomData,
    }
}

/// The agreement metered calls made here would bill: the task scope, else the thread
/// scope, else `None`.
pub fn current_agreement() -> Option<AgreementId> {
    with_current(|agreement| agreement.cloned())
}

/// Calls `f` with the current agreement without cloning it: the hot path of every
/// metered call.
#[inline]
pub(crate) fn with_current<R>(f: impl FnOnce(Option<&AgreementId>) -> R) -> R {
    let task = TASK_AGREEMENT.with(Cell::get);
    if task.is_null() {
        return with_thread_scope(f);
    }
    // SAFETY: a non-null pointer was stored by `WithAgreement::poll`, on this thread,
    // pointing at the agreement inside that pinned future; it is reset before that poll
    // returns (or unwinds). So we are inside that poll, the future cannot move or drop
    // while it is being polled, and the reference does not outlive `f`.
    f(Some(unsafe { &*task }))
}

#[inline(never)]
fn with_thread_scope<R>(f: impl FnOnce(Option<&AgreementId>) -> R) -> R {
    // Take the value out for the duration of `f` (so `f` may enter and leave scopes of
    // its own) and put it back afterwards, also if `f` unwinds.
    struct PutBack(Option<AgreementId>);
    impl Drop for PutBack {
        fn drop(&mut self) {
            let value = self.0.take();
            // During thread teardown the slot may be gone; nothing to restore then.
            let _ = THREAD_AGREEMENT.try_with(|slot| slot.set(value));
        }
    }
    let held = PutBack(THREAD_AGREEMENT.try_with(Cell::take).ok().flatten());
    f(held.0.as_ref())
}

/// Restores the previous thread scope when dropped. Returned by [`enter_agreement`].
#[must_use = "the agreement is current only while this guard is alive"]
pub struct AgreementGuard {
    previous: Option<AgreementId>,
    _not_send: PhantomData<*const ()>,
}

impl Drop for AgreementGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        // During thread teardown the slot may be gone already; nothing to restore then.
        let _ = THREAD_AGREEMENT.try_with(|cell| cell.set(previous));
    }
}

impl std::fmt::Debug for AgreementGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgreementGuard")
            .field("previous", &self.previous)
            .finish()
    }
}

pin_project! {
    /// A future run with an agreement scope. Returned by [`with_agreement`] and
    /// [`AgreementFutureExt`].
    #[must_use = "futures do nothing unless polled"]
    pub struct WithAgreement<F> {
        agreement: Option<AgreementId>,
        #[pin]
        future: F,
    }
}

/// Puts back the previous task scope, also when the inner poll unwinds.
struct Restore(*const AgreementId);

impl Drop for Restore {
    fn drop(&mut self) {
        TASK_AGREEMENT.with(|slot| slot.set(self.0));
    }
}

impl<F: Future> Future for WithAgreement<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let Some(agreement) = this.agreement.as_ref() else {
            return this.future.poll(cx);
        };
        // The pointer stays valid while this poll runs: `self` is pinned and borrowed.
        let previous = TASK_AGREEMENT.with(|slot| slot.replace(ptr::from_ref(agreement)));
        let _restore = Restore(previous);
        this.future.poll(cx)
    }
}

impl<F> std::fmt::Debug for WithAgreement<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithAgreement")
            .field("agreement", &self.agreement)
            .finish_non_exhaustive()
    }
}

/// Agreement scopes as methods on futures, mainly to carry the scope into spawned tasks.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use kinde_meter::{current_agreement, with_agreement, AgreementFutureExt, AgreementId};
///
/// let acme: AgreementId = "agreement_acme".parse()?;
/// let handle = with_agreement(acme.clone(), async {
///     // `tokio::spawn` starts a new task: without this, it would have no agreement.
///     tokio::spawn(async { current_agreement() }.in_current_agreement())
/// })
/// .await;
/// assert_eq!(handle.await?, Some(acme));
/// # Ok(()) }
/// ```
pub trait AgreementFutureExt: Future + Sized {
    /// Runs this future in the agreement that is current *now* (where this method is
    /// called), or with no scope if there is none.
    fn in_current_agreement(self) -> WithAgreement<Self> {
        WithAgreement {
            agreement: current_agreement(),
            future: self,
        }
    }

    /// Runs this future with `agreement` as the current agreement.
    fn with_agreement(self, agreement: AgreementId) -> WithAgreement<Self> {
        with_agreement(agreement, self)
    }
}

impl<F: Future> AgreementFutureExt for F {}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> AgreementId {
        AgreementId::new(s).expect("valid id")
    }

    #[test]
    fn task_scope_wins_over_thread_scope() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let _thread = enter_agreement(id("agreement_thread"));
        let seen = rt.block_on(with_agreement(id("agreement_task"), async {
            current_agreement()
        }));
        assert_eq!(seen, Some(id("agreement_task")));
        assert_eq!(current_agreement(), Some(id("agreement_thread")));
    }

    #[test]
    fn thread_scope_survives_a_read_that_unwinds() {
        let _g = enter_agreement(id("agreement_a"));
        let r = std::panic::catch_unwind(|| with_current(|_| panic!("boom")));
        assert!(r.is_err());
        assert_eq!(current_agreement(), Some(id("agreement_a")));
    }

    #[test]
    fn task_scopes_nest_and_are_restored_after_each_poll() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(with_agreement(id("agreement_outer"), async {
            let inner = with_agreement(id("agreement_inner"), async {
                tokio::task::yield_now().await;
                current_agreement()
            });
            assert_eq!(inner.await, Some(id("agreement_inner")));
            assert_eq!(current_agreement(), Some(id("agreement_outer")));
        }));
        assert_eq!(current_agreement(), None, "nothing leaks out of the scope");
    }

    #[test]
    fn a_panicking_poll_restores_the_scope() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(with_agreement(id("agreement_p"), async {
                panic!("inside the scope")
            }))
        }));
        assert!(caught.is_err());
        assert_eq!(current_agreement(), None);
    }

    #[test]
    fn in_current_agreement_without_a_scope_runs_unscoped() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let seen = rt.block_on(async { current_agreement() }.in_current_agreement());
        assert_eq!(seen, None);
    }

    #[test]
    fn scope_is_per_thread() {
        let _g = enter_agreement(id("agreement_a"));
        let other = std::thread::spawn(current_agreement)
            .join()
            .expect("thread");
        assert_eq!(other, None);
    }
}
