//! Signed webhooks delivered to a small local receiver, checked against the served JWKS.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::Mutex;

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};

use super::*;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Hit {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A webhook receiver on 127.0.0.1: answers the scripted statuses in turn, then 200.
struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Receiver {
    fn start(statuses: &[u16], delay: Duration) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hooks/kinde", listener.local_addr().unwrap());
        let hits = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(
            statuses.iter().copied().collect::<VecDeque<_>>(),
        ));
        let recorded = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let Some(hit) = read_request(&mut conn) else {
                    continue;
                };
                recorded.lock().unwrap().push(hit);
                std::thread::sleep(delay);
                let status = script.lock().unwrap().pop_front().unwrap_or(200);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} Whatever\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
            }
        });
        Receiver { url, hits }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

fn read_request(conn: &mut TcpStream) -> Option<Hit> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let (head_end, length) = loop {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .split("\r\n")
                .filter_map(|l| l.split_once(':'))
                .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    while raw.len() < head_end + length {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text[..head_end - 4].split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Hit {
        path,
        headers,
        body: text[head_end..].to_owned(),
    })
}

/// Verifies a compact JWS against a JWKS the way a receiver would: the `kid` picks
/// the key, RS256 only. Returns the claims.
fn verify(token: &str, jwks: &serde_json::Value) -> Result<serde_json::Value, String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err("not three parts".to_owned());
    };
    let decode = |part: &str| base64url_decode(part).ok_or_else(|| format!("bad base64url {part}"));
    let header: serde_json::Value =
        serde_json::from_slice(&decode(header)?).map_err(|e| e.to_string())?;
    if header["alg"] != "RS256" {
        return Err(format!("alg {}", header["alg"]));
    }
    let key = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == header["kid"]))
        .ok_or_else(|| format!("unknown kid {}", header["kid"]))?;
    let n = decode(key["n"].as_str().unwrap_or_default())?;
    let e = decode(key["e"].as_str().unwrap_or_default())?;
    let input = &token[..token.rfind('.').unwrap_or(0)];
    RsaPublicKeyComponents { n: &n, e: &e }
        .verify(
            &RSA_PKCS1_2048_8192_SHA256,
            input.as_bytes(),
            &decode(signature)?,
        )
        .map_err(|_| "bad signature".to_owned())?;
    serde_json::from_slice(&decode(claims)?).map_err(|e| e.to_string())
}

fn served_jwks(emu: &Emulator) -> serde_json::Value {
    let r = send(emu.addr(), "GET", "/.well-known/jwks", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()
}

fn fast_retries() -> Vec<Duration> {
    vec![Duration::from_millis(20); 3]
}

#[test]
fn jwks_is_served_and_matches_the_signer() {
    let emu = Emulator::start().unwrap();
    let jwks = served_jwks(&emu);
    let signer = emu.webhook_signer().unwrap();
    assert_eq!(jwks, signer.jwks_json());
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["alg"], "RS256");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["kid"], signer.kid());
    assert_eq!(key["e"], "AQAB");
    let n = base64url_decode(key["n"].as_str().unwrap()).unwrap();
    assert_eq!(n.len(), 256, "RSA-2048");
    assert!(!key["n"].as_str().unwrap().contains('='));
    assert_eq!(emu.requests().last().unwrap().path, "/.well-known/jwks");
    assert_eq!(emu.requests().last().unwrap().outcome, RequestOutcome::Read);
    assert_eq!(
        emu.jwks_url(),
        format!("{}/.well-known/jwks", emu.base_url())
    );

    // Tokens of the signer verify; forged ones do not.
    let claims = serde_json::json!({"type": "customer.plan_changed", "iat": 1});
    assert_eq!(verify(&signer.sign(&claims), &jwks).unwrap(), claims);
    let other = WebhookSigner::generate().unwrap();
    assert_ne!(other.kid(), signer.kid());
    let wrong_key = other.sign_with_header(
        &serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": signer.kid()}),
        &claims,
    );
    assert_eq!(verify(&wrong_key, &jwks), Err("bad signature".to_owned()));
    assert!(
        verify(&other.sign(&claims), &jwks)
            .unwrap_err()
            .contains("unknown kid")
    );
    let mut tampered = signer.sign(&claims);
    tampered.insert(tampered.find('.').unwrap() + 1, 'e');
    assert!(verify(&tampered, &jwks).is_err());
}

#[test]
fn billing_events_are_signed_and_delivered_in_order() {
    let receiver = Receiver::start(&[], Duration::ZERO);
    let emu = Emulator::builder()
        .plan("basic", ["calls"])
        .plan("pro", ["calls", "rows"])
        .webhook_url(receiver.url.clone())
        .start()
        .unwrap();
    let org = emu.add_organization("org_w", "basic").unwrap();
    let new = emu.change_plan(&org.customer_id, "pro").unwrap();
    emu.cancel_agreement(&new).unwrap();
    let user = emu.add_user("kp_w", "basic").unwrap();
    assert!(emu.wait_webhooks(Duration::from_secs(10)));

    let jwks = served_jwks(&emu);
    let hits = receiver.hits();
    let deliveries = emu.webhook_deliveries();
    assert_eq!(hits.len(), 8, "{hits:?}");
    assert_eq!(deliveries.len(), 8);
    // Order is kept per customer.
    let of = |customer: &str| -> Vec<serde_json::Value> {
        hits.iter()
            .map(|h| verify(&h.body, &jwks).unwrap())
            .filter(|c| c["data"]["customer_id"] == customer)
            .collect()
    };
    let org_events = of(&org.customer_id);
    let types: Vec<_> = org_events
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "customer.agreement_created",
            "customer.plan_assigned",
            "customer.agreement_created",
            "customer.agreement_cancelled",
            "customer.plan_changed",
            "customer.agreement_cancelled",
        ]
    );
    let assigned = &org_events[1];
    assert_eq!(assigned["data"]["agreement_id"], org.agreement_id.as_str());
    assert_eq!(assigned["data"]["plan_code"], "basic");
    assert_eq!(assigned["data"]["org_code"], "org_w");
    assert!(assigned["data"].get("user_id").is_none());
    let changed = &org_events[4];
    assert_eq!(
        changed["data"],
        serde_json::json!({
            "customer_id": org.customer_id,
            "agreement_id": new,
            "previous_agreement_id": org.agreement_id,
            "plan_code": "pro",
            "org_code": "org_w",
        })
    );
    assert_eq!(
        org_events[3]["data"]["agreement_id"],
        org.agreement_id.as_str()
    );
    assert_eq!(org_events[5]["data"]["agreement_id"], new.as_str());
    let user_events = of(&user.customer_id);
    assert_eq!(user_events.len(), 2);
    assert_eq!(user_events[0]["data"]["user_id"], "kp_w");

    for claims in &org_events {
        assert!(claims["event_id"].as_str().unwrap().starts_with("event_"));
        assert_eq!(claims["source"], "api");
        let iat = claims["iat"].as_u64().unwrap();
        assert_eq!(
            claims["exp"].as_u64().unwrap(),
            iat + WEBHOOK_TOKEN_LIFETIME_SECS
        );
        let now = crate::clock::unix_secs(SystemTime::now());
        assert!(iat <= now && now - iat < 30, "{iat} vs {now}");
        for field in ["event_timestamp", "timestamp"] {
            let text = claims[field].as_str().unwrap();
            assert!(
                crate::clock::parse_rfc3339(text).is_some(),
                "{field}: {text}"
            );
        }
    }
    for (hit, delivery) in hits.iter().zip(&deliveries) {
        assert_eq!(hit.path, "/hooks/kinde");
        assert_eq!(hit.header("content-type"), Some("application/jwt"));
        let header: serde_json::Value =
            serde_json::from_slice(&base64url_decode(hit.body.split('.').next().unwrap()).unwrap())
                .unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": emu.webhook_signer().unwrap().kid()})
        );
        assert!(delivery.delivered && delivery.finished);
        assert_eq!((delivery.attempts, delivery.last_status), (1, Some(200)));
    }
    // Each delivery's webhook-id is its own, and is the one recorded.
    let mut ids: Vec<&str> = hits
        .iter()
        .map(|h| h.header("webhook-id").unwrap())
        .collect();
    let recorded: std::collections::BTreeSet<&str> =
        deliveries.iter().map(|d| d.webhook_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 8);
    assert_eq!(
        ids.into_iter().collect::<std::collections::BTreeSet<_>>(),
        recorded
    );
}

#[test]
fn failed_deliveries_are_retried_with_the_same_webhook_id() {
    let receiver = Receiver::start(&[500, 503], Duration::ZERO);
    let emu = Emulator::builder()
        .plan("basic", ["calls"])
        .webhook_retry_delays(fast_retries())
        .start()
        .unwrap();
    // Nothing is sent (nor recorded) while no URL is set.
    let made = emu.add_customer("basic").unwrap();
    assert!(emu.webhook_deliveries().is_empty());
    emu.set_webhook_url(Some(&receiver.url)).unwrap();
    emu.cancel_agreement(&made.agreement_id).unwrap();
    assert!(emu.wait_webhooks(Duration::from_secs(10)));

    let hits = receiver.hits();
    assert_eq!(hits.len(), 3, "two failures, then a 200");
    let id = hits[0].header("webhook-id").unwrap();
    assert!(hits.iter().all(|h| h.header("webhook-id") == Some(id)));
    let jwks = served_jwks(&emu);
    let events: Vec<_> = hits
        .iter()
        .map(|h| verify(&h.body, &jwks).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .all(|e| e["event_id"] == events[0]["event_id"])
    );
    let delivery = &emu.webhook_deliveries()[0];
    assert_eq!(delivery.webhook_id, id);
    assert_eq!(delivery.event_type, "customer.agreement_cancelled");
    assert_eq!((delivery.attempts, delivery.last_status), (3, Some(200)));
    assert!(delivery.delivered && delivery.finished);

    // Out of attempts: recorded as failed.
    let refusing = Receiver::start(&[500; 10], Duration::ZERO);
    emu.set_webhook_url(Some(&refusing.url)).unwrap();
    emu.set_webhook_retry_delays(vec![Duration::from_millis(5)]);
    emu.change_plan(&made.customer_id, "basic").unwrap();
    assert!(emu.wait_webhooks(Duration::from_secs(10)));
    let last = emu.webhook_deliveries().pop().unwrap();
    assert_eq!((last.attempts, last.last_status), (2, Some(500)));
    assert!(!last.delivered && last.finished);

    // Nobody listening: the error is recorded.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/x", closed.local_addr().unwrap());
    drop(closed);
    emu.set_webhook_url(Some(&url)).unwrap();
    emu.set_webhook_retry_delays(Vec::new());
    let another = emu.add_customer("basic").unwrap();
    assert!(emu.wait_webhooks(Duration::from_secs(10)));
    let last = emu.webhook_deliveries().pop().unwrap();
    assert_eq!(last.customer_id, another.customer_id);
    assert_eq!(
        (last.attempts, last.last_status, last.delivered),
        (1, None, false)
    );
    assert!(last.last_error.unwrap().contains("cannot connect"));

    assert!(emu.set_webhook_url(Some("https://127.0.0.1:1/x")).is_err());
    assert!(Emulator::builder().webhook_url("ftp://x").start().is_err());
}

#[test]
fn delivery_does_not_block_the_plan_change() {
    let receiver = Receiver::start(&[], Duration::from_millis(400));
    let emu = Emulator::builder()
        .plan("basic", ["calls"])
        .webhook_url(receiver.url.clone())
        .start()
        .unwrap();
    emu.webhook_signer().unwrap();
    let started = Instant::now();
    let made = emu.add_customer("basic").unwrap();
    emu.change_plan(&made.customer_id, "basic").unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !emu.wait_webhooks(Duration::from_millis(10)),
        "still sending"
    );
    assert!(emu.wait_webhooks(Duration::from_secs(10)));
    assert_eq!(receiver.hits().len(), 5);
}
