//! Random programs of agreement-scope operations, run for real and checked against a
//! reference model after every observation.
//!
//! The model is deliberately small:
//! - per thread, a list of the thread scopes alive, `(token, agreement, owner)`, innermost
//!   last, where the owner is the task that entered it (or `Outside`, code outside any
//!   task: plain sync code and the futures given to `block_on`);
//! - per executing future, the stack of `with_agreement` scopes around it, known from the
//!   program's structure.
//!
//! A lookup is then: the innermost task scope, else the innermost thread scope entered by
//! the same owner, else none. Owners are labels the interpreter hands out when it spawns
//! a task, so the model never asks tokio which task is running; the implementation does.
//!
//! Programs nest: `in_agreement` around a sub-program, `with_agreement` around an async
//! sub-program (polled by tokio, or by a bare loop outside tokio), `block_on` of a
//! current-thread runtime or a `LocalSet`, tasks spawned with `tokio::spawn` or
//! `spawn_local` (also from sync code, before a `block_on` runs them), with or without
//! their own scope or `.in_current_agreement()`, `join!` and `select!` of scoped branches,
//! and sub-programs on a fresh OS thread. Guards are kept across `.await`s and dropped by
//! random index. Every observation checks `current_agreement()` and the agreement a
//! `#[meter]` call was billed to.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};

use kinde_meter::{
    AgreementFutureExt, AgreementGuard, AgreementId, current_agreement, enter_agreement,
    in_agreement, testing, with_agreement,
};
use proptest::prelude::*;
use tokio::runtime::Runtime;
use tokio::task::{JoinHandle, LocalSet};

const AGREEMENTS: [&str; 4] = ["agreement_a", "agreement_b", "agreement_c", "agreement_d"];

fn id(agreement: u8) -> AgreementId {
    AgreementId::new(AGREEMENTS[usize::from(agreement)]).expect("a valid agreement id")
}

#[kinde_meter::meter(feature = "f")]
fn billable() {}

// ---------------------------------------------------------------------------------------
// Programs.

/// How a spawned task is scoped.
#[derive(Clone, Debug)]
enum Wrap {
    /// Not at all.
    Bare,
    /// `.in_current_agreement()` where it is spawned.
    InCurrent,
    /// `.with_agreement(..)`.
    With(u8),
}

/// A `join!`/`select!` branch: its own `with_agreement` (or none) around a sub-program.
type Branch = (Option<u8>, Vec<Op>);

#[derive(Clone, Debug)]
enum Op {
    /// `enter_agreement`; the guard is kept by the code (task, or outside any task) that
    /// entered it.
    Enter(u8),
    /// Drops the guard at this index (modulo their number) among those kept here.
    Drop(u8),
    /// Drops the guard at this index among all those kept on this thread, whoever entered
    /// it: a guard handed to other code on the same thread (say, a local task).
    DropAny(u8),
    /// Checks `current_agreement()` and a metered call against the model.
    Observe,
    /// `yield_now().await`.
    Yield,
    /// `in_agreement(id, || sub-program)`, run as sync code.
    InAgreement(u8, Vec<Op>),
    /// `with_agreement(id, sub-program)` (or the method form), awaited; in sync code,
    /// polled to completion by a bare loop, not tokio.
    With {
        agreement: u8,
        method: bool,
        ops: Vec<Op>,
    },
    /// `block_on` of a current-thread runtime, or of a `LocalSet` on it (sync code outside
    /// any executor only).
    BlockOn { local: bool, ops: Vec<Op> },
    /// `tokio::spawn` or `spawn_local` (in sync code: `Runtime::spawn` or
    /// `LocalSet::spawn_local`, run by a later `block_on`). Not under the bare loop.
    Spawn {
        wrap: Wrap,
        local: bool,
        ops: Vec<Op>,
    },
    /// Awaits the tasks spawned so far by this sub-program.
    AwaitTasks,
    /// `tokio::join!` of two branches.
    Join(Box<[Branch; 2]>),
    /// `tokio::select!` (biased) of two branches: the loser is dropped part-way.
    Select(Box<[Branch; 2]>),
    /// The sub-program, as sync code on a new OS thread.
    Thread(Vec<Op>),
}

fn op() -> impl Strategy<Value = Op> {
    let leaf = prop_oneof![
        3 => (0..4u8).prop_map(Op::Enter),
        3 => (0..4u8).prop_map(Op::Drop),
        1 => (0..8u8).prop_map(Op::DropAny),
        5 => Just(Op::Observe),
        2 => Just(Op::Yield),
        1 => Just(Op::AwaitTasks),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        let ops = proptest::collection::vec(inner, 0..5);
        let branch = (proptest::option::weighted(0.7, 0..4u8), ops.clone());
        let wrap = prop_oneof![
            2 => Just(Wrap::Bare),
            2 => Just(Wrap::InCurrent),
            1 => (0..4u8).prop_map(Wrap::With),
        ];
        prop_oneof![
            2 => (0..4u8, ops.clone()).prop_map(|(a, ops)| Op::InAgreement(a, ops)),
            1 => (0..4u8, any::<bool>(), ops.clone())
                .prop_map(|(agreement, method, ops)| Op::With { agreement, method, ops }),
            3 => (any::<bool>(), ops.clone()).prop_map(|(local, ops)| Op::BlockOn { local, ops }),
            3 => (wrap, any::<bool>(), ops.clone())
                .prop_map(|(wrap, local, ops)| Op::Spawn { wrap, local, ops }),
            1 => (branch.clone(), branch.clone()).prop_map(|(a, b)| Op::Join(Box::new([a, b]))),
            1 => (branch.clone(), branch).prop_map(|(a, b)| Op::Select(Box::new([a, b]))),
            1 => ops.prop_map(Op::Thread),
        ]
    })
}

// ---------------------------------------------------------------------------------------
// The model.

/// Who entered a thread scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Owner {
    /// Code outside any tokio task.
    Outside,
    /// The task the interpreter labelled so.
    Task(u64),
}

thread_local! {
    /// The model's thread scopes on this thread: `(token, agreement, owner)`, innermost last.
    static MODEL: RefCell<Vec<(u64, u8, Owner)>> = const { RefCell::new(Vec::new()) };
    /// The real guards kept on this thread, by owner, with their model token. (Kept here
    /// rather than in the futures so the interpreter's futures are `Send`; a guard never
    /// leaves the thread that entered it, as every runtime is current-thread.)
    static GUARDS: RefCell<BTreeMap<Owner, Vec<(u64, AgreementGuard)>>> = const { RefCell::new(BTreeMap::new()) };
}

/// Model tokens and task labels.
static NEXT: AtomicU64 = AtomicU64::new(1);

fn model_push(agreement: u8, owner: Owner) -> u64 {
    let token = NEXT.fetch_add(1, Relaxed);
    MODEL.with(|m| m.borrow_mut().push((token, agreement, owner)));
    token
}

fn model_remove(token: u64) {
    MODEL.with(|m| m.borrow_mut().retain(|(t, ..)| *t != token));
}

/// Where a piece of the program runs.
#[derive(Clone, Debug)]
struct Ctx {
    owner: Owner,
    /// The `with_agreement` scopes around this code, innermost last.
    tasks: Vec<u8>,
    exec: Exec,
    failures: Arc<Mutex<Vec<String>>>,
}

/// What polls the current future.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exec {
    /// A tokio current-thread runtime; `local`: inside a `LocalSet`.
    Tokio { local: bool },
    /// A bare loop with a no-op waker (also used for sync code).
    Bare,
}

impl Ctx {
    fn within(&self, agreement: u8) -> Ctx {
        let mut ctx = self.clone();
        ctx.tasks.push(agreement);
        ctx
    }

    /// The model's answer: innermost task scope, else innermost thread scope of this owner.
    fn predict(&self) -> Option<u8> {
        self.tasks.last().copied().or_else(|| {
            MODEL.with(|m| {
                m.borrow()
                    .iter()
                    .rev()
                    .find(|(_, _, owner)| *owner == self.owner)
                    .map(|(_, agreement, _)| *agreement)
            })
        })
    }

    fn fail(&self, message: String) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(message);
    }
}

fn observe(ctx: &Ctx) {
    let expected = ctx.predict().map(|a| AGREEMENTS[usize::from(a)]);
    let current = current_agreement();
    let capture = testing::capture();
    billable();
    let billed: Vec<(String, String, u64)> = capture
        .usage()
        .into_iter()
        .map(|c| (c.agreement, c.feature, c.value))
        .collect();
    let unattributed = capture.unattributed("f");
    drop(capture);
    let billed_ok = match expected {
        Some(a) => billed == [(a.to_owned(), "f".to_owned(), 1)] && unattributed == 0,
        None => billed.is_empty() && unattributed == 1,
    };
    if current.as_ref().map(AgreementId::as_str) != expected || !billed_ok {
        let model = MODEL.with(|m| m.borrow().clone());
        ctx.fail(format!(
            "observed in {:?} under {:?} (task scopes {:?}, thread scopes {model:?}): \
             expected {expected:?}, current_agreement() = {current:?}, billed {billed:?}, \
             unattributed {unattributed}",
            ctx.owner, ctx.exec, ctx.tasks,
        ));
    }
}

fn enter(owner: Owner, agreement: u8) {
    let guard = enter_agreement(id(agreement));
    let token = model_push(agreement, owner);
    GUARDS.with(|g| {
        g.borrow_mut()
            .entry(owner)
            .or_default()
            .push((token, guard))
    });
}

fn drop_any(index: u8) {
    let taken = GUARDS.with(|g| {
        let mut guards = g.borrow_mut();
        let count: usize = guards.values().map(Vec::len).sum();
        let mut i = usize::from(index).checked_rem(count)?;
        let list = guards.values_mut().find(|l| {
            let here = i < l.len();
            if !here {
                i -= l.len();
            }
            here
        })?;
        Some(list.remove(i))
    });
    if let Some((token, guard)) = taken {
        drop(guard);
        model_remove(token);
    }
}

fn drop_guard(owner: Owner, index: u8) {
    let taken = GUARDS.with(|g| {
        let mut guards = g.borrow_mut();
        let list = guards.get_mut(&owner).filter(|l| !l.is_empty())?;
        let i = usize::from(index) % list.len();
        Some(list.remove(i))
    });
    if let Some((token, guard)) = taken {
        drop(guard);
        model_remove(token);
    }
}

/// Drops, oldest first, the guards `owner` still keeps (when its task ends or is dropped).
struct Cleanup(Owner);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let list = GUARDS.with(|g| g.borrow_mut().remove(&self.0));
        for (token, guard) in list.unwrap_or_default() {
            drop(guard);
            model_remove(token);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The interpreter.

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor of sync code outside any executor: spawned tasks wait for a `block_on`.
struct Env {
    local: LocalSet,
    rt: Runtime,
    pending: Vec<JoinHandle<()>>,
}

/// Runs a whole program as sync code on this thread, outside any task, then drives the
/// tasks left pending, and checks that nothing is left in scope.
fn run_root(ops: &[Op], failures: Arc<Mutex<Vec<String>>>) {
    let ctx = Ctx {
        owner: Owner::Outside,
        tasks: Vec::new(),
        exec: Exec::Bare,
        failures,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut env = Env {
        local: LocalSet::new(),
        rt,
        pending: Vec::new(),
    };
    {
        let _cleanup = Cleanup(Owner::Outside);
        run_sync(&ctx, ops, Some(&mut env));
        let pending = std::mem::take(&mut env.pending);
        env.local.block_on(&env.rt, async {
            for task in pending {
                task.await.expect("task");
            }
        });
    }
    drop(env);
    let model = MODEL.with(|m| m.borrow().clone());
    if !model.is_empty() {
        ctx.fail(format!("model scopes left at the end: {model:?}"));
    }
    if let Some(left) = current_agreement() {
        ctx.fail(format!("{left} still in scope at the end of the program"));
    }
}

/// Runs `ops` as sync code. `env`: the runtime, when not inside any executor.
fn run_sync(ctx: &Ctx, ops: &[Op], mut env: Option<&mut Env>) {
    for op in ops {
        match op {
            Op::Enter(a) => enter(ctx.owner, *a),
            Op::Drop(i) => drop_guard(ctx.owner, *i),
            Op::DropAny(i) => drop_any(*i),
            Op::Observe => observe(ctx),
            Op::InAgreement(a, ops) => {
                let token = model_push(*a, ctx.owner);
                in_agreement(id(*a), || run_sync(ctx, ops, env.as_deref_mut()));
                model_remove(token);
            }
            Op::BlockOn { local, ops } => {
                let Some(env) = env.as_deref_mut() else {
                    continue; // inside an executor: cannot block
                };
                let inner = Ctx {
                    exec: Exec::Tokio { local: *local },
                    ..ctx.clone()
                };
                let future = run_async(inner, ops.clone());
                if *local {
                    env.local.block_on(&env.rt, future);
                } else {
                    env.rt.block_on(future);
                }
            }
            Op::Spawn { wrap, local, ops } => {
                let Some(env) = env.as_deref_mut() else {
                    continue;
                };
                let task = spawned(ctx, wrap, ops.clone(), *local);
                let handle = if *local {
                    env.local.spawn_local(task)
                } else {
                    env.rt.spawn(task)
                };
                env.pending.push(handle);
            }
            Op::Thread(ops) => on_thread(ctx, ops),
            Op::Yield | Op::AwaitTasks | Op::With { .. } | Op::Join(_) | Op::Select(_) => {
                let inner = Ctx {
                    exec: Exec::Bare,
                    ..ctx.clone()
                };
                poll_bare(run_async(inner, vec![op.clone()]));
            }
        }
    }
}

/// Runs `ops` as one future.
fn run_async(ctx: Ctx, ops: Vec<Op>) -> BoxFuture {
    Box::pin(async move {
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        for op in ops {
            match op {
                Op::Enter(a) => enter(ctx.owner, a),
                Op::Drop(i) => drop_guard(ctx.owner, i),
                Op::DropAny(i) => drop_any(i),
                Op::Observe => observe(&ctx),
                Op::Yield => tokio::task::yield_now().await,
                Op::InAgreement(a, ops) => {
                    let token = model_push(a, ctx.owner);
                    in_agreement(id(a), || run_sync(&ctx, &ops, None));
                    model_remove(token);
                }
                Op::With {
                    agreement,
                    method,
                    ops,
                } => {
                    let inner = run_async(ctx.within(agreement), ops);
                    if method {
                        inner.with_agreement(id(agreement)).await;
                    } else {
                        with_agreement(id(agreement), inner).await;
                    }
                }
                Op::BlockOn { .. } => {} // inside an executor: cannot block
                Op::Spawn { wrap, local, ops } => {
                    let Exec::Tokio {
                        local: in_local_set,
                    } = ctx.exec
                    else {
                        continue; // the bare loop runs no tasks
                    };
                    let local = local && in_local_set;
                    let task = spawned(&ctx, &wrap, ops, local);
                    tasks.push(if local {
                        tokio::task::spawn_local(task)
                    } else {
                        tokio::spawn(task)
                    });
                }
                Op::AwaitTasks => {
                    for task in tasks.drain(..) {
                        task.await.expect("task");
                    }
                }
                Op::Join(branches) => {
                    let [a, b] = *branches;
                    let (a, b) = (branch(&ctx, a), branch(&ctx, b));
                    tokio::join!(a, b);
                }
                Op::Select(branches) => {
                    let [a, b] = *branches;
                    let (a, b) = (branch(&ctx, a), branch(&ctx, b));
                    tokio::select! {
                        biased;
                        () = a => {}
                        () = b => {}
                    }
                }
                Op::Thread(ops) => on_thread(&ctx, &ops),
            }
        }
        for task in tasks {
            task.await.expect("task");
        }
    })
}

/// A new task's future, labelled with a new owner; `.in_current_agreement()` is applied
/// here, in the spawner's context.
fn spawned(parent: &Ctx, wrap: &Wrap, ops: Vec<Op>, local: bool) -> BoxFuture {
    let owner = Owner::Task(NEXT.fetch_add(1, Relaxed));
    let tasks = match wrap {
        Wrap::Bare => Vec::new(),
        Wrap::InCurrent => parent.predict().into_iter().collect(),
        Wrap::With(a) => vec![*a],
    };
    let ctx = Ctx {
        owner,
        tasks,
        exec: Exec::Tokio { local },
        failures: Arc::clone(&parent.failures),
    };
    let body = async move {
        let _cleanup = Cleanup(owner);
        run_async(ctx, ops).await;
    };
    match wrap {
        Wrap::Bare => Box::pin(body),
        Wrap::InCurrent => Box::pin(body.in_current_agreement()),
        Wrap::With(a) => Box::pin(body.with_agreement(id(*a))),
    }
}

/// A `join!`/`select!` branch: same task, its own scope.
fn branch(ctx: &Ctx, (agreement, ops): Branch) -> BoxFuture {
    match agreement {
        Some(a) => Box::pin(with_agreement(id(a), run_async(ctx.within(a), ops))),
        None => run_async(ctx.clone(), ops),
    }
}

/// Runs `ops` as a whole program on a new OS thread.
fn on_thread(ctx: &Ctx, ops: &[Op]) {
    let (ops, failures) = (ops.to_vec(), Arc::clone(&ctx.failures));
    std::thread::spawn(move || run_root(&ops, failures))
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

/// Polls `future` to completion with a no-op waker: an executor that is not tokio. (Every
/// future the interpreter builds under it completes by being polled again.)
fn poll_bare(mut future: BoxFuture) {
    let mut cx = Context::from_waker(Waker::noop());
    while future.as_mut().poll(&mut cx).is_pending() {}
}

fn run(ops: &[Op]) -> Vec<String> {
    let failures = Arc::new(Mutex::new(Vec::new()));
    run_root(ops, Arc::clone(&failures));
    let failures = failures.lock().unwrap_or_else(|e| e.into_inner());
    failures.clone()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn scopes_match_the_model(ops in proptest::collection::vec(op(), 1..8)) {
        let failures = run(&ops);
        prop_assert!(failures.is_empty(), "{:#?}", failures);
    }
}

// ---------------------------------------------------------------------------------------
// The interpreter on fixed programs, one per situation the random ones are meant to reach.

fn with(agreement: u8, ops: Vec<Op>) -> Op {
    Op::With {
        agreement,
        method: false,
        ops,
    }
}

fn spawn(wrap: Wrap, local: bool, ops: Vec<Op>) -> Op {
    Op::Spawn { wrap, local, ops }
}

fn block_on(local: bool, ops: Vec<Op>) -> Op {
    Op::BlockOn { local, ops }
}

#[test]
fn fixed_programs_match_the_model() {
    use Op::{AwaitTasks, Drop, DropAny, Enter, InAgreement, Join, Observe, Select, Thread, Yield};
    let programs: Vec<Vec<Op>> = vec![
        // Guards dropped out of order, and in_agreement around guards left entered.
        vec![
            Enter(0),
            Enter(1),
            Enter(2),
            Drop(1),
            Observe,
            Drop(2),
            Observe,
            InAgreement(3, vec![Observe, Enter(0), Observe]),
            Observe,
            Drop(0),
            Observe,
        ],
        // A sync scope is seen by block_on's own future, under with_agreement, too.
        vec![
            Enter(0),
            block_on(false, vec![Observe, with(1, vec![Yield, Observe]), Observe]),
            InAgreement(2, vec![block_on(true, vec![Observe])]),
        ],
        // A local task holds a guard across yields; the others must not see it.
        vec![block_on(
            true,
            vec![
                spawn(
                    Wrap::Bare,
                    true,
                    vec![Enter(1), Yield, Observe, Yield, Observe],
                ),
                spawn(
                    Wrap::Bare,
                    true,
                    vec![Observe, Yield, Observe, Enter(2), Yield],
                ),
                Yield,
                Observe,
                AwaitTasks,
                Observe,
            ],
        )],
        // Guards dropped by other code on the thread than the one that entered them.
        vec![
            Enter(0),
            Enter(2),
            block_on(
                true,
                vec![
                    spawn(
                        Wrap::Bare,
                        true,
                        vec![
                            Enter(1),
                            Yield,
                            Observe,
                            DropAny(1),
                            Observe,
                            Yield,
                            Observe,
                        ],
                    ),
                    Yield,
                    Observe,
                    DropAny(2),
                    Observe,
                    AwaitTasks,
                    Observe,
                ],
            ),
            Observe,
        ],
        // Tasks spawned before a sync scope, run inside its block_on, do not see it.
        vec![
            spawn(Wrap::Bare, false, vec![Observe]),
            spawn(Wrap::Bare, true, vec![Observe, Yield, Observe]),
            Enter(0),
            block_on(true, vec![Observe, Yield, Observe]),
        ],
        // join!/select! branches with their own scopes (and one without).
        vec![
            Enter(3),
            block_on(
                true,
                vec![
                    Join(Box::new([
                        (Some(0), vec![Observe, Yield, Observe]),
                        (Some(1), vec![Yield, Observe, Yield, Observe]),
                    ])),
                    Select(Box::new([
                        (Some(2), vec![Yield, Observe, Yield, Observe]),
                        (None, vec![Enter(1), Observe, Yield, Observe]),
                    ])),
                    Observe,
                    spawn(
                        Wrap::Bare,
                        true,
                        vec![Join(Box::new([
                            (Some(0), vec![Enter(2), Yield, Observe]),
                            (None, vec![Observe, Yield, Observe]),
                        ]))],
                    ),
                ],
            ),
        ],
        // Tasks spawned inside and outside with_agreement, with and without
        // in_current_agreement, from tasks and from sync code.
        vec![
            InAgreement(
                0,
                vec![
                    spawn(Wrap::InCurrent, false, vec![Observe]),
                    spawn(Wrap::Bare, true, vec![Observe]),
                ],
            ),
            block_on(
                true,
                vec![
                    with(
                        1,
                        vec![
                            spawn(Wrap::InCurrent, true, vec![Observe, Yield, Observe]),
                            spawn(Wrap::Bare, false, vec![Observe]),
                            spawn(Wrap::With(2), true, vec![Observe]),
                        ],
                    ),
                    spawn(Wrap::InCurrent, true, vec![Observe]),
                    spawn(
                        Wrap::Bare,
                        true,
                        vec![
                            Enter(3),
                            spawn(Wrap::InCurrent, true, vec![Observe]),
                            spawn(Wrap::Bare, true, vec![Observe]),
                        ],
                    ),
                ],
            ),
        ],
        // A bare executor, and another thread.
        vec![
            Enter(0),
            with(
                1,
                vec![Observe, Yield, InAgreement(2, vec![Observe]), Observe],
            ),
            Thread(vec![Observe, Enter(3), Observe]),
            block_on(
                false,
                vec![spawn(Wrap::Bare, false, vec![Thread(vec![Observe])])],
            ),
            Observe,
        ],
    ];
    for program in programs {
        let failures = run(&program);
        assert!(failures.is_empty(), "{program:#?}\n{failures:#?}");
    }
}
