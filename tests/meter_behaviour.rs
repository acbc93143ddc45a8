//! What `#[meter]` records, and when: each `on` mode through panics, cancellation, early
//! `return` and `?`, with the agreement and value expressions, recursion, absolute meters
//! and `#[track_caller]`. Everything is observed through `kinde_meter::testing::capture()`,
//! which is per thread (and per future with `Capture::scope`).

use std::future::Future;
use std::panic::{self, AssertUnwindSafe, Location};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use kinde_meter::{AgreementId, Outcome, enter_agreement, meter, testing, with_agreement};

const ACME: &str = "agreement_acme";
const GLOBEX: &str = "agreement_globex";

fn id(s: &str) -> AgreementId {
    s.parse().expect("a valid agreement id")
}

/// Polls `fut` once, with a waker that does nothing.
fn poll_once<F: Future>(fut: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

/// Runs `f`, catching its panic. (The panic message goes to the test's captured output;
/// the process-wide panic hook is left alone, as tests run in parallel.)
fn catch<R>(f: impl FnOnce() -> R) -> Option<R> {
    panic::catch_unwind(AssertUnwindSafe(f)).ok()
}

// ---------------------------------------------------------------------------------------
// Sync functions, each mode.

#[meter(feature = "sync_call")]
fn sync_call(fail: bool) -> u32 {
    assert!(!fail, "the body panics");
    1
}

#[meter(feature = "sync_return", on = "return")]
fn sync_return(fail: bool) -> u32 {
    assert!(!fail, "the body panics");
    1
}

#[meter(feature = "sync_ok", on = "ok")]
fn sync_ok(input: &str) -> Result<u32, String> {
    assert!(input != "panic", "the body panics");
    if input.is_empty() {
        return Err("empty".to_owned());
    }
    if input == "early" {
        return Ok(0);
    }
    let n: u32 = input
        .parse()
        .map_err(|_| format!("not a number: {input}"))?;
    Ok(n)
}

#[meter(feature = "sync_return_try", on = "return")]
fn sync_return_try(input: &str) -> Result<u32, std::num::ParseIntError> {
    if input == "early" {
        return Ok(0);
    }
    let n: u32 = input.parse()?;
    Ok(n)
}

#[test]
fn sync_call_counts_every_call_even_one_that_panics() {
    let capture = testing::capture();
    let _scope = enter_agreement(id(ACME));
    assert_eq!(sync_call(false), 1);
    assert_eq!(catch(|| sync_call(true)), None);
    assert_eq!(capture.total(ACME, "sync_call"), 2);
}

#[test]
fn sync_return_counts_returns_not_panics() {
    let capture = testing::capture();
    let _scope = enter_agreement(id(ACME));
    assert_eq!(sync_return(false), 1);
    assert_eq!(catch(|| sync_return(true)), None);
    assert_eq!(capture.total(ACME, "sync_return"), 1);
}

#[test]
fn sync_return_counts_early_returns_and_question_mark_errors() {
    let capture = testing::capture();
    let _scope = enter_agreement(id(ACME));
    assert_eq!(sync_return_try("early"), Ok(0));
    assert!(sync_return_try("x").is_err());
    assert_eq!(sync_return_try("3"), Ok(3));
    assert_eq!(capture.total(ACME, "sync_return_try"), 3);
}

#[test]
fn sync_ok_counts_successes_only() {
    let capture = testing::capture();
    let _scope = enter_agreement(id(ACME));
    assert_eq!(sync_ok("7"), Ok(7));
    assert_eq!(
        sync_ok("early"),
        Ok(0),
        "an early `return Ok(..)` is a success"
    );
    assert!(sync_ok("").is_err(), "an early `return Err(..)` is not");
    assert!(sync_ok("x").is_err(), "a `?` error is not");
    assert_eq!(catch(|| sync_ok("panic")), None, "a panic is not");
    assert_eq!(capture.total(ACME, "sync_ok"), 2);
}

// ---------------------------------------------------------------------------------------
// A sync `on = "return"` call made while another panic unwinds (from a `Drop`) returns
// normally, so it counts.

struct MetersOnDrop;

impl Drop for MetersOnDrop {
    fn drop(&mut self) {
        assert!(std::thread::panicking());
        assert_eq!(sync_return(false), 1);
    }
}

#[test]
fn sync_return_called_during_unwinding_counts() {
    let capture = testing::capture();
    let _scope = enter_agreement(id(ACME));
    let outcome = catch(|| {
        let _guard = MetersOnDrop;
        panic!("unwinding through a metered call");
    });
    assert_eq!(outcome, None::<()>);
    assert_eq!(capture.total(ACME, "sync_return"), 1);
}

// ---------------------------------------------------------------------------------------
// `value` and `agreement`.

#[meter(feature = "rows", value = rows.len(), on = "return")]
fn consume(rows: Vec<String>) -> usize {
    // The body moves `rows`: `value` was evaluated before.
    rows.into_iter().filter(|r| !r.is_empty()).count()
}

#[meter(feature = "rows_ok", value = rows.len(), on = "ok", agreement = &tenant)]
fn consume_for(tenant: String, rows: Vec<u8>) -> Option<(String, Vec<u8>)> {
    Some((tenant, rows))
}

#[meter(feature = "rows_async", value = rows.len() * 2, on = "ok")]
async fn consume_async(mut rows: Vec<u8>) -> Result<usize, String> {
    rows.clear();
    tokio::task::yield_now().await;
    Ok(rows.len())
}

#[meter(feature = "explicit", agreement = agreement, value = units)]
fn explicit(agreement: &AgreementId, units: u16) {}

#[meter(feature = "signed", value = delta)]
fn signed(delta: i64) -> i64 {
    delta
}

#[test]
fn value_reads_the_arguments_before_the_body_moves_them() {
    let capture = testing::capture();
    let _scope = enter_agreement(id(ACME));
    let rows = vec!["a".to_owned(), String::new(), "c".to_owned()];
    assert_eq!(consume(rows), 2);
    assert_eq!(capture.total(ACME, "rows"), 3);
}

#[test]
fn agreement_reads_the_arguments_before_the_body_moves_them() {
    let capture = testing::capture();
    let _scope = enter_agreement(id(ACME));
    let out = consume_for(GLOBEX.to_owned(), vec![1, 2, 3, 4]);
    assert_eq!(out.map(|(t, r)| (t, r.len())), Some((GLOBEX.to_owned(), 4)));
    assert_eq!(capture.total(GLOBEX, "rows_ok"), 4);
    assert_eq!(capture.total(ACME, "rows_ok"), 0);
}

#[tokio::test]
async fn async_value_is_evaluated_before_the_body_runs() {
    let capture = testing::capture();
    let out = with_agreement(id(ACME), consume_async(vec![1, 2, 3])).await;
    assert_eq!(out, Ok(0));
    assert_eq!(capture.total(ACME, "rows_async"), 6);
}

#[test]
fn explicit_agreement_overrides_the_scope() {
    let capture = testing::capture();
    let _scope = enter_agreement(id(ACME));
    explicit(&id(GLOBEX), 5);
    assert_eq!(capture.total(GLOBEX, "explicit"), 5);
    assert_eq!(capture.total(ACME, "explicit"), 0);
}

#[test]
fn no_agreement_in_scope_is_unattributed() {
    let capture = testing::capture();
    assert_eq!(sync_call(false), 1);
    assert_eq!(sync_return(false), 1);
    assert_eq!(sync_ok("1"), Ok(1));
    assert_eq!(capture.unattributed("sync_call"), 1);
    assert_eq!(capture.unattributed("sync_return"), 1);
    assert_eq!(capture.unattributed("sync_ok"), 1);
    assert!(capture.usage().is_empty(), "{:?}", capture.usage());
}

#[test]
fn a_negative_value_at_run_time_is_refused_not_counted() {
    let capture = testing::capture();
    let _scope = enter_agreement(id(ACME));
    assert_eq!(signed(4), 4);
    assert_eq!(signed(-2), -2);
    assert_eq!(capture.total(ACME, "signed"), 4);
    assert_eq!(capture.invalid().len(), 1, "{:?}", capture.invalid());
}

// ---------------------------------------------------------------------------------------
// Recursion, absolute meters, `#[track_caller]`, a user `Outcome`.

#[meter(feature = "fib", on = "return")]
fn fib(n: u32) -> u64 {
    if n < 2 {
        return u64::from(n);
    }
    fib(n - 1) + fib(n - 2)
}

#[meter(feature = "walk", on = "ok")]
fn walk(depth: u32) -> Option<u32> {
    if depth == 0 {
        return Some(0);
    }
    Some(walk(depth - 1)? + 1)
}

#[meter(feature = "seats", meter_type = "absolute", value = seats)]
fn set_seats(seats: u32) {}

#[track_caller]
#[meter(feature = "located")]
fn located() -> &'static Location<'static> {
    Location::caller()
}

#[track_caller]
#[meter(feature = "located_ok", on = "ok")]
fn located_ok() -> Option<&'static Location<'static>> {
    Some(Location::caller())
}

#[derive(Debug, PartialEq)]
enum Delivery {
    Sent,
    Bounced,
}

impl Outcome for Delivery {
    fn is_success(&self) -> bool {
        *self == Delivery::Sent
    }
}

#[meter(feature = "deliveries", on = "ok")]
fn deliver(to: &str) -> Delivery {
    if to.contains('@') {
        Delivery::Sent
    } else {
        Delivery::Bounced
    }
}

#[test]
fn recursion_records_once_per_call() {
    let capture = testing::capture();
    let _scope = enter_agreement(id(ACME));
    assert_eq!(fib(5), 5);
    // fib(5) makes 15 calls in all.
    assert_eq!(capture.total(ACME, "fib"), 15);
    assert_eq!(walk(3), Some(3));
    assert_eq!(capture.total(ACME, "walk"), 4);
}

#[test]
fn absolute_meters_keep_the_last_value() {
    let capture = testing::capture();
    let _scope = enter_agreement(id(ACME));
    set_seats(10);
    set_seats(3);
    set_seats(7);
    assert_eq!(capture.absolute(ACME, "seats"), Some(7));
    assert_eq!(capture.total(ACME, "seats"), 0, "never summed as a delta");
}

#[test]
fn track_caller_still_reports_the_caller() {
    let line = line!() + 1;
    let location = located();
    assert_eq!((location.file(), location.line()), (file!(), line));
    let line = line!() + 1;
    let location = located_ok().map(|l| (l.file(), l.line()));
    assert_eq!(location, Some((file!(), line)));
}

#[test]
fn a_user_outcome_decides_what_counts() {
    let capture = testing::capture();
    let _scope = enter_agreement(id(ACME));
    assert_eq!(deliver("a@b"), Delivery::Sent);
    assert_eq!(deliver("nobody"), Delivery::Bounced);
    assert_eq!(capture.total(ACME, "deliveries"), 1);
}

// ---------------------------------------------------------------------------------------
// Async functions: first poll, completion, cancellation, panics.

#[meter(feature = "async_call")]
async fn async_call() -> u32 {
    tokio::task::yield_now().await;
    1
}

#[meter(feature = "async_return", on = "return")]
async fn async_return(fail: bool) -> u32 {
    tokio::task::yield_now().await;
    assert!(!fail, "the body panics");
    1
}

#[meter(feature = "async_ok", on = "ok")]
async fn async_ok(input: &str) -> Result<u32, String> {
    tokio::task::yield_now().await;
    if input.is_empty() {
        return Err("empty".to_owned());
    }
    let n: u32 = input.parse().map_err(|_| "not a number".to_owned())?;
    Ok(n)
}

#[meter(feature = "async_sleep", on = "return")]
async fn sleepy(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

#[test]
fn async_call_counts_at_the_first_poll_not_at_creation() {
    let capture = testing::capture();
    let _scope = enter_agreement(id(ACME));
    let never_polled = async_call();
    drop(never_polled);
    assert_eq!(
        capture.total(ACME, "async_call"),
        0,
        "creating the future records nothing"
    );

    let mut fut = pin!(async_call());
    assert!(poll_once(fut.as_mut()).is_pending());
    assert_eq!(
        capture.total(ACME, "async_call"),
        1,
        "the first poll records"
    );
    assert_eq!(poll_once(fut.as_mut()), Poll::Ready(1));
    assert_eq!(capture.total(ACME, "async_call"), 1, "and only the first");
}

#[test]
fn async_return_counts_at_completion() {
    let capture = testing::capture();
    let _scope = enter_agreement(id(ACME));
    let mut fut = pin!(async_return(false));
    assert!(poll_once(fut.as_mut()).is_pending());
    assert_eq!(capture.total(ACME, "async_return"), 0, "not while it runs");
    assert_eq!(poll_once(fut.as_mut()), Poll::Ready(1));
    assert_eq!(capture.total(ACME, "async_return"), 1);
}

#[test]
fn cancelled_async_calls_count_for_call_only() {
    let capture = testing::capture();
    let _scope = enter_agreement(id(ACME));
    {
        let mut call = pin!(async_call());
        let mut ret = pin!(async_return(false));
        let mut ok = pin!(async_ok("3"));
        assert!(poll_once(call.as_mut()).is_pending());
        assert!(poll_once(ret.as_mut()).is_pending());
        assert!(poll_once(ok.as_mut()).is_pending());
        // Dropped here, after the first poll.
    }
    assert_eq!(capture.total(ACME, "async_call"), 1);
    assert_eq!(capture.total(ACME, "async_return"), 0);
    assert_eq!(capture.total(ACME, "async_ok"), 0);
}

#[tokio::test]
async fn a_timed_out_call_does_not_count() {
    let capture = testing::capture();
    with_agreement(id(ACME), async {
        let late = tokio::time::timeout(Duration::from_millis(5), sleepy(10_000)).await;
        assert!(late.is_err());
        assert_eq!(sleepy(1).await, 1);
    })
    .await;
    assert_eq!(capture.total(ACME, "async_sleep"), 1);
}

#[tokio::test]
async fn async_ok_counts_successes_only() {
    let capture = testing::capture();
    with_agreement(id(ACME), async {
        assert_eq!(async_ok("2").await, Ok(2));
        assert!(async_ok("").await.is_err(), "an early `return Err(..)`");
        assert!(async_ok("x").await.is_err(), "a `?` error");
    })
    .await;
    assert_eq!(capture.total(ACME, "async_ok"), 1);
}

#[tokio::test]
async fn a_panicking_async_call_does_not_count() {
    let capture = testing::capture();
    // A current-thread runtime polls the task on this thread, under this capture.
    let task = tokio::spawn(with_agreement(id(ACME), async_return(true)));
    assert!(task.await.is_err_and(|e| e.is_panic()));
    assert_eq!(with_agreement(id(ACME), async_return(false)).await, 1);
    assert_eq!(capture.total(ACME, "async_return"), 1);
}

#[test]
fn multi_thread_tasks_are_captured_through_scope() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let capture = testing::capture();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            runtime.spawn(capture.scope(with_agreement(id(ACME), async {
                async_call().await + async_return(false).await
            })))
        })
        .collect();
    for task in tasks {
        assert_eq!(runtime.block_on(task).ok(), Some(2));
    }
    assert_eq!(capture.total(ACME, "async_call"), 8);
    assert_eq!(capture.total(ACME, "async_return"), 8);
}

// ---------------------------------------------------------------------------------------
// Functions returning a future (`#[async_trait]`): the inner future is metered.

#[async_trait::async_trait]
trait Store {
    async fn put(&self, key: &str) -> Result<usize, String>;
    async fn touch(&self);
    async fn slow(&self) -> u32;
}

struct Memory {
    agreement: AgreementId,
}

#[async_trait::async_trait]
impl Store for Memory {
    #[meter(feature = "puts", on = "ok", value = key.len(), agreement = &self.agreement)]
    async fn put(&self, key: &str) -> Result<usize, String> {
        tokio::task::yield_now().await;
        if key.is_empty() {
            return Err("empty key".to_owned());
        }
        Ok(key.len())
    }

    #[meter(feature = "touches", agreement = &self.agreement)]
    async fn touch(&self) {}

    #[meter(feature = "slow", on = "return", agreement = &self.agreement)]
    async fn slow(&self) -> u32 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        1
    }
}

#[tokio::test]
async fn async_trait_methods_meter_the_inner_future() {
    let capture = testing::capture();
    let store = Memory {
        agreement: id(GLOBEX),
    };
    assert_eq!(store.put("abc").await, Ok(3));
    assert!(store.put("").await.is_err());
    assert_eq!(capture.total(GLOBEX, "puts"), 3);

    // Boxing the future records nothing; running it does, once.
    drop(store.touch());
    assert_eq!(capture.total(GLOBEX, "touches"), 0);
    store.touch().await;
    assert_eq!(capture.total(GLOBEX, "touches"), 1);

    // Cancelled: not counted.
    let late = tokio::time::timeout(Duration::from_millis(5), store.slow()).await;
    assert!(late.is_err());
    assert_eq!(capture.total(GLOBEX, "slow"), 0);
}

// ---------------------------------------------------------------------------------------
// Functions returning a future they did not build as their last expression: every
// returned future is metered, early `return`s included, and nothing counts until the
// future runs.

type Boxed<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

#[meter(feature = "built_then_boxed", on = "return")]
fn built_then_boxed(n: u32) -> std::pin::Pin<Box<dyn Future<Output = u32> + Send>> {
    let fut = async move {
        tokio::task::yield_now().await;
        n
    };
    Box::pin(fut)
}

#[meter(feature = "early_boxed", on = "return", value = n)]
fn early_boxed(n: u64) -> Boxed<u64> {
    if n > 100 {
        return Box::pin(async move { n });
    }
    Box::pin(async move {
        tokio::task::yield_now().await;
        n
    })
}

#[meter(feature = "early_call")]
fn early_call(fast: bool) -> Boxed<u32> {
    if fast {
        return Box::pin(std::future::ready(1));
    }
    Box::pin(async { 2 })
}

/// A future built elsewhere: the function only passes it on.
async fn make_future(n: u32) -> u32 {
    tokio::task::yield_now().await;
    n
}

#[meter(feature = "passed_on")]
fn passed_on(n: u32) -> impl Future<Output = u32> + Send {
    make_future(n)
}

#[meter(feature = "passed_on_return", on = "return")]
fn passed_on_return(n: u32) -> impl Future<Output = u32> + Send {
    make_future(n)
}

#[meter(feature = "passed_on_ok", on = "ok", value = n)]
fn passed_on_ok(n: u32) -> impl Future<Output = Result<u32, String>> {
    if n == 0 {
        return std::future::ready(Err("zero".to_owned()));
    }
    std::future::ready(Ok(n))
}

#[test]
fn a_future_built_before_the_tail_counts_when_it_completes_not_when_dropped() {
    let capture = testing::capture();
    let _scope = enter_agreement(id(ACME));
    drop(built_then_boxed(1));
    assert_eq!(
        capture.total(ACME, "built_then_boxed"),
        0,
        "a future dropped unpolled records nothing"
    );
    let mut fut = pin!(built_then_boxed(2));
    assert!(poll_once(fut.as_mut()).is_pending());
    assert_eq!(
        capture.total(ACME, "built_then_boxed"),
        0,
        "not while it runs"
    );
    assert_eq!(poll_once(fut.as_mut()), Poll::Ready(2));
    assert_eq!(capture.total(ACME, "built_then_boxed"), 1);
}

#[test]
fn early_returned_futures_are_metered() {
    let capture = testing::capture();
    let _scope = enter_agreement(id(ACME));
    drop(early_boxed(200));
    drop(early_call(true));
    assert_eq!(capture.total(ACME, "early_boxed"), 0, "dropped unpolled");
    assert_eq!(capture.total(ACME, "early_call"), 0, "dropped unpolled");

    let mut early = pin!(early_boxed(200));
    assert_eq!(poll_once(early.as_mut()), Poll::Ready(200));
    let mut late = pin!(early_boxed(5));
    assert!(poll_once(late.as_mut()).is_pending());
    assert_eq!(poll_once(late.as_mut()), Poll::Ready(5));
    assert_eq!(
        capture.total(ACME, "early_boxed"),
        205,
        "both the early and the last future count once, with their value"
    );

    let mut fast = pin!(early_call(true));
    assert_eq!(poll_once(fast.as_mut()), Poll::Ready(1));
    let mut slow = pin!(early_call(false));
    assert_eq!(poll_once(slow.as_mut()), Poll::Ready(2));
    assert_eq!(capture.total(ACME, "early_call"), 2);
}

#[test]
fn a_future_passed_on_counts_when_polled_not_when_built() {
    let capture = testing::capture();
    let _scope = enter_agreement(id(ACME));
    drop(passed_on(1));
    drop(passed_on_return(1));
    assert_eq!(capture.total(ACME, "passed_on"), 0, "dropped unpolled");
    assert_eq!(
        capture.total(ACME, "passed_on_return"),
        0,
        "dropped unpolled"
    );

    let mut call = pin!(passed_on(3));
    let mut ret = pin!(passed_on_return(4));
    assert!(poll_once(call.as_mut()).is_pending());
    assert!(poll_once(ret.as_mut()).is_pending());
    assert_eq!(
        capture.total(ACME, "passed_on"),
        1,
        "the first poll records"
    );
    assert_eq!(
        capture.total(ACME, "passed_on_return"),
        0,
        "not before it completes"
    );
    assert_eq!(poll_once(call.as_mut()), Poll::Ready(3));
    assert_eq!(poll_once(ret.as_mut()), Poll::Ready(4));
    assert_eq!(capture.total(ACME, "passed_on"), 1, "and only the first");
    assert_eq!(capture.total(ACME, "passed_on_return"), 1);
}

#[tokio::test]
async fn an_ok_future_passed_on_counts_its_successes_when_they_complete() {
    let capture = testing::capture();
    with_agreement(id(ACME), async {
        drop(passed_on_ok(7));
        assert_eq!(passed_on_ok(0).await, Err("zero".to_owned()));
        assert_eq!(passed_on_ok(3).await, Ok(3));
    })
    .await;
    assert_eq!(capture.total(ACME, "passed_on_ok"), 3);
}

// ---------------------------------------------------------------------------------------
// `#[meter]` written by a `macro_rules!` macro: each key arrives as a fragment (wrapped
// in an invisible group by the compiler) and means what it means when written out.

macro_rules! metered_fn {
    (
        fn $name:ident($arg:ident);
        feature = $f:literal, on = $o:expr, value = $v:expr,
        agreement = $a:expr, meter_type = $t:literal, crate = $c:path $(,)?
    ) => {
        #[meter(feature = $f, on = $o, value = $v, agreement = $a, meter_type = $t, crate = $c)]
        fn $name($arg: &[u8]) -> Option<usize> {
            $arg.first().map(|_| $arg.len())
        }
    };
}

metered_fn! {
    fn macro_rows(rows);
    feature = "macro_rows", on = "ok", value = rows.len() * 2,
    agreement = GLOBEX, meter_type = "delta", crate = ::kinde_meter,
}

metered_fn! {
    fn macro_seats(seats);
    feature = "macro_seats", on = "return", value = seats.len(),
    agreement = "agreement_acme", meter_type = "absolute", crate = kinde_meter,
}

#[test]
fn a_meter_written_by_macro_rules_records_what_its_fragments_say() {
    let capture = testing::capture();
    assert_eq!(macro_rows(b"abc"), Some(3));
    assert_eq!(macro_rows(b""), None, "not a success: `on` came through");
    assert_eq!(
        capture.total(GLOBEX, "macro_rows"),
        6,
        "value and agreement"
    );

    assert_eq!(macro_seats(b"1234567"), Some(7));
    assert_eq!(macro_seats(b"12"), Some(2));
    assert_eq!(
        capture.absolute(ACME, "macro_seats"),
        Some(2),
        "an absolute meter: the last value"
    );
}
