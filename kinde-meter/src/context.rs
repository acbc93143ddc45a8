//! The current customer agreement: whom metered calls bill.
//!
//! Two scopes, looked up in this order:
//! 1. the *task* scope, set for a future with [`with_agreement`] while it is polled (so it
//!    follows the future across the threads of a multi-thread runtime, under any executor).
//!    Other tokio tasks run inside that poll (a `LocalSet` or a runtime nested in the
//!    future) do not see it. And
//! 2. the *thread* scope, set for sync code with [`enter_agreement`] or [`in_agreement`].
//!    It is seen only by the code that entered it: the same tokio task, or code outside
//!    any task. A guard held across an `.await` is therefore not seen by the other tasks
//!    that thread polls meanwhile (they would otherwise bill the wrong customer).
//!
//! A `#[meter]` with an explicit `agreement = ...` ignores both. A call with no agreement
//! in scope is never sent to a guessed agreement: it is counted as `unattributed`.
//!
//! Both scopes live in one per-thread [`Scopes`] record. Every entry owns its agreement
//! and carries a token, and each guard removes exactly its own entry, so guards may drop
//! in any order and an executor that suspends a poll half-way (a stackful coroutine)
//! cannot leave a dangling reference behind.

use std::cell::Cell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::api::{AgreementId, Customer};

/// Which tokio task entered a thread scope (`None`: outside any task).
type TaskId = Option<tokio::task::Id>;

/// This thread's scopes. Innermost entries are last.
#[derive(Default)]
struct Scopes {
    next_token: u64,
    /// `WithAgreement` polls in progress, with the task polling each.
    polls: Vec<(u64, AgreementId, TaskId)>,
    /// `enter_agreement` guards alive, with the task that entered each.
    entered: Vec<(u64, AgreementId, TaskId)>,
}

/// Removes the innermost entry with `token`: the last one, unless guards dropped out of
/// order.
fn remove(
    entries: &mut Vec<(u64, AgreementId, TaskId)>,
    token: u64,
) -> Option<(u64, AgreementId, TaskId)> {
    if entries.last().is_some_and(|(t, ..)| *t == token) {
        return entries.pop();
    }
    let i = entries.iter().rposition(|(t, ..)| *t == token)?;
    Some(entries.remove(i))
}

impl Scopes {
    fn token(&mut self) -> u64 {
        self.next_token = self.next_token.wrapping_add(1);
        self.next_token
    }

    fn is_empty(&self) -> bool {
        self.polls.is_empty() && self.entered.is_empty()
    }
}

/// Marks this thread's scopes as freed (thread teardown).
const GONE: *mut Scopes = ptr::without_provenance_mut(1);

thread_local! {
    // A raw pointer in a `const`, destructor-free thread-local: reading it is one load
    // on every metered call, and it stays usable from other thread-locals' destructors
    // (a thread-local with a destructor panics there, which aborts the process).
    static SCOPES: Cell<*mut Scopes> = const { Cell::new(ptr::null_mut()) };
    // Frees the scopes when the thread exits.
    static SCOPES_OWNER: ScopesOwner = const { ScopesOwner };
}

struct ScopesOwner;

impl Drop for ScopesOwner {
    fn drop(&mut self) {
        let scopes = SCOPES.with(|slot| slot.replace(GONE));
        if scopes.is_null() || scopes == GONE {
            return;
        }
        // SAFETY: the pointer came from `Box::into_raw` in `scopes_mut` on this thread and
        // no reference to it is live (destructors run outside `scopes_mut`/`scopes_ref`).
        let boxed = unsafe { Box::from_raw(scopes) };
        if boxed.is_empty() {
            drop(boxed);
        } else {
            // A guard kept in another thread-local still points here by token; keep the
            // scopes for it rather than free them under it (a small leak at thread exit).
            SCOPES.with(|slot| slot.set(Box::into_raw(boxed)));
        }
    }
}

/// Runs `f` on this thread's scopes, creating them if needed.
fn scopes_mut<R>(f: impl FnOnce(&mut Scopes) -> R) -> R {
    let mut scopes = SCOPES.with(Cell::get);
    if scopes.is_null() || scopes == GONE {
        // Register the owner so the scopes are freed at thread exit; during teardown
        // (`GONE`, or the owner already destroyed) they are leaked instead, which only
        // happens when a thread-local destructor enters a scope.
        let _ = SCOPES_OWNER.try_with(|_| ());
        scopes = Box::into_raw(Box::default());
        SCOPES.with(|slot| slot.set(scopes));
    }
    // SAFETY: `scopes` came from `Box::into_raw` for this thread and is freed only by
    // `ScopesOwner::drop`, which swaps it out first. `f` is our own code that runs no
    // user code (it pushes, removes and drops entries), so no other reference to the
    // scopes exists while it runs.
    f(unsafe { &mut *scopes })
}

/// What a metered call found in scope.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Found<'a> {
    /// The agreement to bill.
    pub(crate) agreement: Option<&'a AgreementId>,
    /// A thread scope entered by another task was passed over: a guard of
    /// [`enter_agreement`] is held across an `.await` somewhere on this thread.
    pub(crate) hidden: bool,
}

impl Found<'_> {
    const NOTHING: Self = Found {
        agreement: None,
        hidden: false,
    };
}

/// The agreement metered calls made here would bill: the task scope, else the thread
/// scope entered by this same task (or outside any task), else `None`.
///
/// `None` too when the scope is a customer's ([`current_customer`]): its agreement is
/// only known once its usage is resolved.
pub fn current_agreement() -> Option<AgreementId> {
    current().filter(|a| !a.is_customer())
}

/// The customer metered calls made here would bill, when the scope is a customer's
/// ([`with_customer`], [`enter_customer`]); else `None`.
///
/// ```
/// use kinde_meter::{current_customer, in_customer, Customer};
///
/// let acme = Customer::org("org_acme")?;
/// assert_eq!(in_customer(acme.clone(), current_customer), Some(acme));
/// assert_eq!(current_customer(), None);
/// # Ok::<(), kinde_meter::api::InvalidInput>(())
/// ```
pub fn current_customer() -> Option<Customer> {
    current().and_then(|a| a.customer())
}

fn current() -> Option<AgreementId> {
    let (agreement, hidden) = with_current(|found| (found.agreement.cloned(), found.hidden));
    if hidden {
        warn_hidden();
    }
    agreement
}

/// Calls `f` with what is in scope, without cloning it: the hot path of every metered
/// call. `f` must not run user code (hooks, logs): report after it returns.
#[inline(always)]
pub(crate) fn with_current<R>(f: impl FnOnce(Found<'_>) -> R) -> R {
    let scopes = SCOPES.with(Cell::get);
    if scopes.is_null() || scopes == GONE {
        return f(Found::NOTHING);
    }
    // SAFETY: as in `scopes_mut`; the callers of `with_current` run no user code while
    // they hold the reference (hooks and logs run after it ends).
    f(lookup(unsafe { &*scopes }))
}

/// The innermost task scope polled by this task, else the innermost thread scope it
/// entered. Both are matched on the task: a `LocalSet` or a nested runtime polled inside a
/// `with_agreement` runs other tasks within that poll, and those must not bill it.
#[inline(always)]
fn lookup(scopes: &Scopes) -> Found<'_> {
    if scopes.is_empty() {
        return Found::NOTHING;
    }
    let task = tokio::task::try_id();
    if let Some((_, agreement, _)) = scopes.polls.iter().rev().find(|(.., t)| *t == task) {
        return Found {
            agreement: Some(agreement),
            hidden: false,
        };
    }
    let mut hidden = false;
    for (_, agreement, entered_by) in scopes.entered.iter().rev() {
        if *entered_by == task {
            return Found {
                agreement: Some(agreement),
                hidden,
            };
        }
        hidden = true;
    }
    Found {
        agreement: None,
        hidden,
    }
}

/// Logs (once per process) that a lookup passed over another task's thread scope. Called
/// after the lookup, never inside it: a `tracing` subscriber is user code.
#[cold]
pub(crate) fn warn_hidden() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Relaxed) {
        tracing::warn!(
            target: "kinde_meter",
            "an `enter_agreement` guard is held across an `.await`: other tasks polled on its thread do not \
             see it (warned once); use `with_agreement` in async code"
        );
    }
}

/// Makes `agreement` the current agreement of this thread until the guard drops (the
/// thread scope, for sync code). Scopes nest, and guards may drop in any order: each
/// removes exactly its own scope.
///
/// The scope is seen only by the code that entered it: if it is entered inside a tokio
/// task, by that task; otherwise by code outside any task (not by tasks the thread runs
/// later, say inside a `block_on`). Within one task it cannot tell futures apart: a guard
/// held across an `.await` in one branch of a `join!`/`select!` is seen by the other
/// branches. The guard is `!Send`; in async code use [`with_agreement`], which follows the
/// future and wins over this scope when both are set.
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
    let task = tokio::task::try_id();
    let token = scopes_mut(|scopes| {
        let token = scopes.token();
        scopes.entered.push((token, agreement, task));
        token
    });
    AgreementGuard {
        token,
        _not_send: PhantomData,
    }
}

/// Runs `f` with `agreement` as this thread's current agreement: [`enter_agreement`]
/// for a closure, so the scope cannot outlive the call.
///
/// ```
/// use kinde_meter::{current_agreement, in_agreement, AgreementId};
///
/// let acme: AgreementId = "agreement_acme".parse()?;
/// let seen = in_agreement(acme.clone(), current_agreement);
/// assert_eq!(seen, Some(acme));
/// assert_eq!(current_agreement(), None);
/// # Ok::<(), kinde_meter::api::InvalidInput>(())
/// ```
pub fn in_agreement<R>(agreement: AgreementId, f: impl FnOnce() -> R) -> R {
    let _scope = enter_agreement(agreement);
    f()
}

/// Makes `customer` this thread's current customer until the guard is dropped: as
/// [`enter_agreement`], for usage that is resolved to one of the customer's agreements
/// when its window closes (see [`Config::resolver`](crate::Config::resolver)).
///
/// ```
/// use kinde_meter::{current_customer, enter_customer, Customer};
///
/// let _scope = enter_customer(Customer::org("org_acme")?);
/// assert_eq!(current_customer(), Some(Customer::org("org_acme")?));
/// # Ok::<(), kinde_meter::api::InvalidInput>(())
/// ```
pub fn enter_customer(customer: Customer) -> AgreementGuard {
    enter_agreement(AgreementId::for_customer(&customer))
}

/// Runs `f` with `customer` as this thread's current customer ([`enter_customer`] for
/// a closure).
pub fn in_customer<R>(customer: Customer, f: impl FnOnce() -> R) -> R {
    let _scope = enter_customer(customer);
    f()
}

/// Runs `future` with `customer` as the current customer (the task scope): as
/// [`with_agreement`], for usage resolved to one of the customer's agreements when its
/// window closes. The call never waits on the network.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use kinde_meter::{current_customer, with_customer, Customer};
///
/// let acme = Customer::org("org_acme")?;
/// let seen = with_customer(acme.clone(), async { current_customer() }).await;
/// assert_eq!(seen, Some(acme));
/// # Ok(()) }
/// ```
pub fn with_customer<F: Future>(customer: Customer, future: F) -> WithAgreement<F> {
    WithAgreement::new(Some(AgreementId::for_customer(&customer)), future)
}

/// Ends the thread scope it was returned for when dropped. Returned by
/// [`enter_agreement`] and [`enter_customer`].
#[must_use = "the agreement is current only while this guard is alive"]
pub struct AgreementGuard {
    token: u64,
    _not_send: PhantomData<*const ()>,
}

impl Drop for AgreementGuard {
    fn drop(&mut self) {
        let token = self.token;
        let removed = scopes_mut(|scopes| remove(&mut scopes.entered, token));
        // Dropped here, outside `scopes_mut`: dropping an id runs no user code, but this
        // keeps the rule simple.
        drop(removed);
    }
}

impl std::fmt::Debug for AgreementGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgreementGuard")
            .field("token", &self.token)
            .finish()
    }
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
    WithAgreement::new(Some(agreement), future)
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

/// Makes `agreement` the task scope for the duration of `f` (one poll).
pub(crate) fn in_poll<R>(agreement: &AgreementId, f: impl FnOnce() -> R) -> R {
    // An owned clone, not a pointer into the future: a poll that never returns on this
    // thread (a coroutine suspended mid-poll, then dropped or moved) leaves nothing
    // dangling.
    let task = tokio::task::try_id();
    let token = scopes_mut(|scopes| {
        let token = scopes.token();
        scopes.polls.push((token, agreement.clone(), task));
        token
    });
    /// Removes the poll's scope, also when the poll unwinds.
    struct EndPoll(u64);
    impl Drop for EndPoll {
        fn drop(&mut self) {
            let token = self.0;
            let removed = scopes_mut(|scopes| remove(&mut scopes.polls, token));
            drop(removed);
        }
    }
    let _end = EndPoll(token);
    f()
}

impl<F: Future> Future for WithAgreement<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        match this.agreement.as_ref() {
            Some(agreement) => in_poll(agreement, || this.future.poll(cx)),
            None => this.future.poll(cx),
        }
    }
}

impl<F> WithAgreement<F> {
    /// `inner` (a future or a body) in `agreement`'s scope, or in none.
    pub(crate) fn new(agreement: Option<AgreementId>, inner: F) -> Self {
        WithAgreement {
            agreement,
            future: inner,
        }
    }
}

/// A response body in its request's scope: metered code that produces the body's frames
/// (a streaming response) bills the request's customer. [`tower`](crate::tower) wraps
/// response bodies so.
#[cfg(feature = "tower")]
impl<B: http_body::Body> http_body::Body for WithAgreement<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        match this.agreement.as_ref() {
            Some(agreement) => in_poll(agreement, || this.future.poll_frame(cx)),
            None => this.future.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.future.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.future.size_hint()
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
    /// Runs this future in the agreement (or customer) scope that is current *now*
    /// (where this method is called), or with no scope if there is none.
    fn in_current_agreement(self) -> WithAgreement<Self> {
        WithAgreement::new(current(), self)
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

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_customer_scope_is_carried_into_spawned_tasks_and_is_no_agreement() {
        let acme = Customer::org("org_acme").expect("code");
        let seen = runtime().block_on(with_customer(acme.clone(), async {
            let spawned = tokio::spawn(
                async { (current_customer(), current_agreement()) }.in_current_agreement(),
            );
            spawned.await.expect("task")
        }));
        assert_eq!(seen, (Some(acme), None));
    }

    #[test]
    fn task_scope_wins_over_thread_scope() {
        let rt = runtime();
        let _thread = enter_agreement(id("agreement_thread"));
        let seen = rt.block_on(with_agreement(id("agreement_task"), async {
            current_agreement()
        }));
        assert_eq!(seen, Some(id("agreement_task")));
        assert_eq!(current_agreement(), Some(id("agreement_thread")));
    }

    #[test]
    fn task_scopes_nest_and_are_restored_after_each_poll() {
        let rt = runtime();
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
        let rt = runtime();
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
        let rt = runtime();
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

    #[test]
    fn guards_dropped_out_of_order_remove_only_their_own_scope() {
        let a = enter_agreement(id("agreement_a"));
        let b = enter_agreement(id("agreement_b"));
        drop(a);
        assert_eq!(current_agreement(), Some(id("agreement_b")));
        drop(b);
        assert_eq!(current_agreement(), None, "no stale scope is restored");
    }

    #[test]
    fn a_guard_held_across_an_await_is_not_seen_by_other_local_tasks() {
        let rt = runtime();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let holder = tokio::task::spawn_local(async {
                let _g = enter_agreement(id("agreement_holder"));
                tokio::task::yield_now().await;
                current_agreement()
            });
            let other = tokio::task::spawn_local(async { current_agreement() });
            assert_eq!(other.await.expect("task"), None);
            assert_eq!(holder.await.expect("task"), Some(id("agreement_holder")));
        });
    }

    #[test]
    fn a_sync_scope_is_not_seen_by_tasks_run_inside_its_block_on() {
        let rt = runtime();
        let early = rt.spawn(async { current_agreement() });
        let _g = enter_agreement(id("agreement_sync"));
        let (early, inside) = rt.block_on(async {
            let inside = current_agreement();
            (early.await.expect("task"), inside)
        });
        assert_eq!(early, None, "a task spawned earlier bills no one");
        assert_eq!(
            inside,
            Some(id("agreement_sync")),
            "block_on's own future does"
        );
    }

    #[test]
    fn a_task_scope_does_not_reach_tasks_run_inside_its_poll() {
        let rt = runtime();
        let local = tokio::task::LocalSet::new();
        let (inside, spawned) = rt.block_on(with_agreement(id("agreement_outer"), async {
            local
                .run_until(async {
                    let spawned = tokio::task::spawn_local(async { current_agreement() });
                    (current_agreement(), spawned.await.expect("task"))
                })
                .await
        }));
        assert_eq!(
            inside,
            Some(id("agreement_outer")),
            "run_until's own future is in it"
        );
        assert_eq!(
            spawned, None,
            "a task the LocalSet runs inside the poll is not"
        );
    }

    #[test]
    fn scopes_work_from_a_thread_local_destructor() {
        struct OnExit;
        impl Drop for OnExit {
            fn drop(&mut self) {
                let seen = in_agreement(id("agreement_tls"), current_agreement);
                assert_eq!(seen, Some(id("agreement_tls")));
            }
        }
        thread_local! { static ON_EXIT: OnExit = const { OnExit }; }
        std::thread::spawn(|| {
            // Enter and leave once so our own thread-locals exist and are destroyed
            // in whatever order the platform picks.
            in_agreement(id("agreement_first"), || ());
            ON_EXIT.with(|_| ());
        })
        .join()
        .expect("thread exits cleanly");
    }
}
