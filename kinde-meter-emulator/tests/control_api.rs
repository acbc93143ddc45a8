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
