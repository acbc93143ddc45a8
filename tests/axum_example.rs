//! Drives `examples/axum.rs` over real HTTP: requests in parallel for several agreements,
//! with the global reporter delivering to the emulator, whose ledger must match.

#[path = "../examples/axum.rs"]
#[allow(dead_code)] // `main` is the example's; this test serves `app()` itself.
mod example;

use std::time::Duration;

use kinde_meter_emulator::Emulator;
use kinde_meter_workspace::reporter::fast_config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_axum_example_bills_each_request_to_its_agreement() {
    // The same setup as tests/tower_layer.rs: the support library has no axum or socket
    // dependency to share it through, and it is the setup a service's own test writes.
    let emulator = Emulator::start().expect("emulator");
    let guard = kinde_meter::init(fast_config(&emulator)).expect("init");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, example::app()).await });

    let client = reqwest::Client::new();
    let customers: [&'static str; 3] = ["agreement_acme", "agreement_globex", "agreement_initech"];
    let mut requests = tokio::task::JoinSet::new();
    for (i, &customer) in customers.iter().enumerate() {
        for n in 0..(10 * (i + 1)) {
            let (client, base) = (client.clone(), base.clone());
            requests.spawn(async move {
                let report = client
                    .get(format!("{base}/reports/{n}"))
                    .header("x-agreement-id", customer)
                    .send()
                    .await
                    .expect("report");
                assert_eq!(report.status(), 200);
                let rows = "row\n".repeat(n % 4);
                let export = client
                    .post(format!("{base}/exports"))
                    .header("x-agreement-id", customer)
                    .body(rows)
                    .send()
                    .await
                    .expect("export");
                // Empty exports fail (422) and are not billed.
                assert_eq!(export.status(), if n % 4 == 0 { 422 } else { 200 });
            });
        }
    }
    requests.join_all().await;

    // No agreement: refused with 402, nothing billed; unmetered routes pass.
    let refused = client
        .get(format!("{base}/reports/1"))
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 402);
    let health = client
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("request");
    assert_eq!(health.status(), 200);

    let report = guard.shutdown(Duration::from_secs(10)).await;
    assert!(report.is_complete(), "{report}");
    server.abort();
    for (i, customer) in customers.iter().enumerate() {
        let calls = 10 * (i + 1);
        let rows: usize = (0..calls).map(|n| n % 4).sum();
        assert_eq!(
            emulator.total(customer, "reports"),
            calls as u64,
            "{customer}"
        );
        assert_eq!(
            emulator.total(customer, "exported_rows"),
            rows as u64,
            "{customer}"
        );
    }
    assert_eq!(
        emulator.ledger().len(),
        6,
        "nothing billed to anyone else: {:?}",
        emulator.ledger()
    );
}
