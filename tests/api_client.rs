//! The API client against a local Kinde (`kinde_meter_emulator::Emulator`) and against a
//! hand-written raw HTTP server, over real HTTP on 127.0.0.1: every status and how it is
//! classified, tokens (caching, early renewal, single flight, re-minting), headers, the
//! exact request body, hostile answers, secret redaction and the https rule.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kinde_meter::api::{
    AgreementId, ApiError, ApiResponse, BuildError, Client, CreateMeterUsageRecordRequest,
    CreateMeterUsageRecordResponse, Credentials, Disposition, Domain, FeatureCode, MeterType,
    MeterValue, RequestOptions, StatusCode, Timestamp, TokenError,
};
use kinde_meter::{Config, ConfigError};
use kinde_meter_emulator::{Emulator, EmulatorBuilder, Faults, RateLimit, RequestOutcome};
use kinde_meter_workspace::EmulatorExt;
use kinde_meter_workspace::RawHttpServer;

const AGREEMENT: &str = "agreement_0195ac80a14c2ca2cec97d026d864de0";
const FEATURE: &str = "api_calls";

type Answer = Result<ApiResponse<CreateMeterUsageRecordResponse>, ApiError>;

fn usage(value: u64) -> CreateMeterUsageRecordRequest {
    CreateMeterUsageRecordRequest::new(
        AgreementId::new(AGREEMENT).expect("agreement id"),
        FeatureCode::from_static(FEATURE),
        value,
    )
}

fn start(builder: EmulatorBuilder) -> Emulator {
    builder.start().expect("the emulator starts")
}

fn client(kinde: &Emulator) -> Client {
    kinde.client().expect("a client for the emulator")
}

async fn send(client: &Client, request: &CreateMeterUsageRecordRequest) -> Answer {
    client
        .create_meter_usage_record_with_http_info(request)
        .await
}

/// Every secret the emulator and its clients have used so far: the client secret, the
/// static token and every bearer token that reached the meter endpoint.
fn secrets(kinde: &Emulator) -> Vec<String> {
    let mut all = vec![kinde.client_secret().to_owned()];
    all.extend(kinde.static_token().map(str::to_owned));
    for request in kinde.requests() {
        if let Some(token) = request
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
        {
            all.push(token.to_owned());
        }
    }
    all
}

/// `Display` and `Debug` of an error and of every error in its source chain.
fn error_texts(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut texts = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        texts.push(format!("{e}"));
        texts.push(format!("{e:?}"));
        next = e.source();
    }
    texts
}

fn assert_redacted(texts: &[String], secrets: &[String]) {
    assert!(!secrets.is_empty());
    for secret in secrets {
        assert!(secret.len() >= 8, "too short to search for: {secret:?}");
        for text in texts {
            assert!(
                !text.contains(secret.as_str()),
                "a secret leaked into {text:?}"
            );
        }
    }
}

/// The error of `answer`, after checking that none of its texts holds a secret.
fn failure(answer: Answer, secrets: &[String]) -> ApiError {
    let e = answer.expect_err("the call fails");
    assert_redacted(&error_texts(&e), secrets);
    e
}

// ----- statuses and their classification -----

#[tokio::test]
async fn accepted_200_gives_kindes_message_code_status_and_headers() {
    let kinde = start(Emulator::builder());
    let client = client(&kinde);
    let response = send(&client, &usage(3)).await.expect("accepted");
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.data.message.as_deref(), Some("Success"));
    assert_eq!(response.data.code.as_deref(), Some("OK"));
    assert_eq!(
        response
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let plain = client
        .create_meter_usage_record(&usage(2))
        .await
        .expect("accepted");
    assert_eq!(plain.code.as_deref(), Some("OK"));
    assert_eq!(kinde.total(AGREEMENT, FEATURE), 5);
    assert_eq!(kinde.counts().accepted, 2);
}

#[tokio::test]
async fn validation_400_is_rejected_with_kindes_error_list() {
    let kinde = start(Emulator::builder().known_agreements([AGREEMENT]));
    let client = client(&kinde);
    let unknown = CreateMeterUsageRecordRequest::new(
        AgreementId::new("agreement_unknown").expect("agreement id"),
        FeatureCode::from_static(FEATURE),
        1u64,
    );
    let e = failure(send(&client, &unknown).await, &secrets(&kinde));
    let ApiError::Rejected { status, errors } = &e else {
        panic!("not Rejected: {e:?}");
    };
    assert_eq!(*status, StatusCode::BAD_REQUEST);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].code.as_deref(), Some("AGREEMENT_NOT_FOUND"));
    assert!(errors[0].message.as_deref().is_some_and(|m| !m.is_empty()));
    assert_eq!(e.disposition(), Disposition::Rejected);
    assert_eq!(e.status(), Some(StatusCode::BAD_REQUEST));
    assert_eq!(e.kinde_errors(), errors.as_slice());
    assert!(e.to_string().contains("AGREEMENT_NOT_FOUND"), "{e}");
    assert_eq!(kinde.ledger_sum(), 0);
    // The known agreement still goes through.
    send(&client, &usage(1)).await.expect("accepted");
}

/// Tokens that are refused from birth (lifetime zero): the first is refused, one more is
/// minted, and its refusal is returned. `status` is what the emulator answers.
async fn refused_after_one_remint(status: u16) {
    let kinde = start(
        Emulator::builder()
            .unauthorized_status(status)
            .token_lifetime(Duration::ZERO),
    );
    let client = client(&kinde);
    let e = failure(send(&client, &usage(1)).await, &secrets(&kinde));
    let ApiError::Unauthorized {
        status: got,
        errors,
        ..
    } = &e
    else {
        panic!("not Unauthorized: {e:?}");
    };
    assert_eq!(got.as_u16(), status);
    assert_eq!(errors[0].code.as_deref(), Some("UNAUTHORIZED"));
    assert_eq!(e.disposition(), Disposition::Rejected);
    assert!(e.to_string().contains("create:meter_usage"), "{e}");
    // One token for the first try, exactly one more after the refusal, and no third.
    assert_eq!(kinde.token_requests().len(), 2);
    assert_eq!(kinde.counts().tokens_issued, 2);
    let requests = kinde.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|r| r.status == Some(status)));
    assert_ne!(
        requests[0].header("authorization"),
        requests[1].header("authorization"),
        "the retry carries the new token"
    );
}

#[tokio::test]
async fn status_403_is_unauthorized_after_one_remint() {
    refused_after_one_remint(403).await;
}

#[tokio::test]
async fn status_401_is_unauthorized_after_one_remint() {
    refused_after_one_remint(401).await;
}

#[tokio::test]
async fn refused_static_token_is_unauthorized_without_retry() {
    let kinde = start(Emulator::builder());
    let client = Client::new(
        kinde.domain(),
        Credentials::access_token("not-a-token-kinde-issued"),
    )
    .expect("client");
    let mut known = secrets(&kinde);
    known.push("not-a-token-kinde-issued".to_owned());
    let e = failure(send(&client, &usage(1)).await, &known);
    assert!(
        matches!(e, ApiError::Unauthorized { status, .. } if status == StatusCode::FORBIDDEN),
        "{e:?}"
    );
    assert_eq!(
        kinde.requests().len(),
        1,
        "a static token cannot be renewed"
    );
    assert!(kinde.token_requests().is_empty());
}

#[tokio::test]
async fn throttle_429_is_throttled_with_ratelimit_reset() {
    let kinde = start(Emulator::builder());
    let client = client(&kinde);
    kinde.throttle_for(Duration::from_secs(5));
    let e = failure(send(&client, &usage(1)).await, &secrets(&kinde));
    let ApiError::Throttled {
        retry_after,
        errors,
    } = &e
    else {
        panic!("not Throttled: {e:?}");
    };
    assert_eq!(*retry_after, Some(Duration::from_secs(5)));
    assert_eq!(errors[0].code.as_deref(), Some("TOO_MANY_REQUESTS"));
    assert_eq!(e.disposition(), Disposition::NotApplied);
    assert_eq!(e.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert!(e.to_string().contains("retry in 5 s"), "{e}");
    assert_eq!(kinde.requests()[0].rate_limit_reset, Some(5));
    assert_eq!(kinde.ledger_sum(), 0);
    kinde.throttle_for(Duration::ZERO);
    send(&client, &usage(1))
        .await
        .expect("accepted once the throttle ends");
}

#[tokio::test]
async fn rate_limit_429_is_throttled_and_the_wait_matches_the_headers() {
    let kinde = start(
        Emulator::builder()
            .rate_limit(RateLimit::new(0.25, 1))
            .retry_after_header(true),
    );
    let client = client(&kinde);
    send(&client, &usage(1))
        .await
        .expect("the first fits the burst");
    let e = failure(send(&client, &usage(1)).await, &secrets(&kinde));
    let ApiError::Throttled { retry_after, .. } = e else {
        panic!("not Throttled: {e:?}");
    };
    let sent = &kinde.requests()[1];
    assert_eq!(sent.rate_limit_reset, Some(4));
    assert_eq!(sent.retry_after, Some(4));
    assert_eq!(retry_after, Some(Duration::from_secs(4)));
}

#[tokio::test]
async fn server_faults_are_server_errors_and_only_503_is_not_applied() {
    let cases = [
        (
            Faults::none().status_500(1.0),
            500,
            Some("INTERNAL_ERROR"),
            Disposition::Ambiguous,
            false,
        ),
        (
            Faults::none().status_502(1.0),
            502,
            None,
            Disposition::Ambiguous,
            false,
        ),
        (
            Faults::none().status_503(1.0),
            503,
            Some("SERVICE_UNAVAILABLE"),
            Disposition::NotApplied,
            false,
        ),
        (
            Faults::none().status_500_after_apply(1.0),
            500,
            Some("INTERNAL_ERROR"),
            Disposition::Ambiguous,
            true,
        ),
    ];
    for (faults, status, code, disposition, applied) in cases {
        let kinde = start(Emulator::builder().faults(faults));
        let client = client(&kinde);
        let e = failure(send(&client, &usage(7)).await, &secrets(&kinde));
        let ApiError::Server {
            status: got,
            errors,
        } = &e
        else {
            panic!("{status}: not Server: {e:?}");
        };
        assert_eq!(got.as_u16(), status);
        // The 502 has an HTML body: no error list, and no panic.
        assert_eq!(
            errors.first().and_then(|e| e.code.as_deref()),
            code,
            "{status}"
        );
        assert_eq!(e.disposition(), disposition, "{status}");
        assert_eq!(kinde.total(AGREEMENT, FEATURE), if applied { 7 } else { 0 });
    }
}

#[tokio::test]
async fn dropped_connections_are_transport_errors() {
    // The emulator reads the whole request, then closes the connection without a
    // status line. The client cannot tell whether the usage was applied: it sees a
    // connection closed before the answer (hyper's "connection closed before message
    // completed"), `ApiError::Transport`, Ambiguous — in both cases.
    for (faults, applied) in [
        (Faults::none().drop_before_apply(1.0), false),
        (Faults::none().drop_after_apply(1.0), true),
    ] {
        let kinde = start(Emulator::builder().faults(faults));
        let client = client(&kinde);
        let e = failure(send(&client, &usage(4)).await, &secrets(&kinde));
        assert!(matches!(e, ApiError::Transport { .. }), "{e:?}");
        assert_eq!(e.disposition(), Disposition::Ambiguous);
        assert_eq!(e.status(), None);
        assert!(e.to_string().contains("may have been applied"), "{e}");
        // The cause is at the end of the source chain; `Display` shows only reqwest's
        // "error sending request for url (...)".
        let chain = error_texts(&e);
        assert!(
            chain
                .iter()
                .any(|t| t.contains("connection closed before message completed")),
            "{chain:#?}"
        );
        assert_eq!(kinde.requests().len(), 1, "not resent by the client");
        assert_eq!(kinde.total(AGREEMENT, FEATURE), if applied { 4 } else { 0 });
    }
}

#[tokio::test]
async fn malformed_200_is_undecodable() {
    let kinde = start(Emulator::builder().faults(Faults::none().malformed_200(1.0)));
    let client = client(&kinde);
    let mut bodies = Vec::new();
    for _ in 0..6 {
        let e = failure(send(&client, &usage(1)).await, &secrets(&kinde));
        let ApiError::Undecodable { status, body, .. } = &e else {
            panic!("not Undecodable: {e:?}");
        };
        assert_eq!(*status, StatusCode::OK);
        assert_eq!(e.disposition(), Disposition::Ambiguous);
        bodies.push(body.clone());
    }
    // Both shapes the emulator sends: HTML and truncated JSON.
    assert!(bodies.iter().any(|b| b.starts_with("<html>")), "{bodies:?}");
    assert!(
        bodies.iter().any(|b| b.starts_with("{\"message\"")),
        "{bodies:?}"
    );
    assert_eq!(kinde.total(AGREEMENT, FEATURE), 6, "each was applied");
}

#[tokio::test]
async fn slow_answer_is_a_timeout() {
    let kinde = start(Emulator::builder().faults(Faults::none().latency(Duration::from_secs(3))));
    let quick = Client::builder(kinde.domain(), kinde.credentials())
        .request_timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let started = Instant::now();
    let e = failure(send(&quick, &usage(1)).await, &secrets(&kinde));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(e, ApiError::Timeout { after } if after == Duration::from_millis(300)),
        "{e:?}"
    );
    assert_eq!(e.disposition(), Disposition::Ambiguous);
    // A per-call timeout overrides the client's (10 s by default).
    let patient = client(&kinde);
    let options = RequestOptions::new().timeout(Duration::from_millis(200));
    let e = failure(
        patient
            .create_meter_usage_record_with_options(&usage(1), &options)
            .await,
        &secrets(&kinde),
    );
    assert!(
        matches!(e, ApiError::Timeout { after } if after == Duration::from_millis(200)),
        "{e:?}"
    );
}

#[tokio::test]
async fn unbounded_timeouts_are_accepted() {
    // `Duration::MAX` is a natural way to say "no timeout"; it must not overflow.
    let kinde = start(Emulator::builder());
    let client = Client::builder(kinde.domain(), kinde.credentials())
        .request_timeout(Duration::MAX)
        .build()
        .expect("client");
    send(&client, &usage(1)).await.expect("accepted");
    let options = RequestOptions::new().timeout(Duration::MAX);
    client
        .create_meter_usage_record_with_options(&usage(1), &options)
        .await
        .expect("accepted");
    assert_eq!(kinde.total(AGREEMENT, FEATURE), 2);
}

#[tokio::test]
async fn server_down_is_not_sent() {
    let kinde = start(Emulator::builder());
    kinde.go_down();
    // Minted credentials: the token request is the one that cannot be sent.
    let minted = client(&kinde);
    let e = failure(send(&minted, &usage(1)).await, &secrets(&kinde));
    assert!(
        matches!(e, ApiError::Token(TokenError::NotSent { .. })),
        "{e:?}"
    );
    assert_eq!(e.disposition(), Disposition::NotApplied);
    // A static token: the meter request itself cannot be sent.
    let token = kinde.issue_token();
    let fixed =
        Client::new(kinde.domain(), Credentials::access_token(token.clone())).expect("client");
    let mut known = secrets(&kinde);
    known.push(token);
    let e = failure(send(&fixed, &usage(1)).await, &known);
    assert!(matches!(e, ApiError::NotSent { .. }), "{e:?}");
    assert_eq!(e.disposition(), Disposition::NotApplied);
    assert!(e.to_string().contains("nothing was sent"), "{e}");
    assert!(kinde.requests().is_empty() && kinde.token_requests().is_empty());
    kinde.come_up().expect("back up");
    send(&fixed, &usage(1))
        .await
        .expect("accepted once back up");
    send(&minted, &usage(1))
        .await
        .expect("accepted once back up");
}

#[tokio::test]
async fn refused_client_secret_is_a_token_error() {
    let kinde = start(Emulator::builder());
    let wrong = "wrong-client-secret-123";
    let client = Client::new(
        kinde.domain(),
        Credentials::client_credentials(kinde.client_id(), wrong),
    )
    .expect("client");
    let mut known = secrets(&kinde);
    known.push(wrong.to_owned());
    let e = failure(send(&client, &usage(1)).await, &known);
    let ApiError::Token(TokenError::Refused {
        status,
        error,
        description,
    }) = &e
    else {
        panic!("not a refused token: {e:?}");
    };
    assert_eq!(*status, StatusCode::UNAUTHORIZED);
    assert_eq!(error.as_deref(), Some("invalid_client"));
    assert!(description.is_some());
    assert_eq!(e.disposition(), Disposition::NotApplied);
    assert!(e.to_string().contains("invalid_client"), "{e}");
    assert!(
        kinde.requests().is_empty(),
        "no meter request without a token"
    );
    assert_eq!(kinde.token_requests().len(), 1);
}

// ----- tokens -----

#[tokio::test]
async fn sequential_calls_share_one_token() {
    let kinde = start(Emulator::builder());
    let client = client(&kinde);
    let clone = client.clone();
    for i in 0..20 {
        let c = if i % 2 == 0 { &client } else { &clone };
        send(c, &usage(1)).await.expect("accepted");
    }
    assert_eq!(kinde.token_requests().len(), 1);
    assert_eq!(kinde.counts().tokens_issued, 1);
    assert_eq!(kinde.total(AGREEMENT, FEATURE), 20);
}

#[tokio::test]
async fn short_lived_token_is_renewed_at_half_life_before_it_expires() {
    // A 3 s token is renewed after 1.5 s (tokens under two minutes: at half-life).
    let lifetime = Duration::from_secs(3);
    let kinde = start(Emulator::builder().token_lifetime(lifetime));
    let client = client(&kinde);
    send(&client, &usage(1)).await.expect("first");
    tokio::time::sleep(Duration::from_millis(500)).await;
    send(&client, &usage(1))
        .await
        .expect("before the refresh point");
    assert_eq!(kinde.token_requests().len(), 1, "still the first token");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    send(&client, &usage(1))
        .await
        .expect("after the refresh point");
    let tokens = kinde.token_requests();
    assert_eq!(tokens.len(), 2, "renewed");
    let gap = tokens[1].arrived_at - tokens[0].arrived_at;
    assert!(
        gap >= lifetime / 2 && gap < lifetime,
        "renewed {gap:?} after the first, within its {lifetime:?}"
    );
    let requests = kinde.requests();
    assert!(
        requests.iter().all(|r| r.status == Some(200)),
        "no 403 first"
    );
    assert_eq!(
        requests[0].header("authorization"),
        requests[1].header("authorization")
    );
    assert_ne!(
        requests[1].header("authorization"),
        requests[2].header("authorization")
    );
}

#[tokio::test]
async fn token_without_expires_in_is_kept_for_the_default_hour() {
    let kinde = start(Emulator::builder().omit_expires_in(true));
    let client = client(&kinde);
    send(&client, &usage(1)).await.expect("first");
    // Past where a 3 s token would have been renewed (see the test above).
    tokio::time::sleep(Duration::from_millis(1800)).await;
    send(&client, &usage(1)).await.expect("second");
    assert_eq!(kinde.token_requests().len(), 1);
    assert_eq!(kinde.counts().unauthorized, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_calls_mint_a_single_token() {
    const CALLS: usize = 100;
    let kinde = start(Emulator::builder());
    let client = client(&kinde);
    let barrier = Arc::new(tokio::sync::Barrier::new(CALLS));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CALLS {
        let (client, barrier) = (client.clone(), Arc::clone(&barrier));
        tasks.spawn(async move {
            barrier.wait().await;
            client.create_meter_usage_record(&usage(1)).await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("task").expect("accepted");
    }
    assert_eq!(kinde.token_requests().len(), 1, "single flight");
    assert_eq!(kinde.requests().len(), CALLS);
    assert_eq!(kinde.total(AGREEMENT, FEATURE), 100);
}

#[tokio::test]
async fn refused_token_is_reminted_once_and_a_second_refusal_is_returned() {
    let kinde = start(Emulator::builder());
    let client = client(&kinde);
    send(&client, &usage(1)).await.expect("first");
    kinde.expire_tokens();
    send(&client, &usage(1))
        .await
        .expect("succeeds with a new token");
    assert_eq!(kinde.token_requests().len(), 2, "exactly one new token");
    let statuses: Vec<_> = kinde.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(200), Some(403), Some(200)]);

    // Now the new token is refused too: one more mint, then the 403 is returned.
    kinde.set_token_lifetime(Duration::ZERO);
    kinde.expire_tokens();
    let e = failure(send(&client, &usage(1)).await, &secrets(&kinde));
    assert!(
        matches!(e, ApiError::Unauthorized { status, .. } if status == StatusCode::FORBIDDEN),
        "{e:?}"
    );
    assert_eq!(
        kinde.token_requests().len(),
        3,
        "one mint per call, no loop"
    );
    assert_eq!(kinde.requests().len(), 5, "two attempts, no loop");
    assert_eq!(kinde.total(AGREEMENT, FEATURE), 2);
}

// ----- headers -----

#[tokio::test]
async fn token_requests_carry_kinde_sdk_and_audience_and_meter_requests_the_user_agent() {
    let kinde = start(Emulator::builder());
    send(&client(&kinde), &usage(1)).await.expect("accepted");
    let token = &kinde.token_requests()[0];
    assert!(token.issued);
    assert_eq!(token.grant_type.as_deref(), Some("client_credentials"));
    assert_eq!(token.client_id.as_deref(), Some(kinde.client_id()));
    assert_eq!(token.audience, Some(format!("{}/api", kinde.base_url())));
    assert_eq!(token.audience, Some(kinde.audience()));
    let sdk = token.kinde_sdk().expect("Kinde-SDK header");
    let parts: Vec<&str> = sdk.split('/').collect();
    assert_eq!(parts.len(), 4, "{sdk}");
    assert_eq!(parts[0], "Rust", "{sdk}");
    assert_eq!(parts[1], env!("CARGO_PKG_VERSION"), "{sdk}");
    assert_eq!(parts[3], "rust", "{sdk}");
    let rustc = parts[2];
    assert!(
        rustc.split('.').count() >= 3
            && rustc
                .split('.')
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        "the rustc version is dotted numbers: {sdk}"
    );
    assert!(
        sdk.starts_with("Rust/0.1.0/") && sdk.ends_with("/rust"),
        "{sdk}"
    );
    assert!(
        token
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded")),
        "{token:?}"
    );
    let meter = &kinde.requests()[0];
    assert_eq!(
        meter.header("user-agent"),
        Some(concat!("kinde-meter/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(meter.header("user-agent"), Some("kinde-meter/0.1.0"));
    assert_eq!(meter.header("kinde-sdk"), None, "only on token requests");
}

#[tokio::test]
async fn idempotency_key_is_sent_as_a_header() {
    let kinde = start(Emulator::builder());
    let client = client(&kinde);
    let options = RequestOptions::new().idempotency_key("usage-2024-11-18-0001");
    client
        .create_meter_usage_record_with_options(&usage(1), &options)
        .await
        .expect("accepted");
    send(&client, &usage(1)).await.expect("accepted");
    let requests = kinde.requests();
    assert_eq!(
        requests[0].header("idempotency-key"),
        Some("usage-2024-11-18-0001")
    );
    assert_eq!(requests[1].header("idempotency-key"), None, "only when set");
    let accepted = kinde.accepted();
    assert_eq!(
        accepted[0].idempotency_key.as_deref(),
        Some("usage-2024-11-18-0001")
    );
}

#[tokio::test]
async fn invalid_idempotency_key_sends_nothing() {
    let kinde = start(Emulator::builder());
    let client = client(&kinde);
    for key in ["line\nbreak", "nul\0byte", "cr\rreturn"] {
        let options = RequestOptions::new().idempotency_key(key);
        let e = failure(
            client
                .create_meter_usage_record_with_options(&usage(1), &options)
                .await,
            &secrets(&kinde),
        );
        assert!(
            matches!(e, ApiError::InvalidRequest { .. }),
            "{key:?}: {e:?}"
        );
        assert_eq!(e.disposition(), Disposition::Rejected);
        assert!(e.to_string().contains("idempotency key"), "{e}");
    }
    assert!(kinde.token_requests().is_empty(), "not even a token");
    assert!(kinde.requests().is_empty());
}

#[tokio::test]
async fn body_and_headers_are_what_the_contract_asks_for() {
    let kinde = start(Emulator::builder().static_token("static-token-for-tests"));
    let fixed = Client::new(
        kinde.domain(),
        Credentials::access_token("static-token-for-tests"),
    )
    .expect("client");
    let with_timestamp = usage(1)
        .with_meter_type(MeterType::Absolute)
        .with_timestamp(Timestamp::from_unix_seconds(1_731_897_123).expect("timestamp"));
    let without_timestamp = CreateMeterUsageRecordRequest::new(
        AgreementId::new("agreement_1").expect("agreement id"),
        FeatureCode::new("CcdkvEXpbg6UY").expect("feature code"),
        0,
    )
    .with_value(MeterValue::decimal("2.50").expect("value"));
    send(&fixed, &with_timestamp).await.expect("accepted");
    send(&fixed, &without_timestamp).await.expect("accepted");
    let requests = kinde.requests();
    assert_eq!(
        requests[0].body_str(),
        r#"{"customer_agreement_id":"agreement_0195ac80a14c2ca2cec97d026d864de0","billing_feature_code":"api_calls","meter_value":"1","meter_usage_timestamp":"2024-11-18T02:32:03Z","meter_type_code":"absolute"}"#
    );
    assert_eq!(
        requests[1].body_str(),
        r#"{"customer_agreement_id":"agreement_1","billing_feature_code":"CcdkvEXpbg6UY","meter_value":"2.50","meter_type_code":"delta"}"#
    );
    for r in &requests {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/api/v1/billing/meter_usage");
        assert_eq!(r.query, None);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("accept"), Some("application/json"));
        assert_eq!(
            r.header("authorization"),
            Some("Bearer static-token-for-tests")
        );
        assert_eq!(r.outcome, RequestOutcome::Accepted);
    }
    let accepted = kinde.accepted();
    assert!(accepted.iter().all(|a| a.meter_type_explicit));
    assert_eq!(
        accepted[0].timestamp.as_deref(),
        Some("2024-11-18T02:32:03Z")
    );
    assert_eq!(accepted[1].timestamp, None);
    assert_eq!(kinde.total("agreement_1", "CcdkvEXpbg6UY"), "2.5");

    // With minted tokens the bearer is the one the token endpoint issued.
    let kinde = start(Emulator::builder());
    send(&client(&kinde), &usage(1)).await.expect("accepted");
    let bearer = kinde.requests()[0]
        .header("authorization")
        .expect("authorization")
        .to_owned();
    assert!(bearer.starts_with("Bearer emu_"), "{bearer}");
}

// ----- hostile answers from a hand-written server -----

const RAW_TOKEN: &str = "raw-static-token-0123";

/// A whole HTTP/1.1 response: status line, headers, `Content-Length`, `Connection: close`.
fn raw_response(status_line: &str, headers: &[&str], body: &str) -> String {
    let mut head = format!("HTTP/1.1 {status_line}\r\n");
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    format!(
        "{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn raw_call(response: impl Into<Vec<u8>>) -> (Answer, RawHttpServer) {
    let server = RawHttpServer::start(response).expect("raw server");
    let client = Client::builder(
        Domain::parse(&server.base_url()).expect("domain"),
        Credentials::access_token(RAW_TOKEN),
    )
    .request_timeout(Duration::from_secs(5))
    .build()
    .expect("client");
    (send(&client, &usage(1)).await, server)
}

async fn raw_failure(response: impl Into<Vec<u8>>) -> ApiError {
    let (answer, server) = raw_call(response).await;
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(
        requests[0].starts_with("POST /api/v1/billing/meter_usage HTTP/1.1\r\n"),
        "{requests:?}"
    );
    failure(answer, &[RAW_TOKEN.to_owned()])
}

fn undecodable_reason(e: &ApiError) -> &str {
    match e {
        ApiError::Undecodable { status, reason, .. } => {
            assert_eq!(*status, StatusCode::OK);
            assert_eq!(e.disposition(), Disposition::Ambiguous);
            reason
        }
        other => panic!("not Undecodable: {other:?}"),
    }
}

#[tokio::test]
async fn raw_200_with_an_empty_body_is_undecodable() {
    let e = raw_failure(raw_response(
        "200 OK",
        &["Content-Type: application/json"],
        "",
    ))
    .await;
    assert!(undecodable_reason(&e).contains("empty"), "{e}");
}

#[tokio::test]
async fn raw_200_with_a_json_array_is_undecodable() {
    let e = raw_failure(raw_response(
        "200 OK",
        &["Content-Type: application/json"],
        "[]",
    ))
    .await;
    assert!(undecodable_reason(&e).contains("not an object"), "{e}");
}

#[tokio::test]
async fn raw_200_with_a_huge_body_is_undecodable_with_a_short_excerpt() {
    let body = format!("{{\"message\":\"{}", "x".repeat((1 << 20) - 12));
    assert_eq!(body.len(), 1 << 20);
    let e = raw_failure(raw_response(
        "200 OK",
        &["Content-Type: application/json"],
        &body,
    ))
    .await;
    undecodable_reason(&e);
    let ApiError::Undecodable { body: excerpt, .. } = &e else {
        unreachable!()
    };
    assert!(excerpt.starts_with("{\"message\":\"xxx"), "{excerpt}");
    assert!(excerpt.chars().count() <= 201, "{} chars", excerpt.len());
    let shown = e.to_string();
    assert!(shown.len() < 1000, "{} bytes", shown.len());
}

#[tokio::test]
async fn raw_400_with_html_is_rejected_without_errors() {
    let html = "<html><body><h1>400 Bad Request</h1></body></html>";
    let e = raw_failure(raw_response(
        "400 Bad Request",
        &["Content-Type: text/html"],
        html,
    ))
    .await;
    assert!(
        matches!(&e, ApiError::Rejected { status, errors } if *status == StatusCode::BAD_REQUEST && errors.is_empty()),
        "{e:?}"
    );
    assert_eq!(e.disposition(), Disposition::Rejected);
    assert!(e.to_string().contains("no error detail"), "{e}");
}

// One test per raw response, alike in shape: each matches its own error variant.
#[tokio::test]
async fn raw_302_is_redirected_and_not_followed() {
    // Following it would send a second request (with the token) to the same server.
    let e = raw_failure(raw_response(
        "302 Found",
        &["Location: /somewhere/else"],
        "",
    ))
    .await;
    assert!(
        matches!(&e, ApiError::Redirected { status, location } if *status == StatusCode::FOUND && location.as_deref() == Some("/somewhere/else")),
        "{e:?}"
    );
    assert_eq!(e.disposition(), Disposition::Rejected);
    assert!(e.to_string().contains("KINDE_DOMAIN"), "{e}");
}

#[tokio::test]
async fn raw_429_with_a_fractional_ratelimit_reset() {
    let e = raw_failure(raw_response(
        "429 Too Many Requests",
        &["RateLimit-Reset: 2.5"],
        "",
    ))
    .await;
    assert!(
        matches!(&e, ApiError::Throttled { retry_after: Some(wait), errors } if *wait == Duration::from_millis(2500) && errors.is_empty()),
        "{e:?}"
    );
    assert_eq!(e.disposition(), Disposition::NotApplied);
}

#[tokio::test]
async fn raw_429_with_only_retry_after() {
    let e = raw_failure(raw_response(
        "429 Too Many Requests",
        &["Retry-After: 7", "Content-Type: application/json"],
        r#"{"errors":[{"code":"SLOW_DOWN","message":"too fast"}]}"#,
    ))
    .await;
    let ApiError::Throttled {
        retry_after,
        errors,
    } = &e
    else {
        panic!("not Throttled: {e:?}");
    };
    assert_eq!(*retry_after, Some(Duration::from_secs(7)));
    assert_eq!(errors[0].code.as_deref(), Some("SLOW_DOWN"));
}

#[tokio::test]
async fn raw_garbage_instead_of_http_is_an_error() {
    let e = raw_failure(&b"\x16\x03\x01\x02\x00garbage\xff\xfe\r\n\r\nmore garbage"[..]).await;
    // hyper refuses the status line; the request had been sent.
    assert!(matches!(e, ApiError::Transport { .. }), "{e:?}");
    assert_eq!(e.disposition(), Disposition::Ambiguous);
}

#[tokio::test]
async fn raw_request_carries_the_static_token() {
    let (answer, server) = raw_call(raw_response(
        "200 OK",
        &["Content-Type: application/json"],
        r#"{"message":"Success","code":"OK"}"#,
    ))
    .await;
    let request = server.requests().remove(0).to_ascii_lowercase();
    assert!(
        request.contains(&format!("\r\nauthorization: bearer {RAW_TOKEN}\r\n")),
        "{request}"
    );
    // The body is sent with its length, not chunked.
    let (_, body) = request.split_once("\r\n\r\n").expect("a body");
    assert!(body.starts_with('{'), "{request}");
    assert!(
        request.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
        "{request}"
    );
    assert!(!request.contains("transfer-encoding"), "{request}");
    assert_eq!(answer.expect("accepted").data.code.as_deref(), Some("OK"));
}

/// A client that mints its tokens from the raw server.
fn raw_minting_client(server: &RawHttpServer) -> Client {
    Client::builder(
        Domain::parse(&server.base_url()).expect("domain"),
        Credentials::client_credentials("raw-client-id", "raw-client-secret-0123"),
    )
    .request_timeout(Duration::from_secs(5))
    .build()
    .expect("client")
}

#[tokio::test]
async fn raw_token_endpoint_answering_html_is_an_undecodable_token() {
    let server = RawHttpServer::start(raw_response(
        "200 OK",
        &["Content-Type: text/html"],
        "<html>login</html>",
    ))
    .expect("raw server");
    let answer = send(&raw_minting_client(&server), &usage(1)).await;
    let e = failure(answer, &["raw-client-secret-0123".to_owned()]);
    assert!(
        matches!(&e, ApiError::Token(TokenError::Undecodable { status, .. }) if *status == StatusCode::OK),
        "{e:?}"
    );
    assert_eq!(e.disposition(), Disposition::NotApplied);
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "no meter request without a token");
    assert!(requests[0].starts_with("POST /oauth2/token HTTP/1.1\r\n"));
}

#[tokio::test]
async fn raw_token_with_an_empty_access_token_is_refused() {
    let server = RawHttpServer::start(raw_response(
        "200 OK",
        &["Content-Type: application/json"],
        r#"{"access_token":"","expires_in":3600,"token_type":"bearer"}"#,
    ))
    .expect("raw server");
    let answer = send(&raw_minting_client(&server), &usage(1)).await;
    let e = failure(answer, &["raw-client-secret-0123".to_owned()]);
    assert!(
        matches!(&e, ApiError::Token(TokenError::Undecodable { reason, .. }) if reason.contains("empty")),
        "{e:?}"
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn raw_token_endpoint_failing_is_unavailable_not_a_credentials_problem() {
    let server = RawHttpServer::start(raw_response(
        "503 Service Unavailable",
        &["Content-Type: text/html"],
        "<html>down</html>",
    ))
    .expect("raw server");
    let answer = send(&raw_minting_client(&server), &usage(1)).await;
    let e = failure(answer, &["raw-client-secret-0123".to_owned()]);
    assert!(
        matches!(&e, ApiError::Token(TokenError::Unavailable { reason }) if reason.contains("503")),
        "{e:?}"
    );
    assert_eq!(e.disposition(), Disposition::NotApplied);
    let shown = e.to_string();
    assert!(
        shown.contains("retry later") && !shown.contains("CLIENT_SECRET"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_waiting_on_a_failed_token_request_share_its_failure() {
    let server =
        RawHttpServer::start(raw_response("503 Service Unavailable", &[], "")).expect("raw server");
    let client = raw_minting_client(&server);
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (client, barrier) = (client.clone(), std::sync::Arc::clone(&barrier));
        calls.spawn(async move {
            barrier.wait().await;
            send(&client, &usage(1)).await
        });
    }
    for answer in calls.join_all().await {
        assert!(
            matches!(answer, Err(ApiError::Token(TokenError::Unavailable { .. }))),
            "{answer:?}"
        );
    }
    // Callers waiting on an attempt share its failure; a caller first polled after an
    // attempt failed starts the next, so a loaded machine may see a few: never twenty.
    let attempts = server.requests().len();
    assert!((1..=5).contains(&attempts), "{attempts} token requests");
}

#[tokio::test]
async fn raw_token_with_an_absurd_lifetime_is_used_without_panicking() {
    // The same answer serves the token request and then the meter request (an object
    // with no known field is a valid meter response).
    let server = RawHttpServer::start(raw_response(
        "200 OK",
        &["Content-Type: application/json"],
        r#"{"access_token":"raw-minted-token-0123","expires_in":18446744073709551615,"token_type":"bearer"}"#,
    ))
    .expect("raw server");
    let client = raw_minting_client(&server);
    for _ in 0..2 {
        let response = send(&client, &usage(1)).await.expect("accepted");
        assert_eq!(response.data, CreateMeterUsageRecordResponse::default());
    }
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "one token, two meter requests");
    assert!(requests[0].starts_with("POST /oauth2/token "));
    assert!(
        requests[2]
            .to_ascii_lowercase()
            .contains("\r\nauthorization: bearer raw-minted-token-0123\r\n"),
        "{}",
        requests[2]
    );
}

#[tokio::test]
async fn raw_200_cut_short_is_a_transport_error() {
    // The head promises 100 bytes; 9 come, then the connection closes.
    let e = raw_failure(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"message\"",
    )
    .await;
    assert!(matches!(e, ApiError::Transport { .. }), "{e:?}");
    assert_eq!(e.disposition(), Disposition::Ambiguous);
}

#[tokio::test]
async fn unanswered_requests_time_out() {
    // A listener that never accepts: connections complete in the kernel's backlog and
    // the request is written, but nothing ever answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let domain =
        Domain::parse(&format!("http://{}", silent.local_addr().expect("addr"))).expect("domain");
    let timeout = Duration::from_millis(300);
    let fixed = Client::builder(domain.clone(), Credentials::access_token(RAW_TOKEN))
        .request_timeout(timeout)
        .build()
        .expect("client");
    let e = failure(send(&fixed, &usage(1)).await, &[RAW_TOKEN.to_owned()]);
    assert!(
        matches!(e, ApiError::Timeout { after } if after == timeout),
        "{e:?}"
    );
    assert_eq!(e.disposition(), Disposition::Ambiguous);
    // Minting: the token request is the one that gets no answer, so nothing was applied.
    let minting = Client::builder(
        domain,
        Credentials::client_credentials("id", "silent-client-secret"),
    )
    .request_timeout(timeout)
    .build()
    .expect("client");
    let e = failure(
        send(&minting, &usage(1)).await,
        &["silent-client-secret".to_owned()],
    );
    assert!(
        matches!(e, ApiError::Token(TokenError::Timeout { .. })),
        "{e:?}"
    );
    assert_eq!(e.disposition(), Disposition::NotApplied);
}

// ----- secrets -----

#[test]
fn debug_of_credentials_config_and_client_hides_secrets() {
    const SECRET: &str = "client-secret-do-not-print";
    const TOKEN: &str = "access-token-do-not-print";
    let domain = Domain::parse("acme.kinde.com").expect("domain");
    let pair = Credentials::client_credentials("visible-client-id", SECRET);
    let token = Credentials::access_token(TOKEN);
    let secrets = [SECRET.to_owned(), TOKEN.to_owned()];
    let mut texts = Vec::new();
    for creds in [pair, token] {
        let config = Config::new(domain.clone(), creds.clone()).on_error(|_| {});
        let client = Client::new(domain.clone(), creds.clone()).expect("client");
        let config_client = config.client().expect("client");
        texts.extend([
            format!("{creds:?}"),
            format!("{config:?}"),
            format!("{client:?}"),
            format!("{config_client:?}"),
        ]);
    }
    assert!(texts[0].contains("visible-client-id"), "{}", texts[0]);
    assert!(texts[1].contains("visible-client-id"), "{}", texts[1]);
    assert_redacted(&texts, &secrets);
}

#[tokio::test]
async fn logs_never_contain_secrets() {
    let logs = kinde_meter_workspace::logs::recorded();
    let kinde = start(Emulator::builder().known_agreements([AGREEMENT]));
    let client = client(&kinde);
    send(&client, &usage(1)).await.expect("first");
    kinde.expire_tokens();
    send(&client, &usage(1)).await.expect("after a re-mint");
    let unknown = CreateMeterUsageRecordRequest::new(
        AgreementId::new("agreement_unknown").expect("agreement id"),
        FeatureCode::from_static(FEATURE),
        1u64,
    );
    let rejected = send(&client, &unknown).await.expect_err("rejected");
    assert!(
        matches!(rejected, ApiError::Rejected { .. }),
        "{rejected:?}"
    );

    let lines = logs.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let thread = std::thread::current();
    let here = format!("[{}] ", thread.name().expect("test threads are named"));
    let mine: Vec<&String> = lines.iter().filter(|l| l.starts_with(&here)).collect();
    let count = |what: &str| mine.iter().filter(|l| l.contains(what)).count();
    assert_eq!(count("minted a Kinde access token"), 2, "{mine:#?}");
    assert_eq!(count("minting a new one"), 1, "{mine:#?}");
    let secrets = secrets(&kinde);
    assert_eq!(secrets.len(), 1 + 4, "the secret and four bearer headers");
    // Every line, from every test of this file: they share the emulator's client secret.
    assert_redacted(&lines, &secrets);
    assert_redacted(&error_texts(&rejected), &secrets);
}

// ----- https -----

#[test]
fn plain_http_is_refused_unless_loopback_or_allowed() {
    let creds = Credentials::client_credentials("client-id", "client-secret");
    let insecure = Domain::parse("http://acme.kinde.com").expect("parses");
    let e = Client::new(insecure.clone(), creds.clone()).expect_err("refused");
    assert!(
        matches!(&e, BuildError::InsecureHttp { domain } if domain == "http://acme.kinde.com"),
        "{e:?}"
    );
    assert!(e.to_string().contains("use https://"), "{e}");
    let e = Config::new(insecure.clone(), creds.clone())
        .client()
        .expect_err("refused through Config too");
    assert!(matches!(e, ConfigError::InsecureHttp { .. }), "{e:?}");

    Client::builder(insecure.clone(), creds.clone())
        .allow_http(true)
        .build()
        .expect("allowed explicitly");
    Config::new(insecure, creds.clone())
        .allow_http(true)
        .client()
        .expect("allowed explicitly through Config");
    for loopback in [
        "http://127.0.0.1:1",
        "http://localhost:1",
        "http://[::1]:1",
        "https://acme.kinde.com",
    ] {
        let domain = Domain::parse(loopback).expect(loopback);
        Client::new(domain, creds.clone()).expect(loopback);
    }
}

// ----- the token endpoint's body is capped -----

/// A token endpoint that answers `200 OK` with a `declared`-byte body and streams it from
/// one small buffer, counting the bytes it manages to write before the client hangs up.
struct StreamingTokenEndpoint {
    addr: std::net::SocketAddr,
    written: Arc<std::sync::atomic::AtomicUsize>,
    done: std::sync::mpsc::Receiver<()>,
}

impl StreamingTokenEndpoint {
    fn start(declared: usize) -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let addr = listener.local_addr().expect("addr");
        let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (count, (finished, done)) = (Arc::clone(&written), std::sync::mpsc::channel());
        std::thread::spawn(move || {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            // The request head; its small form body is left unread.
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n{{\"access_token\":\""
            );
            if conn.write_all(head.as_bytes()).is_ok() {
                // The body's first bytes went out with the head.
                let mut sent = head.len() - head.find("\r\n\r\n").expect("head end") - 4;
                let chunk = [b'x'; 64 * 1024];
                while sent < declared {
                    let n = chunk.len().min(declared - sent);
                    // Stops when the client hangs up (EPIPE, reset).
                    if conn.write_all(&chunk[..n]).is_err() {
                        break;
                    }
                    sent += n;
                    count.store(sent, std::sync::atomic::Ordering::SeqCst);
                }
            }
            let _ = finished.send(());
        });
        Self {
            addr,
            written,
            done,
        }
    }
}

#[tokio::test]
async fn token_endpoint_streaming_a_huge_body_is_cut_off_at_the_cap() {
    const DECLARED: usize = 64 << 20;
    let server = StreamingTokenEndpoint::start(DECLARED);
    let client = Client::builder(
        Domain::parse(&format!("http://{}", server.addr)).expect("domain"),
        Credentials::client_credentials("huge-client-id", "huge-client-secret-0123"),
    )
    .request_timeout(Duration::from_secs(5))
    .build()
    .expect("client");
    let started = Instant::now();
    let answer = send(&client, &usage(1)).await;
    let elapsed = started.elapsed();
    let e = failure(answer, &["huge-client-secret-0123".to_owned()]);
    // The client hung up: the server stops writing once the socket buffers are full.
    // (Waited for off the runtime, which must keep running to close the connection.)
    let done = server.done;
    tokio::task::spawn_blocking(move || done.recv_timeout(Duration::from_secs(5)))
        .await
        .expect("the waiting thread")
        .expect("the server stops writing");
    let written = server.written.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        written < 16 << 20,
        "the client read {written} of {DECLARED} bytes"
    );
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(e.disposition(), Disposition::NotApplied, "{e:?}");
    assert!(
        matches!(&e, ApiError::Token(TokenError::TooLarge { status, limit: 65_536 }) if *status == StatusCode::OK),
        "{e:?}"
    );
    let shown = e.to_string();
    assert!(shown.contains("larger than"), "{shown}");
}

#[tokio::test]
async fn raw_200_of_exactly_the_cap_is_read_whole_and_one_byte_more_is_cut() {
    // The meter endpoint reads through the same cap as the token endpoint.
    const CAP: usize = 64 * 1024;
    let json = r#"{"message":"Success","code":"OK"}"#;
    let whole = format!("{json}{}", " ".repeat(CAP - json.len()));
    let (answer, _server) = raw_call(raw_response("200 OK", &[], &whole)).await;
    assert_eq!(answer.expect("accepted").data.code.as_deref(), Some("OK"));
    let e = raw_failure(raw_response("200 OK", &[], &format!("{whole} "))).await;
    assert!(
        undecodable_reason(&e).contains("longer than 65536 bytes"),
        "{e}"
    );
}

// ----- requests never sent are never ambiguous -----

#[tokio::test]
async fn tls_handshake_that_never_completes_is_not_sent() {
    // A listener that never accepts: the TCP handshake completes in the kernel's backlog,
    // the TLS ClientHello is written, and no ServerHello ever comes. The request timeout
    // (as clipped at shutdown) is shorter than the connect timeout, so it is the one that
    // fires, during the handshake: no byte of the request can have reached Kinde.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let domain =
        Domain::parse(&format!("https://{}", silent.local_addr().expect("addr"))).expect("domain");
    assert!(domain.is_https());
    let timeout = Duration::from_millis(300);
    let fixed = Client::builder(domain.clone(), Credentials::access_token(RAW_TOKEN))
        .request_timeout(timeout)
        .build()
        .expect("client");
    let started = Instant::now();
    let e = failure(send(&fixed, &usage(1)).await, &[RAW_TOKEN.to_owned()]);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(e.disposition(), Disposition::NotApplied, "{e:?}");
    assert!(matches!(e, ApiError::NotSent { .. }), "{e:?}");
    assert!(e.to_string().contains("nothing was sent"), "{e}");
    // A per-call timeout is clipped the same way.
    let patient = Client::new(domain, Credentials::access_token(RAW_TOKEN)).expect("client");
    let options = RequestOptions::new().timeout(Duration::from_millis(200));
    let e = failure(
        patient
            .create_meter_usage_record_with_options(&usage(1), &options)
            .await,
        &[RAW_TOKEN.to_owned()],
    );
    assert_eq!(e.disposition(), Disposition::NotApplied, "{e:?}");
}

#[tokio::test]
async fn static_token_that_is_not_a_header_value_is_refused_before_anything_is_sent() {
    let kinde = start(Emulator::builder());
    for bad in [
        "static-token\ninjected: header",
        "static-token\r\n",
        "static token",
        "static-tökén",
        "static-token\u{7f}",
        "",
    ] {
        let built = Client::new(kinde.domain(), Credentials::access_token(bad));
        let e = match built {
            Ok(client) => {
                let e = send(&client, &usage(1)).await.expect_err("not sent");
                panic!(
                    "{bad:?} was accepted; the call then failed as {:?}: {e}",
                    e.disposition()
                );
            }
            Err(e) => e,
        };
        let shown = format!("{e} {e:?}");
        assert!(shown.contains("access token"), "{shown}");
        assert!(shown.contains("KINDE_ACCESS_TOKEN"), "{shown}");
        if bad.len() > 8 {
            assert!(!shown.contains(bad.trim()), "the token leaked: {shown}");
        }
        Config::new(kinde.domain(), Credentials::access_token(bad))
            .client()
            .expect_err("refused through Config too");
    }
    assert!(kinde.requests().is_empty());
}

#[tokio::test]
async fn minted_token_that_is_not_a_header_value_is_a_bad_token_response() {
    // The same answer serves every request: only the token request may arrive.
    let server = RawHttpServer::start(raw_response(
        "200 OK",
        &["Content-Type: application/json"],
        r#"{"access_token":"raw-minted\ntoken-0123","expires_in":3600,"token_type":"bearer"}"#,
    ))
    .expect("raw server");
    let answer = send(&raw_minting_client(&server), &usage(1)).await;
    let e = failure(
        answer,
        &["raw-client-secret-0123".to_owned(), "token-0123".to_owned()],
    );
    assert_eq!(e.disposition(), Disposition::NotApplied, "{e:?}");
    assert!(
        matches!(&e, ApiError::Token(TokenError::Undecodable { status, .. }) if *status == StatusCode::OK),
        "{e:?}"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "no meter request with a broken token");
    assert!(requests[0].starts_with("POST /oauth2/token "));
}

// ----- the example -----

#[path = "../examples/create_meter_usage_record.rs"]
#[allow(dead_code)] // `main` is the example's; this test runs `record()` itself.
mod create_example;

#[tokio::test]
async fn the_create_meter_usage_record_example_records_one_record() {
    let kinde = start(Emulator::builder());
    create_example::record(
        &client(&kinde),
        AgreementId::new(AGREEMENT).expect("agreement id"),
        FeatureCode::from_static(FEATURE),
    )
    .await
    .expect("the example succeeds");
    let requests = kinde.requests();
    assert_eq!(requests.len(), 1, "meter requests sent");
    assert!(
        requests[0]
            .header("idempotency-key")
            .is_some_and(|k| k.starts_with("example-")),
        "{:?}",
        requests[0]
    );
    assert_eq!(kinde.total(AGREEMENT, FEATURE), 1);
}
