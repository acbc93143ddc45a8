//! A tiny blocking HTTP/1.1 client on `std::net::TcpStream` (one request per
//! connection), shared by the integration tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One response.
#[derive(Debug)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Resp {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request to `base` (`http://127.0.0.1:PORT`) and reads the whole answer.
pub(crate) fn send(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let addr = base.strip_prefix("http://").expect("an http:// URL");
    let mut conn = TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    conn.write_all(out.as_bytes()).unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).expect("read the answer");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let end = text.find("\r\n\r\n").expect("a complete response head");
    let mut lines = text[..end].split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Resp {
        status,
        headers,
        body: text[end + 4..].to_owned(),
    }
}

pub(crate) fn get(base: &str, path: &str) -> Resp {
    send(base, "GET", path, &[], "")
}

pub(crate) fn post_json(base: &str, path: &str, body: &str) -> Resp {
    send(
        base,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body,
    )
}

/// `POST /oauth2/token` with the default credentials; the access token.
pub(crate) fn fetch_token(base: &str) -> String {
    fetch_token_with(base, "emulator-client-id", "emulator-client-secret")
}

pub(crate) fn fetch_token_with(base: &str, id: &str, secret: &str) -> String {
    let audience = format!("{base}/api");
    let form = serde_urlencoded::to_string([
        ("grant_type", "client_credentials"),
        ("client_id", id),
        ("client_secret", secret),
        ("audience", audience.as_str()),
    ])
    .unwrap();
    let r = send(
        base,
        "POST",
        "/oauth2/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &form,
    );
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["access_token"].as_str().unwrap().to_owned()
}

/// `POST /api/v1/billing/meter_usage` of a delta.
pub(crate) fn meter(base: &str, token: &str, agreement: &str, feature: &str, value: &str) -> Resp {
    let body = serde_json::json!({
        "customer_agreement_id": agreement,
        "billing_feature_code": feature,
        "meter_value": value,
        "meter_type_code": "delta",
    })
    .to_string();
    let auth = format!("Bearer {token}");
    send(
        base,
        "POST",
        "/api/v1/billing/meter_usage",
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        &body,
    )
}
