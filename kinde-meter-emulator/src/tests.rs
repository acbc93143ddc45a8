//! End-to-end tests over HTTP on 127.0.0.1.
//!
//! Most use a tiny blocking HTTP/1.1 client on `std::net::TcpStream`, which
//! tells a closed connection apart from any response; a few use reqwest from
//! inside tokio runtimes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::*;

// ----- a minimal blocking HTTP client -----

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    fn codes(&self) -> Vec<String> {
        self.json()["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["code"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

type Head = (u16, Vec<(String, String)>, usize);

fn parse_head(raw: &[u8]) -> io::Result<Head> {
    let text = String::from_utf8_lossy(raw);
    let end = text
        .find("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no complete response head"))?;
    let mut lines = text[..end].split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((status, headers, end + 4))
}

/// One request on a fresh connection. `Err(UnexpectedEof)` when the server
/// closed the connection without answering.
fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Resp> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(&request_bytes(addr, method, path, headers, body, true))?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)?;
    let (status, headers, start) = parse_head(&raw)?;
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&raw[start..]).into_owned(),
    })
}

fn token_form(emu: &Emulator) -> String {
    token_form_for(emu, Some(&emu.audience()))
}

/// A client-credentials form with the emulator's credentials, for `audience` (or none).
fn token_form_for(emu: &Emulator, audience: Option<&str>) -> String {
    let mut fields = vec![
        ("grant_type", "client_credentials"),
        ("client_id", emu.client_id()),
        ("client_secret", emu.client_secret()),
    ];
    fields.extend(audience.map(|audience| ("audience", audience)));
    serde_urlencoded::to_string(fields).unwrap()
}

fn post_token(emu: &Emulator, form: &str, extra: &[(&str, &str)]) -> Resp {
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    headers.extend_from_slice(extra);
    send(
        emu.addr(),
        "POST",
        "/oauth2/token",
        &headers,
        form.as_bytes(),
    )
    .unwrap()
}

fn fetch_token(emu: &Emulator) -> String {
    let r = post_token(emu, &token_form(emu), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["access_token"].as_str().unwrap().to_owned()
}

fn usage(agreement: &str, feature: &str, value: &str, meter_type: Option<&str>) -> String {
    let mut v = serde_json::json!({
        "customer_agreement_id": agreement,
        "billing_feature_code": feature,
        "meter_value": value,
    });
    if let Some(t) = meter_type {
        v["meter_type_code"] = t.into();
    }
    v.to_string()
}

fn meter_with(emu: &Emulator, token: &str, body: &str, extra: &[(&str, &str)]) -> io::Result<Resp> {
    let auth = format!("Bearer {token}");
    let mut headers = vec![
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
    ];
    headers.extend_from_slice(extra);
    send(
        emu.addr(),
        "POST",
        "/api/v1/billing/meter_usage",
        &headers,
        body.as_bytes(),
    )
}

fn meter(emu: &Emulator, token: &str, body: &str) -> io::Result<Resp> {
    meter_with(emu, token, body, &[])
}

fn delta(emu: &Emulator, token: &str, value: &str) -> io::Result<Resp> {
    meter(emu, token, &usage("agr", "feat", value, Some("delta")))
}

/// Waits (up to 5 s) until at least `n` meter requests are being handled.
fn wait_in_flight(emu: &Emulator, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while emu.in_flight() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(emu.in_flight() >= n, "never saw {n} requests in flight");
}

fn with_faults(faults: Faults) -> (Emulator, String) {
    let emu = Emulator::builder().faults(faults).start().unwrap();
    let token = emu.issue_token();
    (emu, token)
}

// ----- tokens -----

#[test]
fn token_endpoint_issues_tokens_for_the_right_credentials() {
    let emu = Emulator::start().unwrap();
    assert_eq!(emu.audience(), format!("{}/api", emu.base_url()));
    assert!(emu.base_url().starts_with("http://127.0.0.1:"));
    assert!(!emu.base_url().ends_with('/'));

    let r = post_token(
        &emu,
        &token_form(&emu),
        &[("Kinde-SDK", "Rust/0.1.0/1.88.0/rust")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(
        body["scope"],
        "create:meter_usage read:billing_agreements read:organizations read:users"
    );
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(delta(&emu, token, "1").unwrap().status, 200);

    let cases: Vec<(String, u16, &str)> = vec![
        (
            token_form(&emu).replace("emulator-client-secret", "wrong"),
            401,
            "invalid_client",
        ),
        (
            token_form(&emu).replace("emulator-client-id", "someone"),
            401,
            "invalid_client",
        ),
        (
            token_form_for(&emu, Some("https://example.kinde.com/api")),
            400,
            "invalid_audience",
        ),
        (token_form_for(&emu, None), 400, "invalid_request"),
        (
            token_form(&emu).replace("client_credentials", "password"),
            400,
            "unsupported_grant_type",
        ),
        (
            format!("{}&grant_type=client_credentials", token_form(&emu)),
            400,
            "invalid_request",
        ),
        ("%%%".to_owned(), 400, "invalid_request"),
    ];
    for (form, status, error) in &cases {
        let r = post_token(&emu, form, &[]);
        assert_eq!(r.status, *status, "{form}: {r:?}");
        assert_eq!(r.json()["error"], *error, "{form}");
        assert!(r.json()["error_description"].is_string());
    }
    // Wrong content type.
    let r = send(
        emu.addr(),
        "POST",
        "/oauth2/token",
        &[("Content-Type", "application/json")],
        b"{}",
    )
    .unwrap();
    assert_eq!(r.status, 400);

    assert_eq!(emu.counts().tokens_issued, 1);
    let log = emu.token_requests();
    assert_eq!(log.len(), cases.len() + 2);
    assert_eq!(log[0].kinde_sdk(), Some("Rust/0.1.0/1.88.0/rust"));
    assert!(log[0].issued);
    assert_eq!(log[1].error.as_deref(), Some("invalid_client"));
    assert!(!format!("{emu:?}").contains("emulator-client-secret"));
}

#[test]
fn tokens_expire_and_static_token_stays_valid() {
    let emu = Emulator::builder()
        .static_token("static-abc")
        .token_lifetime(Duration::from_millis(300))
        .start()
        .unwrap();
    let r = post_token(&emu, &token_form(&emu), &[]);
    assert_eq!(r.json()["expires_in"], 0);
    let short = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(delta(&emu, &short, "1").unwrap().status, 200);
    std::thread::sleep(Duration::from_millis(350));
    let r = delta(&emu, &short, "1").unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.codes(), ["UNAUTHORIZED"]);

    emu.set_token_lifetime(Duration::from_secs(60));
    let token = fetch_token(&emu);
    assert_eq!(delta(&emu, &token, "1").unwrap().status, 200);
    emu.expire_tokens();
    assert_eq!(delta(&emu, &token, "1").unwrap().status, 403);
    assert_eq!(delta(&emu, "static-abc", "1").unwrap().status, 200);
    assert_eq!(delta(&emu, "nonsense", "1").unwrap().status, 403);

    // No Authorization header, or another scheme.
    let body = usage("agr", "feat", "1", None);
    let r = send(
        emu.addr(),
        "POST",
        "/api/v1/billing/meter_usage",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 403);
    let r = send(
        emu.addr(),
        "POST",
        "/api/v1/billing/meter_usage",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Basic static-abc"),
        ],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 403);

    let c = emu.counts();
    assert_eq!((c.accepted, c.unauthorized), (3, 5));
    assert_eq!(emu.total("agr", "feat"), 3);
}

#[test]
fn omitted_expires_in_and_401_option() {
    let emu = Emulator::builder()
        .omit_expires_in(true)
        .unauthorized_status(401)
        .start()
        .unwrap();
    let r = post_token(&emu, &token_form(&emu), &[]);
    assert!(r.json().get("expires_in").is_none(), "{r:?}");
    assert_eq!(delta(&emu, "nope", "1").unwrap().status, 401);
    assert!(
        Emulator::builder()
            .unauthorized_status(500)
            .start()
            .is_err()
    );
}

// ----- validation and routing over HTTP -----

#[test]
fn validation_over_http() {
    let emu = Emulator::builder()
        .known_agreements(["agr"])
        .known_features(["feat"])
        .start()
        .unwrap();
    let token = emu.issue_token();
    let cases: Vec<(String, u16, &[&str])> = vec![
        (usage("agr", "feat", "1", Some("delta")), 200, &[]),
        (r#"{"customer_agreement_id":"agr","billing_feature_code":"feat","meter_value":1}"#.into(), 400, &["INVALID_FIELD"]),
        (r#"{"customer_agreement_id":"agr","meter_value":"1"}"#.into(), 400, &["MISSING_FIELD"]),
        (usage("agr", "feat", "-1", None), 400, &["INVALID_FIELD"]),
        (usage("agr", "feat", "1", Some("absolut")), 400, &["INVALID_FIELD"]),
        (
            r#"{"customer_agreement_id":"agr","billing_feature_code":"feat","meter_value":"1","meter_usage_timestamp":"2024-11-18T13:32:03+11"}"#.into(),
            400,
            &["INVALID_FIELD"],
        ),
        (
            r#"{"customer_agreement_id":"agr","billing_feature_code":"feat","meter_value":"1","extra":true}"#.into(),
            400,
            &["UNKNOWN_FIELD"],
        ),
        (usage("other", "feat", "1", None), 400, &["AGREEMENT_NOT_FOUND"]),
        (usage("agr", "other", "1", None), 400, &["FEATURE_NOT_FOUND"]),
        ("not json".into(), 400, &["INVALID_JSON"]),
    ];
    for (body, status, codes) in &cases {
        let r = meter(&emu, &token, body).unwrap();
        assert_eq!(r.status, *status, "{body}: {r:?}");
        assert_eq!(r.codes(), *codes, "{body}");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    // Success body.
    let r = meter(&emu, &token, &usage("agr", "feat", "1", None)).unwrap();
    assert_eq!(
        r.json(),
        serde_json::json!({"message": "Success", "code": "OK"})
    );

    // Non-UTF-8 garbage.
    let auth = format!("Bearer {token}");
    let post = |content_type: &str, body: &[u8]| {
        send(
            emu.addr(),
            "POST",
            "/api/v1/billing/meter_usage",
            &[("Authorization", &auth), ("Content-Type", content_type)],
            body,
        )
    };
    let r = post("application/json", &[0xff, 0x00, 0xfe, b'{']).unwrap();
    assert_eq!(
        (r.status, r.codes()),
        (400, vec!["INVALID_JSON".to_owned()])
    );
    // Wrong content type.
    let r = post("text/plain", usage("agr", "feat", "1", None).as_bytes()).unwrap();
    assert_eq!(
        (r.status, r.codes()),
        (415, vec!["UNSUPPORTED_MEDIA_TYPE".to_owned()])
    );
    // Huge body.
    let huge = vec![b' '; 100 * 1024];
    let r = post("application/json", &huge);
    if let Ok(r) = r {
        assert_eq!(r.status, 413);
    }
    // Routing.
    for (method, path) in [
        ("GET", "/api/v1/billing/meter_usage"),
        ("POST", "/api/v1/billing/meter_usage/"),
        ("GET", "/oauth2/token"),
        ("DELETE", "/"),
    ] {
        let r = send(emu.addr(), method, path, &[], b"").unwrap();
        assert_eq!(
            (r.status, r.codes()),
            (404, vec!["ROUTE_NOT_FOUND".to_owned()]),
            "{method} {path}"
        );
    }

    let c = emu.counts();
    assert_eq!(c.accepted, 2);
    assert_eq!(c.rejected, 12);
    assert_eq!(c.not_found, 4);
    assert_eq!(emu.total("agr", "feat"), 2);
    let log = emu.requests();
    assert_eq!(log[1].status, Some(400));
    assert_eq!(log[1].error_codes, ["INVALID_FIELD"]);
    assert_eq!(log[1].header("authorization"), Some(auth.as_str()));
    assert!(log[1].body_str().contains("\"meter_value\":1"));
}

#[test]
fn survives_garbage_on_the_socket() {
    let emu = Emulator::start().unwrap();
    for junk in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /oauth2/token HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
    ] {
        let mut conn = TcpStream::connect(emu.addr()).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = conn.write_all(junk);
        let mut sink = Vec::new();
        let _ = conn.read_to_end(&mut sink);
    }
    let token = emu.issue_token();
    assert_eq!(delta(&emu, &token, "1").unwrap().status, 200);
}

// ----- ledger -----

#[test]
fn delta_adds_and_absolute_replaces() {
    let emu = Emulator::start().unwrap();
    let token = emu.issue_token();
    for (agr, feat, value, ty) in [
        ("a1", "f", "2", Some("delta")),
        ("a1", "f", "0.5", None),
        ("a1", "g", "10", Some("absolute")),
        ("a1", "g", "4", Some("absolute")),
        ("a1", "g", "1", Some("delta")),
        ("a2", "f", "7", Some("delta")),
    ] {
        let r = meter_with(
            &emu,
            &token,
            &usage(agr, feat, value, ty),
            &[("Idempotency-Key", "k-1")],
        )
        .unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(emu.total("a1", "f"), "2.5");
    assert_eq!(emu.total("a1", "f").whole(), None);
    assert_eq!(emu.total("a1", "g"), 5);
    assert_eq!(emu.total("a2", "f"), 7u64);
    assert_eq!(emu.total("nope", "f"), 0);
    assert_eq!(emu.ledger_sum(), "14.5");
    assert_eq!(emu.ledger().len(), 3);
    let accepted = emu.accepted();
    assert_eq!(accepted.len(), 6);
    assert_eq!(accepted[1].meter_type, EmulatedMeterType::Delta);
    assert!(!accepted[1].meter_type_explicit);
    assert!(accepted[0].meter_type_explicit);
    assert_eq!(accepted[2].meter_type, EmulatedMeterType::Absolute);
    assert_eq!(accepted[0].idempotency_key.as_deref(), Some("k-1"));
    assert_eq!(accepted[5].request_index, 5);
    assert!(
        accepted
            .iter()
            .all(|a| !a.ambiguous && a.timestamp.is_none())
    );
    let c = emu.counts();
    assert_eq!((c.accepted, c.ambiguous, c.replayed), (6, 0, 0));
    let log = emu.requests();
    assert!(
        log.iter()
            .all(|r| r.outcome == RequestOutcome::Accepted && r.status == Some(200))
    );
    assert!(
        log.iter()
            .all(|r| r.responded_at.is_some_and(|t| t >= r.arrived_at))
    );
}

#[test]
fn idempotency_switch() {
    let emu = Emulator::start().unwrap();
    let token = emu.issue_token();
    let body = usage("a", "f", "3", Some("delta"));
    let send_twice = || {
        for _ in 0..2 {
            let sent = meter_with(&emu, &token, &body, &[("Idempotency-Key", "same")]).unwrap();
            assert_eq!(sent.status, 200);
        }
    };
    send_twice();
    assert_eq!(emu.total("a", "f"), 6);
    emu.set_honor_idempotency_key(true);
    send_twice();
    assert_eq!(
        meter_with(&emu, &token, &body, &[("Idempotency-Key", "other")])
            .unwrap()
            .status,
        200
    );
    assert_eq!(meter(&emu, &token, &body).unwrap().status, 200);
    assert_eq!(meter(&emu, &token, &body).unwrap().status, 200);
    assert_eq!(emu.total("a", "f"), 15);
    let c = emu.counts();
    assert_eq!((c.accepted, c.replayed), (5, 2));

    // Honoured from the builder; a key applied after a dropped answer is replayed.
    let emu = Emulator::builder()
        .honor_idempotency_key(true)
        .faults(Faults {
            drop_after_apply: 1.0,
            ..Faults::default()
        })
        .start()
        .unwrap();
    let token = emu.issue_token();
    assert!(meter_with(&emu, &token, &body, &[("Idempotency-Key", "x")]).is_err());
    emu.set_faults(Faults::none());
    let r = meter_with(&emu, &token, &body, &[("Idempotency-Key", "x")]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(emu.total("a", "f"), 3);
    assert_eq!(emu.requests()[1].outcome, RequestOutcome::Replayed);
}

// ----- faults -----

#[test]
fn status_faults_do_not_apply() {
    for (faults, status, kind) in [
        (
            Faults {
                status_500: 1.0,
                ..Faults::default()
            },
            500,
            FaultKind::Status500,
        ),
        (
            Faults {
                status_502: 1.0,
                ..Faults::default()
            },
            502,
            FaultKind::Status502,
        ),
        (
            Faults {
                status_503: 1.0,
                ..Faults::default()
            },
            503,
            FaultKind::Status503,
        ),
    ] {
        let (emu, token) = with_faults(faults);
        let r = delta(&emu, &token, "5").unwrap();
        assert_eq!(r.status, status);
        if status == 502 {
            assert!(r.body.starts_with("<html>"), "{r:?}");
            assert_eq!(r.header("content-type"), Some("text/html"));
        } else {
            assert_eq!(r.codes().len(), 1);
        }
        assert_eq!(emu.total("agr", "feat"), 0);
        let c = emu.counts();
        assert_eq!((c.faults, c.accepted, c.ambiguous, c.dropped), (1, 0, 0, 0));
        assert_eq!(emu.requests()[0].outcome, RequestOutcome::Fault(kind));
        assert_eq!(emu.ambiguous_applied(), 0);
        // Faults come before validation.
        assert_eq!(meter(&emu, &token, "garbage").unwrap().status, status);
    }
}

#[test]
fn after_apply_faults_are_ambiguous() {
    let (emu, token) = with_faults(Faults {
        status_500_after_apply: 1.0,
        ..Faults::default()
    });
    assert_eq!(delta(&emu, &token, "5").unwrap().status, 500);
    assert_eq!(
        meter(&emu, &token, &usage("agr", "feat", "100", Some("absolute")))
            .unwrap()
            .status,
        500
    );
    assert_eq!(delta(&emu, &token, "1.5").unwrap().status, 500);
    // Invalid requests are not applied, so not ambiguous.
    assert_eq!(delta(&emu, &token, "x").unwrap().status, 400);
    assert_eq!(emu.total("agr", "feat"), "101.5");
    let c = emu.counts();
    assert_eq!(
        (c.faults, c.accepted, c.ambiguous, c.rejected),
        (3, 3, 3, 1)
    );
    // Only deltas count: an absolute is not added twice by a retry.
    assert_eq!(emu.ambiguous_applied(), "6.5");

    let (emu, token) = with_faults(Faults {
        malformed_200: 1.0,
        ..Faults::default()
    });
    for _ in 0..6 {
        let r = delta(&emu, &token, "2").unwrap();
        assert_eq!(r.status, 200);
        assert!(
            serde_json::from_str::<serde_json::Value>(&r.body).is_err(),
            "{r:?}"
        );
    }
    let c = emu.counts();
    assert_eq!((c.faults, c.accepted, c.ambiguous), (6, 6, 6));
    assert_eq!(emu.ambiguous_applied(), 12);
    assert_eq!(emu.total("agr", "feat"), 12);
}

#[test]
fn drop_faults_close_the_connection() {
    let (emu, token) = with_faults(Faults {
        drop_before_apply: 1.0,
        ..Faults::default()
    });
    let err = delta(&emu, &token, "5").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    assert_eq!(emu.total("agr", "feat"), 0);
    let c = emu.counts();
    assert_eq!((c.dropped, c.faults, c.accepted, c.ambiguous), (1, 0, 0, 0));
    let r = &emu.requests()[0];
    assert_eq!(
        (r.status, r.responded_at, r.outcome),
        (
            None,
            None,
            RequestOutcome::Fault(FaultKind::DropBeforeApply)
        )
    );

    let (emu, token) = with_faults(Faults {
        drop_after_apply: 1.0,
        ..Faults::default()
    });
    assert!(delta(&emu, &token, "5").is_err());
    assert!(delta(&emu, &token, "2").is_err());
    assert_eq!(emu.total("agr", "feat"), 7);
    let c = emu.counts();
    assert_eq!((c.dropped, c.accepted, c.ambiguous), (2, 2, 2));
    assert_eq!(emu.ambiguous_applied(), 7);
    // The server is fine afterwards.
    emu.set_faults(Faults::none());
    assert_eq!(delta(&emu, &token, "1").unwrap().status, 200);
    assert_eq!(emu.ambiguous_applied(), 7);
}

#[test]
fn latency_and_abandoned_requests() {
    let (emu, token) = with_faults(Faults {
        latency: Some(Duration::from_millis(300)),
        ..Faults::default()
    });
    // The client gives up after 50 ms; the apply goes ahead anyway.
    let mut conn = TcpStream::connect(emu.addr()).unwrap();
    let auth = format!("Bearer {token}");
    let body = usage("agr", "feat", "4", None);
    conn.write_all(&request_bytes(
        emu.addr(),
        "POST",
        "/api/v1/billing/meter_usage",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
        false,
    ))
    .unwrap();
    wait_in_flight(&emu, 1);
    drop(conn);
    assert!(emu.wait_idle(Duration::from_secs(2)));
    assert_eq!(emu.total("agr", "feat"), 4);
    let c = emu.counts();
    assert_eq!((c.accepted, c.ambiguous, c.abandoned), (1, 1, 1));
    assert_eq!(emu.ambiguous_applied(), 4);
    assert_eq!(
        emu.requests()[0].outcome,
        RequestOutcome::Abandoned { applied: true }
    );

    // A patient client gets its answer after the delay.
    let started = Instant::now();
    assert_eq!(delta(&emu, &token, "1").unwrap().status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn same_seed_same_fault_sequence() {
    let faults = Faults {
        status_500: 0.15,
        status_503: 0.15,
        drop_before_apply: 0.1,
        drop_after_apply: 0.1,
        malformed_200: 0.1,
        ..Faults::default()
    };
    let run = |seed: u64| {
        let emu = Emulator::builder()
            .seed(seed)
            .faults(faults.clone())
            .start()
            .unwrap();
        let token = emu.issue_token();
        for _ in 0..30 {
            let _ = delta(&emu, &token, "1");
        }
        let outcomes: Vec<RequestOutcome> = emu.requests().iter().map(|r| r.outcome).collect();
        (outcomes, emu.total("agr", "feat"), emu.ambiguous_applied())
    };
    let a = run(3);
    assert_eq!(a, run(3));
    assert_ne!(a.0, run(4).0);
    assert!(a.0.contains(&RequestOutcome::Accepted));
    assert!(a.0.iter().any(|o| matches!(o, RequestOutcome::Fault(_))));
}

// ----- throttling -----

#[test]
fn rate_limit_answers_429_with_reset() {
    let emu = Emulator::builder()
        .rate_limit(RateLimit {
            per_second: 0.25,
            burst: 2,
        })
        .start()
        .unwrap();
    let token = emu.issue_token();
    assert_eq!(delta(&emu, &token, "1").unwrap().status, 200);
    assert_eq!(delta(&emu, &token, "1").unwrap().status, 200);
    let r = delta(&emu, &token, "1").unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("ratelimit-reset"), Some("4"));
    assert_eq!(r.header("retry-after"), None);
    assert_eq!(r.codes(), ["TOO_MANY_REQUESTS"]);
    // Unauthenticated requests are refused before the limiter.
    assert_eq!(delta(&emu, "bad", "1").unwrap().status, 403);

    emu.set_retry_after_header(true);
    emu.set_rate_limit(Some(RateLimit {
        per_second: 2.0,
        burst: 1,
    }));
    assert_eq!(delta(&emu, &token, "1").unwrap().status, 200);
    let r = delta(&emu, &token, "1").unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("ratelimit-reset"), Some("1"));
    assert_eq!(r.header("retry-after"), Some("1"));
    std::thread::sleep(Duration::from_millis(550));
    assert_eq!(delta(&emu, &token, "1").unwrap().status, 200);
    emu.set_rate_limit(None);
    for _ in 0..5 {
        assert_eq!(delta(&emu, &token, "1").unwrap().status, 200);
    }
    let c = emu.counts();
    assert_eq!((c.accepted, c.throttled, c.unauthorized), (9, 2, 1));
    assert_eq!(emu.total("agr", "feat"), 9);
    let throttled: Vec<_> = emu
        .requests()
        .into_iter()
        .filter(|r| r.outcome == RequestOutcome::Throttled)
        .collect();
    assert_eq!(throttled[0].rate_limit_reset, Some(4));
    assert_eq!(throttled[1].retry_after, Some(1));
    assert!(throttled.iter().all(|r| r.responded_at.is_some()));
}

#[test]
fn concurrency_limit_answers_429_and_max_in_flight_is_tracked() {
    let emu = Emulator::builder()
        .concurrency_limit(2)
        .faults(Faults {
            latency: Some(Duration::from_millis(500)),
            ..Faults::default()
        })
        .start()
        .unwrap();
    let token = emu.issue_token();
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let (emu, token) = (&emu, &token);
                s.spawn(move || {
                    wait_in_flight(emu, i);
                    let r = delta(emu, token, "1").unwrap();
                    (r.status, r.header("ratelimit-reset").map(str::to_owned))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses[0].0, 200);
    assert_eq!(statuses[1].0, 200);
    assert_eq!(statuses[2], (429, Some("1".to_owned())));
    assert_eq!(emu.max_in_flight_seen(), 3);
    assert_eq!(emu.counts().throttled, 1);
    assert_eq!(emu.total("agr", "feat"), 2);

    emu.reset_max_in_flight();
    assert_eq!(emu.max_in_flight_seen(), 0);
    emu.set_concurrency_limit(None);
    emu.set_faults(Faults::none());
    assert_eq!(delta(&emu, &token, "1").unwrap().status, 200);
    assert_eq!(emu.max_in_flight_seen(), 1);
}

#[test]
fn throttle_for_is_a_429_storm() {
    let emu = Emulator::start().unwrap();
    let token = emu.issue_token();
    emu.throttle_for(Duration::from_millis(2500));
    let r = delta(&emu, &token, "1").unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("ratelimit-reset"), Some("3"));
    emu.throttle_for(Duration::from_millis(400));
    let r = delta(&emu, &token, "1").unwrap();
    assert_eq!(r.header("ratelimit-reset"), Some("1"));
    std::thread::sleep(Duration::from_millis(450));
    assert_eq!(delta(&emu, &token, "1").unwrap().status, 200);
    emu.throttle_for(Duration::from_secs(60));
    assert_eq!(delta(&emu, &token, "1").unwrap().status, 429);
    emu.throttle_for(Duration::ZERO);
    assert_eq!(delta(&emu, &token, "1").unwrap().status, 200);
    assert_eq!(emu.counts().throttled, 3);
}

// ----- availability -----

#[test]
fn go_down_and_come_up_on_the_same_port() {
    let emu = Emulator::start().unwrap();
    let addr = emu.addr();
    let token = emu.issue_token();
    assert_eq!(delta(&emu, &token, "1").unwrap().status, 200);

    // A keep-alive connection with one request answered on it.
    let mut kept = TcpStream::connect(addr).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let auth = format!("Bearer {token}");
    let body = usage("agr", "feat", "1", None);
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    kept.write_all(&request_bytes(
        addr,
        "POST",
        "/api/v1/billing/meter_usage",
        &headers,
        body.as_bytes(),
        false,
    ))
    .unwrap();
    let mut buf = [0u8; 4096];
    let n = kept.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    emu.go_down();
    assert!(!emu.is_up());
    // The kept connection is closed by the server...
    let closed = matches!(kept.read(&mut buf), Ok(0) | Err(_));
    assert!(closed);
    // ...and new connections are refused.
    let err = TcpStream::connect(addr).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);

    emu.come_up().unwrap();
    assert!(emu.is_up());
    assert_eq!(emu.addr(), addr);
    assert_eq!(delta(&emu, &token, "1").unwrap().status, 200);
    assert_eq!(emu.total("agr", "feat"), 3);
    emu.come_up().unwrap(); // already up: nothing to do

    emu.down_for(Duration::from_millis(300));
    assert!(TcpStream::connect(addr).is_err());
    let started = Instant::now();
    while !emu.is_up() && started.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(delta(&emu, &token, "1").unwrap().status, 200);

    // A manual come_up cancels the pending automatic one, which then must not
    // bring the emulator up after a later go_down.
    emu.down_for(Duration::from_millis(100));
    emu.come_up().unwrap();
    emu.go_down();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!emu.is_up());
    assert!(TcpStream::connect(addr).is_err());
    emu.come_up().unwrap();
    assert_eq!(emu.total("agr", "feat"), 4);
}

#[test]
fn going_down_mid_request_keeps_the_apply() {
    let (emu, token) = with_faults(Faults {
        latency: Some(Duration::from_millis(200)),
        ..Faults::default()
    });
    let result = std::thread::scope(|s| {
        let h = s.spawn(|| delta(&emu, &token, "9"));
        wait_in_flight(&emu, 1);
        emu.go_down();
        h.join().unwrap()
    });
    assert!(result.is_err());
    assert!(emu.wait_idle(Duration::from_secs(2)));
    assert_eq!(emu.total("agr", "feat"), 9);
    assert_eq!(emu.ambiguous_applied(), 9);
    assert_eq!(emu.counts().abandoned, 1);
}

#[test]
fn fixed_port_and_shutdown() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let emu = Emulator::builder().port(port).start().unwrap();
    assert_eq!(emu.port(), port);
    assert_eq!(emu.base_url(), format!("http://127.0.0.1:{port}"));
    // The port is taken while it runs.
    assert!(Emulator::builder().port(port).start().is_err());
    let started = Instant::now();
    emu.shutdown();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

// ----- runtimes and a real client -----

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn emulator_is_send_and_sync() {
    assert_send_sync::<Emulator>();
}

async fn reqwest_roundtrip(emu: &Emulator) {
    let client = reqwest::Client::new();
    let token = client
        .post(emu.token_url())
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Kinde-SDK", "Rust/0.1.0/1.88.0/rust")
        .body(token_form(emu))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let token: serde_json::Value = serde_json::from_slice(&token).unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    let send_delta = |value: &str| {
        client
            .post(emu.meter_usage_url())
            .bearer_auth(&token)
            .header("Content-Type", "application/json")
            .body(usage("agr", "feat", value, Some("delta")))
            .send()
    };
    assert_eq!(send_delta("2").await.unwrap().status(), 200);

    // A dropped connection is a transport error, not a response.
    emu.set_faults(Faults {
        drop_after_apply: 1.0,
        ..Faults::default()
    });
    let err = send_delta("3").await.unwrap_err();
    assert!(err.status().is_none(), "{err:?}");
    emu.set_faults(Faults::none());
    assert_eq!(emu.total("agr", "feat"), 5);
    assert_eq!(emu.ambiguous_applied(), 3);
}

#[tokio::test(flavor = "current_thread")]
async fn works_inside_a_current_thread_runtime() {
    let emu = Emulator::start().unwrap();
    reqwest_roundtrip(&emu).await;
    emu.go_down();
    emu.come_up().unwrap();
    drop(emu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_inside_a_multi_thread_runtime() {
    let emu = Emulator::start().unwrap();
    reqwest_roundtrip(&emu).await;
}

// ----- secrets stay out of Debug -----

#[test]
fn debug_output_shows_no_secret_or_token() {
    let builder = Emulator::builder()
        .client_credentials("the-id", "the-very-secret")
        .static_token("the-static-token");
    let emu = builder.clone().start().unwrap();
    let token = emu.issue_token();
    meter(&emu, &token, &usage("agr", "feat", "1", None)).unwrap();
    let shown = [
        format!("{builder:?}"),
        format!("{emu:?}"),
        format!("{:?}", emu.requests()),
        format!("{:?}", emu.token_requests()),
        format!("{:?}", emu.shared),
    ];
    for text in shown {
        for secret in ["the-very-secret", "the-static-token", token.as_str()] {
            assert!(!text.contains(secret), "{secret} shown in {text}");
        }
    }
    assert!(format!("{:?}", emu.requests()).contains("<redacted>"));
}

#[test]
fn unavailable_for_and_reset() {
    let emu = Emulator::builder().seed(3).start().unwrap();
    let token = emu.issue_token();
    assert_eq!(delta(&emu, &token, "2").unwrap().status, 200);
    emu.unavailable_for(Duration::from_secs(30));
    let r = delta(&emu, &token, "5").unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("30"));
    assert_eq!(r.codes(), [codes::SERVICE_UNAVAILABLE]);
    assert_eq!(post_token(&emu, &token_form(&emu), &[]).status, 503);
    assert_eq!(emu.counts().unavailable, 1);
    assert_eq!(emu.requests()[1].outcome, RequestOutcome::Unavailable);
    assert_eq!(emu.total("agr", "feat"), 2);
    emu.unavailable_for(Duration::ZERO);
    assert_eq!(delta(&emu, &token, "1").unwrap().status, 200);

    emu.set_faults(Faults::none().status_500(1.0));
    emu.throttle_for(Duration::from_secs(60));
    emu.reset();
    assert_eq!(emu.ledger_sum(), 0);
    assert!(emu.accepted().is_empty() && emu.requests().is_empty());
    assert!(emu.token_requests().is_empty());
    assert_eq!(emu.counts(), Counts::default());
    assert_eq!(emu.faults(), Faults::none());
    // Tokens stay valid, throttling is gone.
    assert_eq!(delta(&emu, &token, "4").unwrap().status, 200);
    assert_eq!(emu.total("agr", "feat"), 4);
}

mod billing;
mod webhooks;
