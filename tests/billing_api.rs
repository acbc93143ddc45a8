//! The client's billing look-ups: against the emulator (shapes, scopes), and against a
//! hand-written server for what the emulator cannot be made to do (many pages, a server
//! that never stops saying `has_more`, answers that are not what Kinde documents).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::get;
use kinde_meter::FeatureCode;
use kinde_meter::api::{ApiError, Client, Credentials, CustomerId, Domain, OrgCode, UserId};
use kinde_meter_emulator::Emulator;
use kinde_meter_workspace::EmulatorExt;
use serde_json::{Value, json};

/// A JSON answer (the test's axum has no `json` feature).
fn json_answer(value: Value) -> impl axum::response::IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
}

fn query_of(uri: &http::Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

async fn serve(app: Router) -> Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let domain = Domain::parse(&format!("http://{addr}")).expect("domain");
    Client::new(domain, Credentials::access_token("token")).expect("client")
}

fn agreement(id: &str) -> Value {
    json!({"id": id, "plan_code": "pro", "entitlements": [{"feature_code": "api_calls"}]})
}

#[tokio::test]
async fn every_page_of_agreements_is_read_and_asked_for_after_the_last_id() {
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = Router::new().route(
        "/api/v1/billing/agreements",
        get({
            let asked = Arc::clone(&asked);
            move |uri: http::Uri| async move {
                let q = query_of(&uri);
                asked.lock().expect("lock").push(q.clone());
                let page = match q.get("starting_after").map(String::as_str) {
                    None => json!({"has_more": true, "agreements": [agreement("agreement_1"), agreement("agreement_2")]}),
                    Some("agreement_2") => json!({"has_more": false, "agreements": [agreement("agreement_3")]}),
                    Some(_) => json!({"has_more": false, "agreements": []}),
                };
                json_answer(page)
            }
        }),
    );
    let client = serve(app).await;
    let customer = CustomerId::new("customer_1").expect("id");
    let feature = FeatureCode::new("api_calls").expect("code");
    let all = client
        .billing_agreements(&customer, Some(&feature))
        .await
        .expect("agreements");
    let ids: Vec<&str> = all.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["agreement_1", "agreement_2", "agreement_3"]);
    let asked = asked.lock().expect("lock").clone();
    assert_eq!(asked.len(), 2);
    assert_eq!(
        asked[0].get("customer_id").map(String::as_str),
        Some("customer_1")
    );
    assert_eq!(
        asked[0].get("feature_code").map(String::as_str),
        Some("api_calls")
    );
    assert_eq!(
        asked[1].get("starting_after").map(String::as_str),
        Some("agreement_2")
    );
}

#[tokio::test]
async fn a_server_that_always_has_more_is_read_a_bounded_number_of_times() {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/api/v1/billing/agreements",
        get({
            let calls = Arc::clone(&calls);
            move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                json_answer(json!({"has_more": true, "agreements": [agreement("agreement_same")]}))
            }
        }),
    );
    let client = serve(app).await;
    let customer = CustomerId::new("customer_1").expect("id");
    let e = client
        .billing_agreements(&customer, None)
        .await
        .expect_err("bounded");
    assert!(e.to_string().contains("more than 2000 agreements"), "{e}");
    assert_eq!(calls.load(Ordering::SeqCst), 20);
}

#[tokio::test]
async fn answers_that_are_not_what_kinde_documents_do_not_break_the_look_ups() {
    let app = Router::new()
        .route(
            "/api/v1/organization",
            get(|| async { json_answer(json!({"code": 7, "billing": "nope"})) }),
        )
        .route("/api/v1/user", get(|| async { json_answer(json!([1, 2, 3])) }))
        .route(
            "/api/v1/billing/agreements",
            get(|| async {
                json_answer(json!({"agreements": [{"id": "bad id"}, 5, agreement("agreement_ok")], "has_more": null}))
            }),
        );
    let client = serve(app).await;
    let org = client
        .organization_billing(&OrgCode::new("org_1").expect("code"))
        .await
        .expect("lenient");
    assert!(org.code.is_none() && org.billing.is_none());
    let user = client.user_billing(&UserId::new("kp_1").expect("id")).await;
    assert!(
        matches!(user, Err(ApiError::Undecodable { .. })),
        "{user:?}"
    );
    let all = client
        .billing_agreements(&CustomerId::new("customer_1").expect("id"), None)
        .await
        .expect("lenient");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].id.as_str(), "agreement_ok");
}

#[tokio::test]
async fn each_look_up_names_the_scope_it_lacks() {
    let emulator = Emulator::builder()
        .plan("basic", ["api_calls"])
        .organization("org_acme", "basic")
        .start()
        .expect("emulator");
    emulator.add_user("kp_solo", "basic").expect("user");
    emulator.set_scopes(["create:meter_usage"]);
    let client = emulator.client().expect("client");
    let customer = emulator.organization_customer("org_acme").expect("org");
    let errors = [
        client
            .organization_billing(&OrgCode::new("org_acme").expect("code"))
            .await
            .expect_err("403"),
        client
            .user_billing(&UserId::new("kp_solo").expect("id"))
            .await
            .expect_err("403"),
        client
            .billing_agreements(&CustomerId::new(&customer).expect("id"), None)
            .await
            .expect_err("403"),
    ];
    for (error, scope) in errors.iter().zip([
        "read:organizations",
        "read:users",
        "read:billing_agreements",
    ]) {
        assert!(
            matches!(error, ApiError::Unauthorized { scope: s, .. } if *s == scope),
            "{error:?}"
        );
        assert!(error.to_string().contains(&format!("`{scope}`")), "{error}");
    }
    // With the scopes, the same look-ups answer what the emulator holds.
    emulator.set_scopes(kinde_meter_emulator::DEFAULT_SCOPES.iter().copied());
    let org = client
        .organization_billing(&OrgCode::new("org_acme").expect("code"))
        .await
        .expect("org");
    assert_eq!(
        org.billing
            .and_then(|b| b.billing_customer_id)
            .map(|c| c.to_string()),
        Some(customer.clone())
    );
    let user = client
        .user_billing(&UserId::new("kp_solo").expect("id"))
        .await
        .expect("user");
    assert!(user.billing.and_then(|b| b.customer_id).is_some());
    let agreements = client
        .billing_agreements(&CustomerId::new(&customer).expect("id"), None)
        .await
        .expect("agreements");
    assert_eq!(agreements.len(), 1);
    assert!(agreements[0].current_period_end.is_some());
    assert!(agreements[0].has_feature(&FeatureCode::new("api_calls").expect("code")));
}
