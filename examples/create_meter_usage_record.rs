//! Records one meter usage record (one request) with the typed API client, as the seed
//! SDK's example does, and prints the response, the status and the headers.
//!
//! `cargo run --example create_meter_usage_record`
//!
//! With `KINDE_DOMAIN` and credentials in the environment (see the README), it talks to
//! that Kinde, recording against `KINDE_AGREEMENT_ID` and `KINDE_FEATURE_CODE`. Without
//! `KINDE_DOMAIN`, it starts the local emulator on 127.0.0.1 and talks to it.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use kinde_meter::api::{
    ApiError, Client, CreateMeterUsageRecordRequest, MeterType, RequestOptions, Timestamp,
};
use kinde_meter::{AgreementId, FeatureCode};
use kinde_meter_emulator::Emulator;

#[path = "common/mod.rs"]
#[allow(dead_code)] // The integration test includes this file for `record()` only.
mod common;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // Keep the emulator alive for the whole run when it is used.
    let (config, _emulator) = common::kinde_or_emulator(Emulator::builder())?;
    let client = config.client()?;
    let agreement: AgreementId = env_or(
        "KINDE_AGREEMENT_ID",
        "agreement_0195ac80a14c2ca2cec97d026d864de0",
    )
    .parse()?;
    let feature: FeatureCode = env_or("KINDE_FEATURE_CODE", "pro_gym").parse()?;

    record(&client, agreement, feature).await
}

/// The example proper, against any client (the integration test runs it against the
/// emulator and checks its ledger).
pub(crate) async fn record(
    client: &Client,
    agreement: AgreementId,
    feature: FeatureCode,
) -> Result<(), Box<dyn std::error::Error>> {
    let request = CreateMeterUsageRecordRequest::new(agreement, feature, 1)
        .with_meter_type(MeterType::Delta)
        .with_timestamp(Timestamp::now());
    println!(
        "POST {}/api/v1/billing/meter_usage\n{}",
        client.domain(),
        serde_json::to_string_pretty(&request)?
    );

    // One call, one record. `_with_options` returns the decoded body with the status and
    // headers (as `_with_http_info` does) and sends an idempotency key; the plain
    // `create_meter_usage_record` would return the body alone. The key is new on each
    // run, so a Kinde that honours it never takes a second run for a resend.
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let options =
        RequestOptions::new().idempotency_key(format!("example-{}", since_epoch.as_nanos()));
    let response = client
        .create_meter_usage_record_with_options(&request, &options)
        .await
        .map_err(explain)?;
    println!("\nstatus: {}", response.status);
    println!("headers:");
    for (name, value) in &response.headers {
        println!("  {name}: {}", value.to_str().unwrap_or("<binary>"));
    }
    println!("data: {:?}", response.data);
    Ok(())
}

fn explain(e: ApiError) -> Box<dyn std::error::Error> {
    format!(
        "calling create_meter_usage_record: {e} (retry safety: {:?})",
        e.disposition()
    )
    .into()
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}
