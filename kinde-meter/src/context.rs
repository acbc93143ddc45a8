//! The current customer agreement: whom metered calls bill.
//!
//! Two scopes, looked up in this order:
//! 1. the *task* scope, set for a future with [`with_agreement`] (a tokio task-local, so it
//!    follows the future across threads of a multi-thread runtime), and
//! 2. the *thread* scope, set for sync code with [`enter_agreement`] (a thread-local that
//!    nests and is restored when the guard drops).
//!
//! A `#[meter]` with an explicit `agreement = ...` ignores both. A call with no agreement
//! in scope is never sent to a guessed agreement: it is counted as `unattributed`.

use std::cell::Cell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;

use crate::api::AgreementId;

tokio::task_local! {
    static TASK_AGREEMENT: AgreementId;
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
        inner: Inner::Scoped {
            fut: TASK_AGREEMENT.scope(agreement, future),
        },
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
/// metered call. `f` is `Fn` because it may be tried against either scope.
#[inline]
pub(crate) fn with_current<R>(f: impl Fn(Option<&AgreementId>) -> R) -> R {
    if let Ok(r) = TASK_AGREEMENT.try_with(|agreement| f(Some(agreement))) {
        return r;
    }
    let from_thread = THREAD_AGREEMENT.try_with(|cell| {
        // Take the value out for the duration of `f` and put it back even if `f` unwinds.
        struct PutBack<'a>(&'a Cell<Option<AgreementId>>, Option<AgreementId>);
        impl Drop for PutBack<'_> {
            fn drop(&mut self) {
                self.0.set(self.1.take());
            }
        }
        let held = PutBack(cell, cell.take());
        f(held.1.as_ref())
    });
    match from_thread {
        Ok(r) => r,
        // The thread is being torn down: no thread scope any more.
        Err(_) => f(None),
    }
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
    pub struct WithAgreement<F: Future> {
        #[pin]
        inner: Inner<F>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<F: Future> {
        Scoped { #[pin] fut: TaskLocalFuture<AgreementId, F> },
        Plain { #[pin] fut: F },
    }
}

impl<F: Future> Future for WithAgreement<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project().inner.project() {
            InnerProj::Scoped { fut } => fut.poll(cx),
            InnerProj::Plain { fut } => fut.poll(cx),
        }
    }
}

impl<F: Future> std::fmt::Debug for WithAgreement<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithAgreement").finish_non_exhaustive()
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
        match current_agreement() {
            Some(agreement) => with_agreement(agreement, self),
            None => WithAgreement {
                inner: Inner::Plain { fut: self },
            },
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
    fn scope_is_per_thread() {
        let _g = enter_agreement(id("agreement_a"));
        let other = std::thread::spawn(current_agreement)
            .join()
            .expect("thread");
        assert_eq!(other, None);
    }
}
