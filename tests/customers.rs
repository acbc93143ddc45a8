//! Billing customers, not agreement ids: usage recorded in customer scopes is resolved
//! to the customer's agreement on the reporter's thread, follows plan changes (Kinde's
//! 400 and billing webhooks), and closes its window at a cycle's end. Real HTTP over
//! loopback against the emulator, with its billing objects and signed webhooks, and the
//! global reporter (one test at a time: they share it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use kinde_meter::tower::AgreementLayer;
use kinde_meter::webhooks::{WebhookHandler, WebhookVerifier};
use kinde_meter::{AgreementEnded, Config, Customer, Guard, UnsentReason, meter, with_customer};
use kinde_meter_emulator::{Emulator, RequestOutcome};
use kinde_meter_workspace::EmulatorExt;
use kinde_meter_workspace::customers::{Seen, received};
use kinde_meter_workspace::reporter::{fast_config, wait_until};

/// The global reporter is one per process: tests take turns.
static GLOBAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[meter(feature = "api_calls")]
fn api_call() {}

#[meter(feature = "exports")]
fn export() {}

fn emulator() -> Emulator {
    Emulator::builder()
        .plan("basic", ["api_calls"])
        .plan("pro", ["api_calls", "exports"])
        .organization("org_acme", "basic")
        .webhook_retry_delays(vec![Duration::from_millis(50); 3])
        .start()
        .expect("emulator")
}

fn agreements_of(emulator: &Emulator, org: &str) -> (String, Vec<String>) {
    let customer = emulator.organization_customer(org).expect("org");
    let ids = emulator
        .customer_agreements(&customer)
        .into_iter()
        .map(|a| a.id)
        .collect();
    (customer, ids)
}

fn total(emulator: &Emulator, agreement: &str) -> u128 {
    received(emulator, agreement, "api_calls")
}

fn acme() -> Customer {
    Customer::org("org_acme").expect("code")
}

async fn calls(customer: &Customer, n: u64) {
    with_customer(customer.clone(), async {
        for _ in 0..n {
            api_call();
        }
    })
    .await;
}

/// Serves the crate's webhook handler on 127.0.0.1, verifying against the emulator's
/// JWKS, on the test's runtime.
async fn serve_webhooks(emulator: &Emulator) -> String {
    let verifier = WebhookVerifier::new(emulator.domain()).expect("verifier");
    let app = Router::new().route_service("/kinde/webhooks", WebhookHandler::new(verifier));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/kinde/webhooks")
}

/// Closes the window and waits until nothing waits.
async fn flushed(guard: &Guard) {
    let report = guard.flush(Duration::from_secs(5)).await;
    assert!(!report.timed_out && report.waiting == 0, "{report:?}");
}

fn init(config: Config) -> Guard {
    kinde_meter::init(config).expect("init")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_knows_only_org_code_bills_the_right_agreement_through_a_plan_change() {
    let _turn = GLOBAL.lock().await;
    let emulator = emulator();
    let url = serve_webhooks(&emulator).await;
    emulator.set_webhook_url(Some(&url)).expect("webhook url");
    let (customer, before) = agreements_of(&emulator, "org_acme");
    let old = before[0].clone();
    let seen = Seen::default();
    // The counters are the process's, across reporters.
    let unresolved_before = kinde_meter::stats().unresolved;
    let guard = init(seen.hooked(fast_config(&emulator)));

    // Before the change: billed to the agreement the organization has.
    calls(&acme(), 10).await;
    flushed(&guard).await;
    assert_eq!(total(&emulator, &old), 10);

    // Mid-traffic: the plan changes (a new agreement, the old one cancelled), the
    // signed webhooks arrive, and calls go on throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let during = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (stop, during) = (Arc::clone(&stop), Arc::clone(&during));
        tokio::spawn(with_customer(acme(), async move {
            while !stop.load(Ordering::Relaxed) {
                api_call();
                during.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }))
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new = emulator.change_plan(&customer, "pro").expect("plan change");
    assert!(emulator.wait_webhooks(Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.expect("traffic");

    // After it: the new agreement.
    calls(&acme(), 10).await;
    let report = guard.shutdown(Duration::from_secs(10)).await;
    assert!(report.is_complete(), "{report}");

    let deliveries = emulator.webhook_deliveries();
    assert!(deliveries.len() >= 2, "{deliveries:?}");
    assert!(
        deliveries.iter().all(|d| d.last_status == Some(200)),
        "{deliveries:?}"
    );
    let during = u128::from(during.load(Ordering::Relaxed));
    let (old_total, new_total) = (total(&emulator, &old), total(&emulator, &new));
    // Nothing lost, nothing forgiven silently, nothing invented.
    assert_eq!(
        old_total + new_total,
        10 + during + 10,
        "old {old_total}, new {new_total}"
    );
    assert!(seen.unsent().is_empty(), "{:?}", seen.unsent());
    assert_eq!(report.stats.unresolved, unresolved_before);
    // Before the change, the old agreement; after it, the new one (usage recorded while
    // the change was in flight went to whichever agreement took it, never to both).
    assert!(
        old_total >= 10 && new_total >= 10,
        "old {old_total}, new {new_total}"
    );
    // The cancelled agreement took nothing after its cancellation.
    let cancelled_rejections = emulator
        .requests()
        .iter()
        .filter(|r| r.error_codes.iter().any(|c| c == "AGREEMENT_CANCELLED"))
        .count();
    let accepted_on_old_after_change = emulator
        .accepted()
        .iter()
        .filter(|a| a.agreement == old)
        .map(|a| a.value.whole().expect("whole"))
        .sum::<u128>();
    assert_eq!(accepted_on_old_after_change, old_total);
    eprintln!(
        "old {old_total}, new {new_total}, during {during}, cancelled answers {cancelled_rejections}"
    );
}

/// The reporter does not hear of the change (no webhook): its cached mapping sends the
/// usage to the cancelled agreement, Kinde refuses it, and the policy decides.
async fn usage_after_an_unannounced_plan_change(
    policy: AgreementEnded,
) -> (Emulator, Seen, String, String, u64) {
    let emulator = emulator();
    let (customer, before) = agreements_of(&emulator, "org_acme");
    let seen = Seen::default();
    let config = seen
        .hooked(fast_config(&emulator))
        .agreement_ended(policy)
        .resolver_cache(Duration::from_secs(3600), Duration::from_secs(30));
    let unresolved_before = kinde_meter::stats().unresolved;
    let guard = init(config);
    calls(&acme(), 3).await;
    flushed(&guard).await;
    let new = emulator.change_plan(&customer, "pro").expect("plan change");
    calls(&acme(), 5).await;
    let report = guard.shutdown(Duration::from_secs(10)).await;
    let unresolved = report.stats.unresolved - unresolved_before;
    (emulator, seen, before[0].clone(), new, unresolved)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agreement_kinde_says_ended_is_re_resolved_by_default() {
    let _turn = GLOBAL.lock().await;
    let (emulator, seen, old, new, unresolved) =
        usage_after_an_unannounced_plan_change(AgreementEnded::Reresolve).await;
    assert!(
        seen.unsent().is_empty(),
        "{:?} {:?}",
        seen.unsent(),
        seen.errors()
    );
    assert_eq!(total(&emulator, &old), 3);
    assert_eq!(total(&emulator, &new), 5);
    assert_eq!(unresolved, 0);
    let refused = emulator
        .requests()
        .iter()
        .filter(|r| r.error_codes.iter().any(|c| c == "AGREEMENT_CANCELLED"))
        .count();
    assert!(refused >= 1, "the cancelled agreement was tried first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agreement_kinde_says_ended_is_handed_back_when_asked() {
    let _turn = GLOBAL.lock().await;
    let (emulator, seen, old, new, unresolved) =
        usage_after_an_unannounced_plan_change(AgreementEnded::HandBack).await;
    assert_eq!(total(&emulator, &old), 3);
    assert_eq!(total(&emulator, &new), 0);
    let unsent = seen.unsent();
    assert_eq!(unsent.len(), 1, "{unsent:?}");
    assert_eq!(unsent[0].reason, UnsentReason::AgreementEnded);
    assert_eq!(unsent[0].record.value, 5);
    assert_eq!(
        unsent[0].record.agreement.as_str(),
        old,
        "names the agreement it went to"
    );
    assert_eq!(unsent[0].record.customer, Some(acme()));
    assert_eq!(unresolved, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_billing_webhook_sends_the_customers_pending_usage_at_once_to_the_agreement_it_was_recorded_under()
 {
    let _turn = GLOBAL.lock().await;
    let emulator = emulator();
    emulator.set_cancelled_agreements_accept_usage(true);
    let url = serve_webhooks(&emulator).await;
    emulator.set_webhook_url(Some(&url)).expect("webhook url");
    let (customer, before) = agreements_of(&emulator, "org_acme");
    let old = before[0].clone();
    // Windows that would not close for a minute: only the webhook sends the usage.
    let guard = init(fast_config(&emulator).flush_interval(Duration::from_secs(60)));
    calls(&acme(), 1).await;
    flushed(&guard).await;
    calls(&acme(), 7).await;
    let new = emulator.change_plan(&customer, "pro").expect("plan change");
    assert!(
        wait_until(Duration::from_secs(10), || total(&emulator, &old) == 8),
        "old {}",
        total(&emulator, &old)
    );
    // What comes after the change is resolved afresh.
    calls(&acme(), 2).await;
    let report = guard.shutdown(Duration::from_secs(10)).await;
    assert!(report.is_complete(), "{report}");
    assert_eq!(total(&emulator, &new), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_without_an_agreement_for_the_feature_is_refused_with_its_reason_never_guessed()
{
    let _turn = GLOBAL.lock().await;
    let emulator = emulator();
    let seen = Seen::default();
    kinde_meter_workspace::logs::recorded();
    let unresolved_before = kinde_meter::stats().unresolved;
    let guard = init(seen.hooked(fast_config(&emulator)));
    // Two windows of the same customer and feature: two hand-backs, one warning.
    for _ in 0..2 {
        with_customer(acme(), async {
            for _ in 0..2 {
                export();
            }
        })
        .await;
        flushed(&guard).await;
    }
    calls(&Customer::org("org_nobody").expect("code"), 2).await;
    let report = guard.shutdown(Duration::from_secs(10)).await;
    assert!(report.is_complete(), "{report}");
    assert_eq!(
        emulator.ledger_sum(),
        0u64,
        "nothing is sent to a guessed agreement"
    );
    let unsent = seen.unsent();
    assert_eq!(unsent.len(), 3, "{unsent:?}");
    assert!(unsent.iter().all(|u| u.reason == UnsentReason::NoAgreement));
    assert!(unsent.iter().all(|u| u.record.value == 2), "{unsent:?}");
    let warned =
        kinde_meter_workspace::logs::count(&["WARN kinde_meter", "org_acme", "feature `exports`"]);
    assert_eq!(warned, 1, "one warning per customer and feature");
    assert_eq!(report.stats.unresolved - unresolved_before, 6);
    let errors = seen.errors();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("none of its agreements has the feature `exports`")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("org_nobody") && e.contains("no such organization")),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_requests_of_one_new_customer_send_one_lookup() {
    let _turn = GLOBAL.lock().await;
    let emulator = emulator();
    // Twenty features: twenty records of one customer, looked up at once.
    let features: Vec<&'static str> = (0..20)
        .map(|i| &*Box::leak(format!("feature_{i}").into_boxed_str()))
        .collect();
    emulator
        .add_plan("team", features.iter().copied().chain(["api_calls"]))
        .expect("plan");
    let created = emulator.add_organization("org_many", "team").expect("org");
    let lookups_before = kinde_meter::stats().resolver_lookups;
    let guard = init(
        fast_config(&emulator)
            .resolver_cache(Duration::from_secs(1), Duration::from_secs(1))
            .max_in_flight(16),
    );
    let many = Customer::org("org_many").expect("code");
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let many = many.clone();
            let feature = features[i % features.len()];
            tokio::spawn(with_customer(many.clone(), async move {
                api_call();
                kinde_meter::record(feature, 1);
            }))
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    flushed(&guard).await;
    assert_eq!(total(&emulator, &created.agreement_id), 100);
    assert_eq!(emulator.ledger_sum(), 200u64);
    let lookups = |path: &str| {
        emulator
            .requests()
            .iter()
            .filter(|r| r.path == path && r.outcome == RequestOutcome::Read)
            .count()
    };
    assert_eq!(lookups("/api/v1/organization"), 1);
    assert_eq!(lookups("/api/v1/billing/agreements"), 1);
    assert_eq!(guard.stats().resolver_lookups - lookups_before, 1);
    // Past its time to live the answer is asked for again (served stale meanwhile).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    calls(&many, 1).await;
    flushed(&guard).await;
    assert!(wait_until(Duration::from_secs(5), || lookups(
        "/api/v1/organization"
    ) == 2));
    assert_eq!(total(&emulator, &created.agreement_id), 101);
    guard.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_scope_is_named() {
    let _turn = GLOBAL.lock().await;
    let emulator = emulator();
    emulator.set_scopes(["create:meter_usage", "read:billing_agreements"]);
    let seen = Seen::default();
    let guard = init(seen.hooked(fast_config(&emulator)));
    calls(&acme(), 1).await;
    guard.shutdown(Duration::from_secs(5)).await;
    let errors = seen.errors();
    assert!(
        errors.iter().any(|e| e.contains("`read:organizations`")),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_would_straddle_a_cycle_end_closes_there() {
    let _turn = GLOBAL.lock().await;
    let emulator = emulator();
    let (_, before) = agreements_of(&emulator, "org_acme");
    let agreement = before[0].clone();
    // Stamps are whole seconds: the first must not fall before the agreement was made.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock");
    let end = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs() + 3);
    emulator
        .set_period_end(&agreement, end)
        .expect("period end");
    // Windows of a minute: only the cycle's end closes the one in between.
    let guard = init(fast_config(&emulator).flush_interval(Duration::from_secs(60)));
    calls(&acme(), 1).await;
    flushed(&guard).await;
    calls(&acme(), 3).await;
    let left = end.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(700)).await;
    calls(&acme(), 4).await;
    flushed(&guard).await;
    guard.shutdown(Duration::from_secs(5)).await;
    let mut by_cycle = std::collections::BTreeMap::<u64, u128>::new();
    for record in emulator.accepted() {
        let cycle = record
            .cycle
            .unwrap_or_else(|| panic!("a cycle: {record:?} {:?}", emulator.agreement(&agreement)))
            .index;
        *by_cycle.entry(cycle).or_default() += record.value.whole().expect("whole");
    }
    assert_eq!(
        by_cycle,
        [(0, 4), (1, 4)].into_iter().collect(),
        "{:?}",
        emulator.accepted()
    );
}

#[derive(Clone)]
struct Claims {
    sub: String,
    org_code: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tower_layer_reads_org_code_or_sub_from_verified_claims() {
    use axum::routing::get;

    let _turn = GLOBAL.lock().await;
    let emulator = emulator();
    emulator.add_user("kp_solo", "basic").expect("user");
    let (_, acme_agreements) = agreements_of(&emulator, "org_acme");
    let solo = emulator.user_customer("kp_solo").expect("user");
    let solo_agreement = emulator.customer_agreements(&solo)[0].id.clone();
    let guard = init(fast_config(&emulator));

    #[meter(feature = "api_calls")]
    async fn handler() -> &'static str {
        "ok"
    }
    // Stands in for the service's JWT layer: claims it verified, in the extensions.
    let verified = axum::middleware::from_fn(
        |mut request: axum::extract::Request, next: axum::middleware::Next| async move {
            let org_code = request
                .headers()
                .get("x-org")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            request.extensions_mut().insert(Claims {
                sub: "kp_solo".to_owned(),
                org_code,
            });
            next.run(request).await
        },
    );
    let app = Router::new()
        .route("/", get(handler))
        .layer(AgreementLayer::customer_from_claims(|c: &Claims| {
            Customer::from_claims(c.org_code.as_deref(), Some(&c.sub))
        }))
        .layer(verified);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let r = http
            .get(format!("http://{addr}/"))
            .header("x-org", "org_acme")
            .send()
            .await
            .expect("request");
        assert!(r.status().is_success());
    }
    let r = http
        .get(format!("http://{addr}/"))
        .send()
        .await
        .expect("request");
    assert!(r.status().is_success());
    let report = guard.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_complete(), "{report}");
    assert_eq!(total(&emulator, &acme_agreements[0]), 3);
    assert_eq!(total(&emulator, &solo_agreement), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reporter_of_its_own_bills_customers_through_the_resolver_it_is_given() {
    // Its own cells: no turn on the global reporter needed.
    let emulator = Emulator::start().expect("emulator");
    let resolver = kinde_meter::resolve::StaticResolver::new();
    let map = Customer::user("kp_mapped").expect("id");
    resolver.set(
        map.clone(),
        "agreement_mapped".parse().expect("id"),
        ["api_calls".parse().expect("code")],
    );
    let reporter =
        kinde_meter::Reporter::start(fast_config(&emulator).resolver(resolver)).expect("start");
    let feature = kinde_meter::FeatureCode::from_static("api_calls");
    reporter.record_for_customer(&map, &feature, 4);
    reporter.record_for_customer(&Customer::user("kp_unmapped").expect("id"), &feature, 2);
    let report = reporter.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_complete(), "{report}");
    assert_eq!(emulator.total("agreement_mapped", "api_calls"), 4u64);
    assert_eq!(emulator.ledger_sum(), 4u64);
    assert_eq!(report.stats.unresolved, 2);
}
