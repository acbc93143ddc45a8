//! An axum service whose handlers are metered, billing each request's customer.
//!
//! `cargo run --example axum`, then, in another terminal:
//!
//! ```text
//! curl -H 'x-agreement-id: agreement_acme' http://127.0.0.1:3000/reports/7
//! curl -H 'x-agreement-id: agreement_acme' --data $'a\nb\nc' http://127.0.0.1:3000/exports
//! curl -i http://127.0.0.1:3000/reports/7        # no agreement: 402
//! ```
//!
//! `AgreementLayer` reads the customer's agreement from the `x-agreement-id` header (in a
//! real service: a claim of the verified Kinde token, or a lookup in your store) and runs
//! the request in its scope; `#[meter]` handlers below it bill that agreement. Requests
//! without one are refused with 402. Stop with Ctrl-C: the reporter then delivers what is
//! pending and prints its report. Set `PORT` to listen elsewhere (`0`: any free port).
//! Without `KINDE_DOMAIN` it reports to the local Kinde emulator.

use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use kinde_meter::meter;
use kinde_meter::tower::{AgreementLayer, MissingAgreement};
use kinde_meter_emulator::Emulator;

#[path = "common/mod.rs"]
#[allow(dead_code)] // The integration test includes this file for `app()` only.
mod common;

/// One report view: one `reports` unit.
#[meter(feature = "reports")]
async fn report(Path(id): Path<u32>) -> String {
    format!("report {id}\n")
}

/// An export of the posted rows (one per line): billed per row, only when it succeeds.
#[meter(feature = "exported_rows", value = body.lines().count(), on = "ok")]
async fn export(body: String) -> Result<String, StatusCode> {
    if body.trim().is_empty() {
        return Err(StatusCode::UNPROCESSABLE_ENTITY);
    }
    Ok(format!("exported {} rows\n", body.lines().count()))
}

/// Not metered.
async fn health() -> &'static str {
    "ok\n"
}

/// The service: routes, and the layer that sets each request's agreement.
pub(crate) fn app() -> Router {
    Router::new()
        .route("/reports/{id}", get(report))
        .route("/exports", post(export))
        .layer(
            AgreementLayer::new(|head: &axum::http::request::Parts| {
                head.headers
                    .get("x-agreement-id")?
                    .to_str()
                    .ok()?
                    .parse()
                    .ok()
            })
            .on_missing(MissingAgreement::Reject(StatusCode::PAYMENT_REQUIRED)),
        )
        .route("/health", get(health))
}

#[allow(dead_code)] // The integration test includes this file for `app()` only.
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Keep the emulator, when used, alive while the reporter sends.
    let (config, _emulator) = common::kinde_or_emulator(Emulator::builder())?;
    let guard = kinde_meter::init(config)?;
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".to_owned());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    let report = guard.shutdown(Duration::from_secs(10)).await;
    println!("reporter: {report}");
    Ok(())
}
