//! Customer usage under faults: resolvers that hang, panic or fail for a while, huge
//! agreement pages, absolute meters, at-most-once, plan changes during ambiguous
//! attempts, merges after a billing change or across a cycle, and global restarts.
//! Against the emulator over 127.0.0.1, with the global reporter (one test at a time);
//! each checks conservation exactly.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use kinde_meter::api::{Agreement, AgreementId, CustomerId, FeatureCode};
use kinde_meter::resolve::{AgreementResolver, CustomerAgreements, ResolveFuture};
use kinde_meter::{
    AgreementEnded, Config, Customer, Delivery, Guard, Stats, UnsentReason, meter, with_customer,
};
use kinde_meter_emulator::{Emulator, Faults, RequestOutcome};
use kinde_meter_workspace::customers::{Seen, org_agreement, received};
use kinde_meter_workspace::reporter::{fast_config, wait_until};

static GLOBAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[meter(feature = "api_calls")]
fn api_call() {}

#[meter(feature = "seats", meter_type = "absolute", value = n, customer = customer)]
fn set_seats(customer: &Customer, n: u64) {}

fn emulator() -> Emulator {
    Emulator::builder()
        .plan("basic", ["api_calls", "seats"])
        .plan("pro", ["api_calls", "seats", "exports"])
        .organization("org_acme", "basic")
        .start()
        .expect("emulator")
}

fn acme() -> Customer {
    Customer::org("org_acme").expect("test setup")
}

async fn calls(customer: &Customer, n: u64) {
    with_customer(customer.clone(), async {
        for _ in 0..n {
            api_call();
        }
    })
    .await;
}

fn init(config: Config) -> Guard {
    kinde_meter::init(config).expect("init")
}

/// recorded + replayed = delivered + rejected + unsent + kept, over the deltas of two
/// snapshots of the process-wide counters.
#[track_caller]
fn assert_conserved(before: &Stats, after: &Stats) {
    let d = |f: fn(&Stats) -> u64| f(after) - f(before);
    let lhs = d(|s| s.recorded) + d(|s| s.replayed);
    let rhs = d(|s| s.delivered) + d(|s| s.rejected) + d(|s| s.unsent) + d(|s| s.kept);
    assert_eq!(lhs, rhs, "conservation: before {before:?}\nafter {after:?}");
}

// ----- resolvers -----

/// Answers `agreement` with `features`, except for the calls `hang_on` (1-based), which
/// never answer, and the first `panics` calls, which panic.
struct Scripted {
    agreement: AgreementId,
    features: Vec<FeatureCode>,
    calls: Arc<AtomicUsize>,
    hang_on: Vec<usize>,
    panics: usize,
    hang_all: bool,
}

impl Scripted {
    fn new(agreement: &str) -> Self {
        Self {
            agreement: agreement.parse().expect("test setup"),
            features: vec![FeatureCode::from_static("api_calls")],
            calls: Arc::default(),
            hang_on: Vec::new(),
            panics: 0,
            hang_all: false,
        }
    }
}

impl AgreementResolver for Scripted {
    fn agreements<'a>(&'a self, _customer: &'a Customer) -> ResolveFuture<'a> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            if n <= self.panics {
                panic!("resolver panic #{n}");
            }
            if self.hang_all || self.hang_on.contains(&n) {
                std::future::pending::<()>().await;
            }
            Ok(CustomerAgreements {
                customer_id: Some(CustomerId::new("customer_x").expect("test setup")),
                agreements: vec![Agreement::new(
                    self.agreement.clone(),
                    self.features.iter().cloned(),
                )],
            })
        })
    }
}

// ----- tests -----

/// Shutdown while the resolver never answers: returns by its deadline, the usage handed
/// back (not applied), conservation holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_a_lookup_hangs() {
    let _turn = GLOBAL.lock().await;
    let emulator = emulator();
    let (_, agreement) = org_agreement(&emulator, "org_acme");
    let mut resolver = Scripted::new(&agreement);
    resolver.hang_all = true;
    let seen = Seen::default();
    let before = kinde_meter::stats();
    let guard = init(seen.hooked(fast_config(&emulator)).resolver(resolver));
    calls(&acme(), 5).await;
    let report = guard.flush(Duration::from_millis(500)).await;
    assert!(report.timed_out, "{report:?}");
    let started = Instant::now();
    let report = guard.shutdown(Duration::from_secs(2)).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report.left_value(), 5, "{report:?}");
    assert!(
        report
            .left
            .iter()
            .all(|u| u.reason == UnsentReason::DeadlineExceeded && !u.maybe_applied)
    );
    assert_eq!(emulator.ledger_sum(), 0u64);
    assert_conserved(&before, &report.stats);
}

/// A stale answer's background refresh hangs once: it gives up at the lookup timeout,
/// so the customer's later records are not stuck behind it and the resolver is asked
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_hangs_once_does_not_block_the_customer() {
    let _turn = GLOBAL.lock().await;
    let emulator = emulator();
    let (_, agreement) = org_agreement(&emulator, "org_acme");
    let mut resolver = Scripted::new(&agreement);
    resolver.hang_on = vec![2];
    let resolver_calls = Arc::clone(&resolver.calls);
    let seen = Seen::default();
    let guard = init(
        seen.hooked(fast_config(&emulator))
            .request_timeout(Duration::from_secs(1))
            .resolver_cache(Duration::from_secs(1), Duration::from_secs(1))
            .resolver(resolver),
    );
    calls(&acme(), 1).await;
    assert!(!guard.flush(Duration::from_secs(5)).await.timed_out);
    // Stale (past the ttl, within ttl + stale_for): served, and a refresh (call 2) starts.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    calls(&acme(), 1).await;
    assert!(!guard.flush(Duration::from_secs(5)).await.timed_out);
    // Past the stale window: a real lookup is needed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    calls(&acme(), 1).await;
    let report = guard.flush(Duration::from_secs(8)).await;
    let n = resolver_calls.load(Ordering::SeqCst);
    let shutdown = guard.shutdown(Duration::from_secs(2)).await;
    assert!(
        !report.timed_out && received(&emulator, &agreement, "api_calls") == 3,
        "third call stuck: flush {report:?}, resolver calls {n}, delivered {}, left {:?}, errors {:?}",
        received(&emulator, &agreement, "api_calls"),
        shutdown.left,
        seen.errors()
    );
}

/// A resolver that panics on every call: what happens to the usage, and is anything
/// reported?
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_that_always_panics() {
    let _turn = GLOBAL.lock().await;
    let emulator = emulator();
    let (_, agreement) = org_agreement(&emulator, "org_acme");
    let mut resolver = Scripted::new(&agreement);
    resolver.panics = usize::MAX;
    let resolver_calls = Arc::clone(&resolver.calls);
    let seen = Seen::default();
    let before = kinde_meter::stats();
    let guard = init(seen.hooked(fast_config(&emulator)).resolver(resolver));
    calls(&acme(), 3).await;
    let flush = guard.flush(Duration::from_secs(3)).await;
    let mid = guard.stats();
    let report = guard.shutdown(Duration::from_secs(1)).await;
    assert_conserved(&before, &report.stats);
    eprintln!(
        "flush {flush:?}; resolver calls {}; errors {:?}; last_error {:?}; unresolved {}; left {:?}",
        resolver_calls.load(Ordering::SeqCst),
        seen.errors(),
        mid.last_error,
        mid.unresolved - before.unresolved,
        report.left
    );
    // A panicking resolver may be a passing fault: its records wait and are asked for
    // again with backoff (see `a_resolver_that_panics_then_answers`), and it is said:
    // the last error and a warning, and the usage comes back at shutdown, not lost.
    assert!(
        mid.last_error
            .as_deref()
            .is_some_and(|e| e.contains("the agreement resolver panicked")),
        "a resolver that panics {} times is not reported: {:?}",
        resolver_calls.load(Ordering::SeqCst),
        mid.last_error
    );
    assert_eq!(report.left.iter().map(|u| u.record.value).sum::<u64>(), 3);
}

/// A resolver that panics twice then answers: the usage arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_that_panics_then_answers() {
    let _turn = GLOBAL.lock().await;
    let emulator = emulator();
    let (_, agreement) = org_agreement(&emulator, "org_acme");
    let mut resolver = Scripted::new(&agreement);
    resolver.panics = 2;
    let before = kinde_meter::stats();
    let guard = init(fast_config(&emulator).resolver(resolver));
    calls(&acme(), 4).await;
    let report = guard.shutdown(Duration::from_secs(10)).await;
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(received(&emulator, &agreement, "api_calls"), 4);
    assert_conserved(&before, &report.stats);
}

/// Lookups fail (the emulator answers 503 to tokens and reads), then succeed: the usage
/// arrives, nothing is handed back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_fail_transiently_then_succeed() {
    let _turn = GLOBAL.lock().await;
    let emulator = emulator();
    let (_, agreement) = org_agreement(&emulator, "org_acme");
    let seen = Seen::default();
    let before = kinde_meter::stats();
    let guard = init(seen.hooked(fast_config(&emulator)));
    emulator.unavailable_for(Duration::from_millis(1500));
    calls(&acme(), 7).await;
    let flush = guard.flush(Duration::from_secs(10)).await;
    assert!(!flush.timed_out, "{flush:?}");
    let report = guard.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(received(&emulator, &agreement, "api_calls"), 7);
    assert!(seen.unsent().is_empty(), "{:?}", seen.unsent());
    assert_conserved(&before, &report.stats);
}

/// A customer whose plan has many features: the agreements page is larger than the
/// client's 64 KiB body cap. The lookup fails as `Undecodable`, which `is_transient`, so
/// it is retried forever: the usage is neither delivered nor handed back with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_with_many_features() {
    let _turn = GLOBAL.lock().await;
    let emulator = emulator();
    let features: Vec<String> = (0..400)
        .map(|i| format!("feature_{i:03}_{}", "x".repeat(180)))
        .collect();
    emulator
        .add_plan(
            "enterprise",
            features.iter().map(String::as_str).chain(["api_calls"]),
        )
        .expect("plan");
    let big = emulator
        .add_organization("org_big", "enterprise")
        .expect("org");
    let seen = Seen::default();
    let before = kinde_meter::stats();
    let guard = init(seen.hooked(fast_config(&emulator)));
    calls(&Customer::org("org_big").expect("test setup"), 2).await;
    let flush = guard.flush(Duration::from_secs(4)).await;
    let reads = emulator
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/billing/agreements" && r.outcome == RequestOutcome::Read)
        .count();
    let mid = guard.stats();
    let report = guard.shutdown(Duration::from_secs(1)).await;
    assert_conserved(&before, &report.stats);
    assert!(
        !flush.timed_out && received(&emulator, &big.agreement_id, "api_calls") == 2,
        "flush {flush:?}; agreements pages read {reads} times; last_error {:?}; unresolved {}; errors {:?}; left {:?}",
        mid.last_error,
        mid.unresolved - before.unresolved,
        seen.errors(),
        report.left
    );
}

/// Absolute values of a customer: last value wins, in order, also when the first
/// lookup fails for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_customer_records() {
    let _turn = GLOBAL.lock().await;
    let emulator = emulator();
    let (_, agreement) = org_agreement(&emulator, "org_acme");
    let guard = init(fast_config(&emulator).flush_interval(Duration::from_secs(3600)));
    emulator.unavailable_for(Duration::from_millis(800));
    for v in [5, 9, 7] {
        set_seats(&acme(), v);
    }
    // Closes the window while the lookup fails: the record waits for its customer.
    let _ = guard.flush(Duration::from_millis(200)).await;
    set_seats(&acme(), 4);
    set_seats(&acme(), 6);
    let _ = guard.flush(Duration::from_millis(200)).await;
    let report = guard.shutdown(Duration::from_secs(10)).await;
    assert!(report.is_complete(), "{report:?}");
    let values: Vec<String> = emulator
        .accepted()
        .iter()
        .filter(|a| a.feature == "seats")
        .map(|a| a.value.to_string())
        .collect();
    // The waiting value was replaced by the newer one (coalescing), or both went in order.
    assert_eq!(
        values.last().map(String::as_str),
        Some("6"),
        "{:?}",
        emulator.accepted()
    );
    assert!(values == ["6"] || values == ["7", "6"], "{values:?}");
    assert_eq!(received(&emulator, &agreement, "seats"), 6);
}

/// At-most-once: an ambiguous attempt of a customer's record is handed back, naming the
/// agreement it went to and its customer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_with_customers() {
    let _turn = GLOBAL.lock().await;
    let emulator = emulator();
    let (_, agreement) = org_agreement(&emulator, "org_acme");
    emulator.set_faults(Faults::none().drop_after_apply(1.0));
    let seen = Seen::default();
    let before = kinde_meter::stats();
    let guard = init(
        seen.hooked(fast_config(&emulator))
            .delivery(Delivery::AtMostOnce),
    );
    calls(&acme(), 5).await;
    let report = guard.shutdown(Duration::from_secs(5)).await;
    let unsent = seen.unsent();
    assert_eq!(unsent.len(), 1, "{unsent:?}");
    assert_eq!(unsent[0].reason, UnsentReason::Ambiguous);
    assert!(unsent[0].maybe_applied);
    assert_eq!(unsent[0].record.agreement.as_str(), agreement);
    assert_eq!(unsent[0].record.customer, Some(acme()));
    assert_eq!(received(&emulator, &agreement, "api_calls"), 5);
    assert_eq!(emulator.accepted().len(), 1, "sent once");
    assert_conserved(&before, &report.stats);
}

/// A plan change while an ambiguous attempt (applied to the old agreement) is
/// outstanding: the record must not be sent to the new agreement (double billing).
async fn plan_change_after_ambiguous(policy: AgreementEnded, webhook: bool) {
    let emulator = emulator();
    let (customer, old) = org_agreement(&emulator, "org_acme");
    emulator.set_faults(Faults::none().status_500_after_apply(1.0));
    let seen = Seen::default();
    let before = kinde_meter::stats();
    let guard = init(
        seen.hooked(fast_config(&emulator))
            .agreement_ended(policy)
            .backoff(Duration::from_millis(300), Duration::from_millis(600)),
    );
    calls(&acme(), 5).await;
    assert!(wait_until(Duration::from_secs(5), || !emulator
        .accepted()
        .is_empty()));
    emulator.set_faults(Faults::none());
    let new = emulator.change_plan(&customer, "pro").expect("plan change");
    if webhook {
        let id = CustomerId::new(&customer).expect("test setup");
        assert!(kinde_meter::billing_changed(Some(&id), None, None));
    }
    let report = guard.shutdown(Duration::from_secs(10)).await;
    let (on_old, on_new) = (
        received(&emulator, &old, "api_calls"),
        received(&emulator, &new, "api_calls"),
    );
    assert_conserved(&before, &report.stats);
    // Every unit on the old agreement came from an attempt the emulator applied without
    // a clean answer: the first, and a retry the backoff's jitter sent before the fault
    // was lifted (the duplicates at-least-once allows). None may reach the new one.
    let applied_ambiguously = emulator.ambiguous_applied().whole().expect("whole units");
    assert!(on_old >= 5, "the usage never reached the old agreement");
    assert_eq!(
        (on_old, on_new),
        (applied_ambiguously, 0),
        "double billed across a plan change; unsent {:?}",
        seen.unsent()
    );
    let unsent = seen.unsent();
    assert_eq!(unsent.len(), 1, "{unsent:?}");
    assert!(unsent[0].maybe_applied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_change_while_ambiguous_reresolve() {
    let _turn = GLOBAL.lock().await;
    plan_change_after_ambiguous(AgreementEnded::Reresolve, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_change_while_ambiguous_with_webhook() {
    let _turn = GLOBAL.lock().await;
    plan_change_after_ambiguous(AgreementEnded::Reresolve, true).await;
}

/// After `billing_changed`, what comes after is resolved afresh: a record of the
/// customer waiting a retry backoff, bound to the old agreement, does not take in usage
/// recorded after the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_after_billing_changed_is_not_merged_into_a_record_bound_to_the_old_agreement() {
    let _turn = GLOBAL.lock().await;
    let emulator = emulator();
    // The old agreement keeps taking usage (as Kinde may until the cycle ends), so the
    // chase on a refusal does not hide where the usage was sent.
    emulator.set_cancelled_agreements_accept_usage(true);
    let (customer, old) = org_agreement(&emulator, "org_acme");
    let guard = init(
        fast_config(&emulator).backoff(Duration::from_millis(1500), Duration::from_millis(1500)),
    );
    // Resolve the customer first, so the cache holds it.
    calls(&acme(), 1).await;
    assert!(!guard.flush(Duration::from_secs(5)).await.timed_out);
    // Deliveries fail (503, not applied) for a while: the next record waits, bound.
    emulator.set_faults(Faults::none().status_503(1.0));
    calls(&acme(), 5).await;
    assert!(wait_until(Duration::from_secs(5), || emulator
        .requests()
        .iter()
        .any(|r| r.status == Some(503))));
    let new = emulator.change_plan(&customer, "pro").expect("plan change");
    let id = CustomerId::new(&customer).expect("test setup");
    assert!(kinde_meter::billing_changed(Some(&id), None, None));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // After the change.
    calls(&acme(), 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    emulator.set_faults(Faults::none());
    let report = guard.shutdown(Duration::from_secs(10)).await;
    assert!(report.is_complete(), "{report:?}");
    let (on_old, on_new) = (
        received(&emulator, &old, "api_calls"),
        received(&emulator, &new, "api_calls"),
    );
    assert_eq!(
        (on_old, on_new),
        (6, 3),
        "usage recorded after billing_changed went to the old agreement"
    );
}

/// A window closed at a cycle's end is stamped in the old cycle; if its record then
/// waits (a retry), usage of the next window does not merge into it, so the old cycle's
/// usage stays in the old cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_record_does_not_carry_the_old_cycles_usage_into_the_new_one() {
    let _turn = GLOBAL.lock().await;
    let emulator = emulator();
    let (_, agreement) = org_agreement(&emulator, "org_acme");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("test setup");
    let end = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs() + 3);
    emulator
        .set_period_end(&agreement, end)
        .expect("period end");
    let guard = init(
        fast_config(&emulator)
            .flush_interval(Duration::from_secs(60))
            .backoff(Duration::from_secs(2), Duration::from_secs(2)),
    );
    calls(&acme(), 1).await;
    assert!(!guard.flush(Duration::from_secs(5)).await.timed_out);
    // Usage of cycle 0; deliveries fail around the cycle's end.
    calls(&acme(), 3).await;
    emulator.set_faults(Faults::none().status_503(1.0));
    let left = end.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(400)).await;
    // Usage of cycle 1.
    calls(&acme(), 4).await;
    let _ = guard.flush(Duration::from_millis(100)).await;
    emulator.set_faults(Faults::none());
    let report = guard.shutdown(Duration::from_secs(10)).await;
    assert!(report.is_complete(), "{report:?}");
    let mut by_cycle = std::collections::BTreeMap::<u64, u128>::new();
    for r in emulator.accepted() {
        *by_cycle.entry(r.cycle.expect("cycle").index).or_default() +=
            r.value.whole().expect("test setup");
    }
    assert_eq!(
        by_cycle,
        [(0, 4), (1, 4)].into_iter().collect(),
        "{:?}",
        emulator.accepted()
    );
}

/// The global reporter re-initialised: counters are the process's; billing news goes to
/// the running worker only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_reinit() {
    let _turn = GLOBAL.lock().await;
    let emulator = emulator();
    let (customer, agreement) = org_agreement(&emulator, "org_acme");
    let id = CustomerId::new(&customer).expect("test setup");
    for round in 0..3u64 {
        let before = kinde_meter::stats();
        let guard = init(fast_config(&emulator));
        calls(&acme(), 2).await;
        assert!(kinde_meter::billing_changed(Some(&id), None, None));
        let report = guard.shutdown(Duration::from_secs(5)).await;
        assert!(report.is_complete(), "{report:?}");
        assert_conserved(&before, &report.stats);
        let lookups = report.stats.resolver_lookups - before.resolver_lookups;
        assert!(
            (1..=2).contains(&lookups),
            "round {round}: {lookups} lookups"
        );
        let at_once = kinde_meter::billing_changed(Some(&id), None, None);
        let later = wait_until(Duration::from_secs(2), || {
            !kinde_meter::billing_changed(Some(&id), None, None)
        });
        assert!(
            !at_once && later,
            "round {round}: billing_changed says a reporter runs after shutdown returned \
             (right after: {at_once}; false within 2 s: {later})"
        );
    }
    assert_eq!(received(&emulator, &agreement, "api_calls"), 6);
}

/// Lookups hold no delivery slot: a slow resolver for one customer does not hold up
/// usage of explicit agreements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_resolver_does_not_hold_up_deliveries_to_explicit_agreements() {
    let _turn = GLOBAL.lock().await;
    let emulator = emulator();
    let mut resolver = Scripted::new("agreement_unused");
    resolver.hang_all = true;
    let guard = init(
        fast_config(&emulator)
            .max_in_flight(2)
            .request_timeout(Duration::from_secs(3))
            .resolver(resolver),
    );
    with_customer(acme(), async {
        api_call();
        kinde_meter::record("seats", 1);
    })
    .await;
    let _ = guard.flush(Duration::from_millis(200)).await;
    let explicit: AgreementId = "agreement_explicit".parse().expect("test setup");
    kinde_meter::record_for(
        &explicit,
        &FeatureCode::from_static("api_calls"),
        kinde_meter::Usage::Delta(1),
    );
    let started = Instant::now();
    let delivered = wait_until(Duration::from_secs(6), || {
        received(&emulator, "agreement_explicit", "api_calls") == 1
    });
    let took = started.elapsed();
    let report = guard.shutdown(Duration::from_secs(1)).await;
    // A record handed back before it was resolved carries the customer's stand-in, and
    // reads back as it was written.
    let json = serde_json::to_string(&report.left[0].record).expect("test setup");
    let back = serde_json::from_str::<kinde_meter::UsageRecord>(&json).expect("reads back");
    assert_eq!(back, report.left[0].record);
    assert_eq!(back.customer, Some(acme()));
    assert!(
        delivered && took < Duration::from_secs(1),
        "explicit agreement delivered after {took:?}"
    );
}
