//! A B2B service that knows its customers only by `org_code`, billed through a plan
//! change: usage is resolved to each organization's agreement off the request path, and
//! Kinde's signed billing webhooks tell the reporter when an agreement changes.
//!
//! `cargo run --example organizations`
//!
//! Runs against the local Kinde emulator (a plan change is something only the emulator
//! can be told to do): two organizations on the `basic` plan, a webhook endpoint served
//! here on 127.0.0.1 with `kinde_meter::webhooks`, and halfway through, `org_acme` moves
//! to `pro` (a new agreement; the old one is cancelled and refuses usage). At the end it
//! compares, per organization, what was recorded with what its agreements received.
//!
//! Exits non-zero when they differ.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use kinde_meter::webhooks::{WebhookHandler, WebhookVerifier};
use kinde_meter::{Customer, meter, with_customer};
use kinde_meter_emulator::Emulator;

/// One `searches` unit per call, for the organization whose request is served.
#[meter(feature = "searches")]
async fn search(query: &str) -> usize {
    tokio::task::yield_now().await;
    query.len()
}

const ORGS: [&str; 2] = ["org_acme", "org_globex"];
const ROUNDS: u64 = 60;

/// 0 when every organization's agreements received what it recorded, 1 when not, 2
/// when the example could not run.
fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let emulator = Emulator::builder()
        .plan("basic", ["searches"])
        .plan("pro", ["searches", "exports"])
        .organization(ORGS[0], "basic")
        .organization(ORGS[1], "basic")
        .start()?;
    println!("the local Kinde emulator is at {}", emulator.base_url());
    let domain = kinde_meter::api::Domain::parse(&emulator.base_url())?;

    // The billing webhook endpoint: verified against the business's JWKS, deduped, and
    // passed to the reporter (`kinde_meter::billing_changed`).
    let verifier = WebhookVerifier::new(domain.clone())?;
    let app = Router::new().route_service("/kinde/webhooks", WebhookHandler::new(verifier));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook_url = format!("http://{}/kinde/webhooks", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    emulator.set_webhook_url(Some(&hook_url))?;

    let config = kinde_meter::Config::new(
        domain,
        kinde_meter::api::Credentials::client_credentials(
            emulator.client_id(),
            emulator.client_secret(),
        ),
    )
    .flush_interval(Duration::from_millis(200));
    let guard = kinde_meter::init(config)?;

    let mut recorded: BTreeMap<&str, u64> = BTreeMap::new();
    for round in 0..ROUNDS {
        for (i, org) in ORGS.iter().enumerate() {
            let calls = (round + i as u64) % 3 + 1;
            with_customer(Customer::org(org)?, async {
                for _ in 0..calls {
                    search("gyms near me").await;
                }
            })
            .await;
            *recorded.entry(org).or_default() += calls;
        }
        if round == ROUNDS / 2 {
            let acme = emulator
                .organization_customer(ORGS[0])
                .ok_or("the emulator lost org_acme")?;
            let agreement = emulator.change_plan(&acme, "pro")?;
            println!(
                "round {round}: org_acme moves to the pro plan ({agreement}); its usage still \
                 waiting goes to the new agreement once Kinde refuses the cancelled one"
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    emulator.wait_webhooks(Duration::from_secs(10));
    let report = guard.shutdown(Duration::from_secs(10)).await;
    println!("{report}");

    let mut all_match = report.is_complete();
    println!(
        "\n{:<12} {:<44} {:>9} {:>9}",
        "org", "agreement", "status", "received"
    );
    for org in ORGS {
        let customer = emulator
            .organization_customer(org)
            .ok_or("the emulator lost an organization")?;
        let mut received = 0u128;
        for agreement in emulator.customer_agreements(&customer) {
            let got = emulator
                .total(&agreement.id, "searches")
                .whole()
                .ok_or("a fractional total")?;
            let status = if agreement.is_active() {
                "active"
            } else {
                "cancelled"
            };
            println!("{org:<12} {:<44} {status:>9} {got:>9}", agreement.id);
            received += got;
        }
        let want = u128::from(recorded[org]);
        println!(
            "{org:<12} {:<44} {:>9} {received:>9} (recorded {want})",
            "", "total"
        );
        all_match &= received == want;
    }
    if all_match {
        let total: u64 = recorded.values().sum();
        println!(
            "\nMATCH: each organization's agreements received exactly the {total} units recorded for it."
        );
    } else {
        println!("\nMISMATCH: see the table above.");
    }
    Ok(all_match)
}
