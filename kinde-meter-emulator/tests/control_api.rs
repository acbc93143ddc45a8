//! The control API under `/_emulator/`, driven with plain HTTP requests: every route
//! has the effect it documents.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{fetch_token, get, meter, post_json, send};
use kinde_meter_emulator::{Emulator, Faults};
use serde_json::json;

fn started() -> (Emulator, String) {
    let emulator = Emulator::start().expect("emulator");
    let base = emulator.base_url();
    (emulator, base)
}

#[test]
fn reads_the_ledger_the_records_the_requests_and_the_counts() {
    let (emulator, base) = started();
    let counts = get(&base, "/_emulator/counts");
    assert_eq!(counts.status, 200);
    assert_eq!(counts.json()["accepted"], 0);

    let token = fetch_token(&base);
    assert_eq!(meter(&base, &token, "agr_1", "calls", "2").status, 200);
    assert_eq!(meter(&base, &token, "agr_1", "calls", "1.5").status, 200);
    assert_eq!(meter(&base, &token, "agr_2", "rows", "7").status, 200);

    let ledger = get(&base, "/_emulator/ledger");
    assert_eq!(ledger.status, 200);
    assert_eq!(ledger.header("content-type"), Some("application/json"));
    assert_eq!(
        ledger.json(),
        json!({
            "totals": [
                {"agreement": "agr_1", "feature": "calls", "total": "3.5"},
                {"agreement": "agr_2", "feature": "rows", "total": "7"},
            ],
            "sum": "10.5",
        })
    );

    let accepted = get(&base, "/_emulator/accepted").json();
    let accepted = accepted.as_array().unwrap();
    assert_eq!(accepted.len(), 3);
    assert_eq!(accepted[1]["value"], "1.5");
    assert_eq!(accepted[1]["meter_type"], "delta");
    assert_eq!(accepted[1]["request_index"], 1);
    assert_eq!(accepted[1]["ambiguous"], false);

    let requests = get(&base, "/_emulator/requests").json();
    let requests = requests.as_array().unwrap();
    assert_eq!(requests.len(), 3, "control requests are not logged");
    assert_eq!(requests[0]["path"], "/api/v1/billing/meter_usage");
    assert_eq!(requests[0]["status"], 200);
    assert_eq!(requests[0]["outcome"], "accepted");
    let auth = requests[0]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "authorization")
        .unwrap();
    assert_eq!(auth[1], "<redacted>", "the token is not shown");
    assert!(!requests[0].to_string().contains(&token));

    let tokens = get(&base, "/_emulator/token-requests").json();
    assert_eq!(tokens.as_array().unwrap().len(), 1);
    assert_eq!(tokens[0]["issued"], true);
    assert!(!tokens.to_string().contains("emulator-client-secret"));

    let counts = get(&base, "/_emulator/counts").json();
    assert_eq!(counts["accepted"], 3);
    assert_eq!(counts["tokens_issued"], 1);
    assert_eq!(counts["rejected"], 0);

    // The library sees the same state.
    assert_eq!(emulator.total("agr_1", "calls"), "3.5");
}

#[test]
fn faults_set_over_http_apply_to_the_next_request() {
    let (emulator, base) = started();
    let token = fetch_token(&base);

    let set = send(
        &base,
        "PUT",
        "/_emulator/faults",
        &[("Content-Type", "application/json")],
        r#"{"status_503": 1.0, "latency_ms": 1}"#,
    );
    assert_eq!(set.status, 200, "{set:?}");
    assert_eq!(set.json()["status_503"], 1.0);
    assert_eq!(set.json()["status_500"], 0.0);
    assert_eq!(
        emulator.faults(),
        Faults::none()
            .status_503(1.0)
            .latency(Duration::from_millis(1))
    );
    assert_eq!(get(&base, "/_emulator/faults").json()["status_503"], 1.0);

    let r = meter(&base, &token, "agr", "feat", "1");
    assert_eq!(r.status, 503);
    let requests = get(&base, "/_emulator/requests").json();
    assert_eq!(requests[0]["outcome"], "fault");
    assert_eq!(requests[0]["fault"], "status_503");
    assert_eq!(get(&base, "/_emulator/ledger").json()["sum"], "0");

    // POST replaces too; absent fields are zero.
    let set = post_json(&base, "/_emulator/faults", r#"{"drop_after_apply": 1}"#);
    assert_eq!(set.status, 200);
    assert_eq!(set.json()["status_503"], 0.0);
    assert_eq!(emulator.faults(), Faults::none().drop_after_apply(1.0));

    // An empty object clears them.
    assert_eq!(post_json(&base, "/_emulator/faults", "{}").status, 200);
    assert_eq!(meter(&base, &token, "agr", "feat", "1").status, 200);

    // Bad bodies are refused and name the field; the faults stay as they were.
    for (body, needle) in [
        (r#"{"status_503": 1.5}"#, "status_503"),
        (r#"{"teapot": 0.1}"#, "teapot"),
        (r#"{"latency_ms": -1}"#, "latency_ms"),
        ("[1]", "object"),
        ("{", "JSON"),
    ] {
        let r = post_json(&base, "/_emulator/faults", body);
        assert_eq!(r.status, 400, "{body}");
        let message = r.json()["error"].as_str().unwrap().to_owned();
        assert!(message.contains(needle), "{body}: {message}");
    }
    assert_eq!(emulator.faults(), Faults::none());
}

#[test]
fn expire_tokens_invalidates_every_issued_token() {
    let (_emulator, base) = started();
    let token = fetch_token(&base);
    assert_eq!(meter(&base, &token, "agr", "feat", "1").status, 200);
    let r = post_json(&base, "/_emulator/expire-tokens", "");
    assert_eq!(r.status, 200);
    assert_eq!(meter(&base, &token, "agr", "feat", "1").status, 403);
    let fresh = fetch_token(&base);
    assert_eq!(meter(&base, &fresh, "agr", "feat", "1").status, 200);
}

#[test]
fn down_answers_503_on_the_endpoints_while_the_control_api_stays_up() {
    let (emulator, base) = started();
    let token = fetch_token(&base);

    let r = post_json(&base, "/_emulator/down", r#"{"seconds": 30}"#);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["down"], true);
    assert_eq!(get(&base, "/_emulator/status").json()["down"], true);

    let r = meter(&base, &token, "agr", "feat", "1");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("30"));
    let audience = format!("{base}/api");
    let form = serde_urlencoded::to_string([
        ("grant_type", "client_credentials"),
        ("client_id", "emulator-client-id"),
        ("client_secret", "emulator-client-secret"),
        ("audience", audience.as_str()),
    ])
    .unwrap();
    let t = send(
        &base,
        "POST",
        "/oauth2/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &form,
    );
    assert_eq!(t.status, 503);
    assert_eq!(t.json()["error"], "temporarily_unavailable");
    assert_eq!(get(&base, "/_emulator/counts").json()["unavailable"], 1);
    assert_eq!(emulator.ledger_sum(), 0);

    // `up` ends it early.
    assert_eq!(post_json(&base, "/_emulator/up", "").status, 200);
    assert_eq!(meter(&base, &token, "agr", "feat", "1").status, 200);

    // A short period ends by itself; 0 ends one at once.
    assert_eq!(
        post_json(&base, "/_emulator/down", r#"{"seconds": 0.2}"#).status,
        200
    );
    assert_eq!(meter(&base, &token, "agr", "feat", "1").status, 503);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&base, "/_emulator/status").json()["down"] == true {
        assert!(Instant::now() < deadline, "never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(meter(&base, &token, "agr", "feat", "1").status, 200);
    assert_eq!(
        post_json(&base, "/_emulator/down", r#"{"seconds": 60}"#).status,
        200
    );
    assert_eq!(
        post_json(&base, "/_emulator/down", r#"{"seconds": 0}"#).json()["down"],
        false
    );
    assert_eq!(meter(&base, &token, "agr", "feat", "1").status, 200);

    for body in ["", "{}", r#"{"seconds": -1}"#, r#"{"seconds": 1, "x": 2}"#] {
        assert_eq!(
            post_json(&base, "/_emulator/down", body).status,
            400,
            "{body}"
        );
    }
}

#[test]
fn reset_clears_the_ledger_the_logs_the_counts_and_the_faults() {
    let (emulator, base) = started();
    let token = fetch_token(&base);
    assert_eq!(meter(&base, &token, "agr", "feat", "4").status, 200);
    assert_eq!(
        post_json(&base, "/_emulator/faults", r#"{"status_500": 0.5}"#).status,
        200
    );
    assert_eq!(get(&base, "/_emulator/ledger").json()["sum"], "4");

    let r = post_json(&base, "/_emulator/reset", "");
    assert_eq!(r.status, 200);
    assert_eq!(
        get(&base, "/_emulator/ledger").json(),
        json!({"totals": [], "sum": "0"})
    );
    assert_eq!(get(&base, "/_emulator/accepted").json(), json!([]));
    assert_eq!(get(&base, "/_emulator/requests").json(), json!([]));
    assert_eq!(get(&base, "/_emulator/token-requests").json(), json!([]));
    let counts = get(&base, "/_emulator/counts").json();
    assert!(
        counts.as_object().unwrap().values().all(|v| v == 0),
        "{counts}"
    );
    assert_eq!(get(&base, "/_emulator/faults").json()["status_500"], 0.0);
    assert_eq!(emulator.faults(), Faults::none());

    // Tokens issued before stay valid.
    assert_eq!(meter(&base, &token, "agr", "feat", "1").status, 200);
    assert_eq!(emulator.total("agr", "feat"), 1);
}

#[test]
fn unknown_routes_and_wrong_methods_are_refused_without_being_logged() {
    let (emulator, base) = started();
    let r = get(&base, "/_emulator/nope");
    assert_eq!(r.status, 404);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("/_emulator/nope")
    );
    let r = post_json(&base, "/_emulator/ledger", "");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    let r = get(&base, "/_emulator/reset");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert!(emulator.requests().is_empty());
    assert_eq!(emulator.counts().not_found, 0);
}

#[test]
fn a_request_waiting_through_a_reset_applies_nothing_to_the_new_state() {
    let emulator = Emulator::builder()
        .faults(Faults::none().latency(Duration::from_millis(600)))
        .start()
        .expect("emulator");
    let base = emulator.base_url();
    let token = fetch_token(&base);
    let slow = {
        let (base, token) = (base.clone(), token.clone());
        std::thread::spawn(move || meter(&base, &token, "agreement_a", "feat", "100"))
    };
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(post_json(&base, "/_emulator/reset", "").status, 200);
    // Reset removed the latency: this one is answered at once.
    assert_eq!(meter(&base, &token, "agreement_b", "feat", "1").status, 200);
    let waited = slow.join().expect("slow request");
    assert_eq!(
        waited.status, 503,
        "admitted before the reset, applied after it: refused"
    );
    assert_eq!(
        get(&base, "/_emulator/ledger").json()["sum"],
        "1",
        "only the request made after the reset counts"
    );
    assert_eq!(
        get(&base, "/_emulator/accepted")
            .json()
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(get(&base, "/_emulator/counts").json()["accepted"], 1);
}

#[test]
fn a_duration_past_what_a_clock_can_hold_is_taken_as_forever_not_a_crash() {
    let (emulator, base) = started();
    let r = post_json(&base, "/_emulator/down", r#"{"seconds": 1e19}"#);
    assert_eq!(r.status, 200, "answered, not a dropped connection");
    assert!(
        get(&base, "/_emulator/status").json()["down"]
            .as_bool()
            .unwrap_or(false)
    );
    assert_eq!(post_json(&base, "/_emulator/up", "").status, 200);
    emulator.unavailable_for(Duration::MAX);
    emulator.throttle_for(Duration::MAX);
    emulator.set_token_lifetime(Duration::MAX);
    assert!(emulator.wait_idle(Duration::MAX));
}

#[test]
fn a_client_secret_sent_to_a_wrong_path_is_not_shown_in_the_request_log() {
    let (_emulator, base) = started();
    let r = send(
        &base,
        "POST",
        "/oauth2/token/?client_secret=in-the-query",
        &[("content-type", "application/x-www-form-urlencoded")],
        "grant_type=client_credentials&client_id=id&client_secret=in-the-body",
    );
    assert_eq!(r.status, 404);
    let log = get(&base, "/_emulator/requests").json().to_string();
    assert!(
        !log.contains("in-the-query") && !log.contains("in-the-body"),
        "{log}"
    );
    assert!(log.contains("client_secret=<hidden>"), "{log}");
}

// ----- billing objects, scopes and webhooks -----

/// `GET path` with a bearer token.
fn get_auth(base: &str, token: &str, path: &str) -> common::Resp {
    let auth = format!("Bearer {token}");
    send(base, "GET", path, &[("Authorization", auth.as_str())], "")
}

#[test]
fn billing_objects_are_made_and_changed_over_http() {
    let (emulator, base) = started();
    let token = fetch_token(&base);
    let r = post_json(
        &base,
        "/_emulator/plans",
        r#"{"code":"pro","features":["calls","rows"]}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json(),
        json!({"code": "pro", "features": ["calls", "rows"]})
    );
    assert_eq!(
        post_json(
            &base,
            "/_emulator/plans",
            r#"{"code":"basic","features":["calls"]}"#
        )
        .status,
        200
    );

    let org = post_json(
        &base,
        "/_emulator/organizations",
        r#"{"code":"org_c1","plan":"basic","name":"Control"}"#,
    )
    .json();
    let customer = org["customer_id"].as_str().unwrap().to_owned();
    let first = org["agreement_id"].as_str().unwrap().to_owned();
    assert!(customer.starts_with("customer_") && first.starts_with("agreement_"));
    let user = post_json(&base, "/_emulator/users", r#"{"id":"kp_c1","plan":"pro"}"#).json();
    assert!(
        user["customer_id"]
            .as_str()
            .unwrap()
            .starts_with("customer_")
    );
    let plain = post_json(&base, "/_emulator/customers", r#"{"plan":"pro"}"#).json();
    assert!(
        plain["agreement_id"]
            .as_str()
            .unwrap()
            .starts_with("agreement_")
    );
    assert_eq!(
        emulator.organization_customer("org_c1").as_deref(),
        Some(customer.as_str())
    );

    let org_view = get_auth(
        &base,
        &token,
        "/api/v1/organization?code=org_c1&expand=billing",
    )
    .json();
    assert_eq!(org_view["name"], "Control");
    assert_eq!(
        org_view["billing"]["agreements"][0]["agreement_id"],
        first.as_str()
    );

    let changed = post_json(
        &base,
        "/_emulator/change-plan",
        &json!({"customer_id": customer, "plan": "pro"}).to_string(),
    );
    assert_eq!(changed.status, 200, "{changed:?}");
    let second = changed.json()["agreement_id"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    let r = meter(&base, &token, &first, "calls", "1");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["errors"][0]["code"], "AGREEMENT_CANCELLED");

    // Settings: accept usage for cancelled agreements, and the cycle length.
    let settings = send(
        &base,
        "PUT",
        "/_emulator/billing-settings",
        &[("Content-Type", "application/json")],
        r#"{"cancelled_agreements_accept_usage":true,"cycle_length_secs":120}"#,
    );
    assert_eq!(
        settings.json(),
        json!({"cycle_length_secs": 120.0, "cancelled_agreements_accept_usage": true})
    );
    assert_eq!(meter(&base, &token, &first, "calls", "1").status, 200);
    assert_eq!(
        get(&base, "/_emulator/billing-settings").json()["cycle_length_secs"],
        120.0
    );

    // The period end, relative and absolute.
    let moved = post_json(
        &base,
        "/_emulator/period-end",
        &json!({"agreement_id": second, "in_ms": 1100}).to_string(),
    );
    assert_eq!(moved.status, 200, "{moved:?}");
    let moved = moved.json();
    assert_eq!(moved["current_period_index"], 0, "{moved}");
    assert_eq!(moved["id"], second.as_str());
    assert_eq!(moved["customer_id"], customer.as_str());
    let old_end = moved["current_period_end"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_millis(1200));
    // The call rolls the passed cycle first, then moves the new one's end.
    let absolute = post_json(
        &base,
        "/_emulator/period-end",
        &json!({"agreement_id": second, "period_end": "2999-01-01T00:00:00Z"}).to_string(),
    )
    .json();
    assert_eq!(absolute["current_period_index"], 1, "{absolute}");
    assert_eq!(absolute["current_period_end"], "2999-01-01T00:00:00Z");
    assert_eq!(absolute["current_period_start"], old_end.as_str());
    let start = old_end;
    let r = meter(&base, &token, &second, "rows", "2");
    assert_eq!(r.status, 200);
    let accepted = get(&base, "/_emulator/accepted").json();
    let last = accepted.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["cycle"]["index"], 1);
    assert_eq!(last["cycle"]["start"], start.as_str());
    assert_eq!(last["cycle"]["end"], "2999-01-01T00:00:00Z");
    assert_eq!(last["arrival_cycle"]["index"], 1);

    let cancel = post_json(
        &base,
        "/_emulator/cancel-agreement",
        &json!({"agreement_id": second}).to_string(),
    );
    assert_eq!(cancel.json(), json!({"ok": true}));

    let dump = get(&base, "/_emulator/billing").json();
    assert_eq!(
        dump["plans"][1],
        json!({"code": "pro", "features": ["calls", "rows"]})
    );
    let entry = dump["customers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["customer_id"] == customer.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["org_code"], "org_c1");
    assert_eq!(entry["user_id"], serde_json::Value::Null);
    assert_eq!(entry["agreements"].as_array().unwrap().len(), 2);
    assert!(entry["agreements"][1]["expires_on"].is_string());

    // Errors name the problem.
    for (path, body, needle) in [
        ("/_emulator/plans", r#"{"code":"x"}"#, "features"),
        (
            "/_emulator/plans",
            r#"{"code":"x","features":[1]}"#,
            "features",
        ),
        (
            "/_emulator/organizations",
            r#"{"code":"org_c2","plan":"gold"}"#,
            "gold",
        ),
        (
            "/_emulator/organizations",
            r#"{"code":"org_c1","plan":"pro"}"#,
            "already exists",
        ),
        ("/_emulator/users", r#"{"id":"kp_c2"}"#, "plan"),
        (
            "/_emulator/customers",
            r#"{"plan":"pro","extra":1}"#,
            "extra",
        ),
        (
            "/_emulator/change-plan",
            r#"{"customer_id":"customer_x","plan":"pro"}"#,
            "customer_x",
        ),
        (
            "/_emulator/cancel-agreement",
            r#"{"agreement_id":"agreement_x"}"#,
            "agreement_x",
        ),
        (
            "/_emulator/period-end",
            r#"{"agreement_id":"agreement_x","in_ms":5}"#,
            "agreement_x",
        ),
        (
            "/_emulator/period-end",
            &format!(r#"{{"agreement_id":"{second}"}}"#),
            "exactly one",
        ),
        (
            "/_emulator/period-end",
            &format!(r#"{{"agreement_id":"{first}","period_end":"tomorrow"}}"#),
            "RFC 3339",
        ),
        (
            "/_emulator/billing-settings",
            r#"{"cycle_length_secs":0}"#,
            "more than zero",
        ),
        (
            "/_emulator/billing-settings",
            r#"{"cancelled_agreements_accept_usage":1}"#,
            "true or false",
        ),
    ] {
        let r = post_json(&base, path, body);
        assert_eq!(r.status, 400, "{path} {body}: {r:?}");
        let message = r.json()["error"].as_str().unwrap().to_owned();
        assert!(message.contains(needle), "{path} {body}: {message}");
    }
    for path in [
        "/_emulator/plans",
        "/_emulator/change-plan",
        "/_emulator/period-end",
    ] {
        let r = get(&base, path);
        assert_eq!((r.status, r.header("allow")), (405, Some("POST")), "{path}");
    }
    assert_eq!(
        send(&base, "DELETE", "/_emulator/billing", &[], "").status,
        405
    );
}

#[test]
fn scopes_are_read_and_replaced_over_http() {
    let (_emulator, base) = started();
    let token = fetch_token(&base);
    let scopes = get(&base, "/_emulator/scopes").json();
    assert_eq!(
        scopes,
        json!({"scopes": ["create:meter_usage", "read:billing_agreements", "read:organizations", "read:users"]})
    );
    let r = post_json(&base, "/_emulator/scopes", r#"{"scopes":["read:users"]}"#);
    assert_eq!(r.json(), json!({"scopes": ["read:users"]}));
    let r = meter(&base, &token, "agr", "calls", "1");
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["errors"][0]["code"], "FORBIDDEN");
    assert_eq!(
        r.json()["errors"][0]["message"],
        "the application lacks the scope create:meter_usage"
    );
    let r = get_auth(&base, &token, "/api/v1/organization?code=org_x");
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["errors"][0]["message"],
        "the application lacks the scope read:organizations"
    );
    // With the scope, the same request gets as far as the lookup.
    let r = get_auth(&base, &token, "/api/v1/user?id=kp_x");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["errors"][0]["code"], "USER_NOT_FOUND");
    let counts = get(&base, "/_emulator/counts").json();
    assert_eq!(counts["forbidden"], 2);
    let requests = get(&base, "/_emulator/requests").json();
    assert_eq!(requests[1]["outcome"], "forbidden");
    assert_eq!(requests[1]["path"], "/api/v1/organization");
    assert_eq!(requests[1]["query"], "code=org_x");
    assert_eq!(
        post_json(&base, "/_emulator/scopes", r#"{"scopes":"all"}"#).status,
        400
    );
    assert_eq!(post_json(&base, "/_emulator/scopes", "{}").status, 400);
}

#[test]
fn the_webhook_is_configured_and_its_deliveries_read_over_http() {
    let (_emulator, base) = started();
    assert_eq!(
        get(&base, "/_emulator/webhook").json(),
        json!({"url": null, "retry_delays_ms": [100.0, 500.0, 2000.0]})
    );
    // Nobody listens on this port: every attempt fails, and says why.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks", closed.local_addr().unwrap());
    drop(closed);
    let set = post_json(
        &base,
        "/_emulator/webhook",
        &json!({"url": url, "retry_delays_ms": [1, 1]}).to_string(),
    );
    assert_eq!(
        set.json(),
        json!({"url": url, "retry_delays_ms": [1.0, 1.0]})
    );
    post_json(
        &base,
        "/_emulator/plans",
        r#"{"code":"p","features":["f"]}"#,
    );
    let made = post_json(&base, "/_emulator/customers", r#"{"plan":"p"}"#).json();

    let deadline = Instant::now() + Duration::from_secs(10);
    let deliveries = loop {
        let d = get(&base, "/_emulator/webhook-deliveries").json();
        if d.as_array().unwrap().iter().all(|d| d["finished"] == true) {
            break d;
        }
        assert!(Instant::now() < deadline, "deliveries never finished: {d}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let list = deliveries.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["type"], "customer.agreement_created");
    assert_eq!(list[1]["type"], "customer.plan_assigned");
    for d in list {
        assert_eq!(d["customer_id"], made["customer_id"]);
        assert_eq!(d["data"]["agreement_id"], made["agreement_id"]);
        assert_eq!(d["url"], url.as_str());
        assert_eq!(d["attempts"], 3);
        assert_eq!(d["delivered"], false);
        assert_eq!(d["last_status"], serde_json::Value::Null);
        assert!(d["last_error"].as_str().unwrap().contains("cannot connect"));
        assert!(d["webhook_id"].as_str().unwrap().starts_with("msg_"));
        assert!(d["event_id"].as_str().unwrap().starts_with("event_"));
    }

    let off = post_json(&base, "/_emulator/webhook", r#"{"url":null}"#).json();
    assert_eq!(off["url"], serde_json::Value::Null);
    assert_eq!(
        off["retry_delays_ms"],
        json!([1.0, 1.0]),
        "absent fields stay"
    );
    let r = post_json(
        &base,
        "/_emulator/webhook",
        r#"{"url":"https://example.com/x"}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("http://"));
    // A reset forgets the deliveries.
    post_json(&base, "/_emulator/reset", "");
    assert_eq!(
        get(&base, "/_emulator/webhook-deliveries").json(),
        json!([])
    );
}
