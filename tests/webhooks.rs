//! Kinde's billing webhooks over real HTTP on 127.0.0.1: a local "Kinde" serving its JWKS
//! (keys generated here, rotated, failing), and the `WebhookHandler` mounted in axum,
//! receiving webhooks signed here. Good, forged, expired, replayed (one at a time and 20
//! at once), malformed and oddly shaped webhooks, and how often the JWKS is fetched.

use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use kinde_meter::api::Domain;
use kinde_meter::webhooks::{EventKind, Jwks, WebhookEvent, WebhookHandler, WebhookVerifier};
use kinde_meter_workspace::logs;
use serde_json::{Value, json};

// --- signing -------------------------------------------------------------------------

fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(bits >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// An RSA signing key of the local Kinde.
struct Signer {
    kid: &'static str,
    pair: KeyPair,
}

/// `k1` signs, `k2` is some other business's key, `k3` is what `k1` is rotated to.
/// Generated once: RSA key generation is slow in unoptimized builds.
static KEYS: LazyLock<[Signer; 3]> = LazyLock::new(|| {
    ["k1", "k2", "k3"].map(|kid| Signer {
        kid,
        pair: KeyPair::generate(KeySize::Rsa2048).expect("key generation"),
    })
});

fn k1() -> &'static Signer {
    &KEYS[0]
}
fn k2() -> &'static Signer {
    &KEYS[1]
}
fn k3() -> &'static Signer {
    &KEYS[2]
}

/// The contents of a DER `TLV` at the start of `der`, and what follows it.
fn der_element(der: &[u8]) -> (&[u8], &[u8]) {
    let (len, at) = match der[1] {
        n if n < 0x80 => (usize::from(n), 2),
        n => {
            let bytes = usize::from(n & 0x7f);
            let len = der[2..2 + bytes]
                .iter()
                .fold(0, |acc, &b| acc << 8 | usize::from(b));
            (len, 2 + bytes)
        }
    };
    (&der[at..at + len], &der[at + len..])
}

impl Signer {
    /// The public key as a JWK: `n` and `e` from its `RSAPublicKey` DER.
    fn jwk(&self) -> Value {
        let (sequence, _) = der_element(self.pair.public_key().as_ref());
        let (n, rest) = der_element(sequence);
        let (e, _) = der_element(rest);
        let strip = |b: &[u8]| {
            b.iter()
                .skip_while(|&&x| x == 0)
                .copied()
                .collect::<Vec<_>>()
        };
        json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
               "n": b64(&strip(n)), "e": b64(&strip(e))})
    }

    fn sign(&self, header: &Value, claims: &[u8]) -> String {
        let signed = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims));
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signed.as_bytes(),
                &mut signature,
            )
            .expect("signs");
        format!("{signed}.{}", b64(&signature))
    }

    /// A webhook token as Kinde makes them.
    fn token(&self, claims: &Value) -> String {
        self.sign(
            &json!({"alg": "RS256", "typ": "JWT", "kid": self.kid}),
            claims.to_string().as_bytes(),
        )
    }
}

fn now() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    i64::try_from(since.as_secs()).expect("seconds")
}

fn plan_changed(customer: &str) -> Value {
    json!({
        "type": "customer.plan_changed",
        "event_id": format!("event_{customer}"),
        "event_timestamp": "2026-01-02T03:04:05Z",
        "timestamp": "2026-01-02T03:04:06Z",
        "source": "admin",
        "iat": now(),
        "exp": now() + 300,
        "data": {
            "customer_id": customer,
            "agreement_id": "agreement_new",
            "previous_agreement_id": "agreement_old",
            "plan_code": "pro",
            "org_code": "org_1ccfb819462",
        },
    })
}

// --- the local Kinde: its JWKS ---------------------------------------------------------

/// A JWKS endpoint whose keys, status and delay a test changes, counting its fetches.
#[derive(Clone)]
struct Kinde {
    domain: Domain,
    jwks: Arc<Mutex<String>>,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    fetches: Arc<AtomicUsize>,
}

impl Kinde {
    async fn start(keys: &[&Signer]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listener");
        let port = listener.local_addr().expect("address").port();
        let kinde = Kinde {
            domain: Domain::parse(&format!("http://127.0.0.1:{port}")).expect("domain"),
            jwks: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            delay_ms: Arc::default(),
            fetches: Arc::default(),
        };
        kinde.publish(keys);
        let state = kinde.clone();
        let app = Router::new().route(
            "/.well-known/jwks",
            get(move || {
                let state = state.clone();
                async move {
                    state.fetches.fetch_add(1, Ordering::SeqCst);
                    let delay = state.delay_ms.load(Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let status =
                        StatusCode::from_u16(state.status.load(Ordering::SeqCst)).expect("status");
                    let body = state.jwks.lock().expect("jwks").clone();
                    (status, [("content-type", "application/json")], body)
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        kinde
    }

    /// Publishes these keys, as a rotation does.
    fn publish(&self, keys: &[&Signer]) {
        let jwks = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
        *self.jwks.lock().expect("jwks") = jwks.to_string();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn jwks(&self, interval: Duration) -> Jwks {
        Jwks::new(self.domain.clone())
            .expect("jwks")
            .min_refresh_interval(interval)
    }
}

// --- the application: the handler in axum ----------------------------------------------

/// The application's webhook endpoint, and the events its callback got.
struct App {
    url: String,
    http: reqwest::Client,
    events: Arc<Mutex<Vec<WebhookEvent>>>,
}

impl App {
    async fn start(verifier: WebhookVerifier) -> Self {
        let events: Arc<Mutex<Vec<WebhookEvent>>> = Arc::default();
        let seen = Arc::clone(&events);
        let handler = WebhookHandler::new(verifier).on_event(move |event| {
            seen.lock().expect("events").push(event.clone());
        });
        let app = Router::new().route_service("/kinde/webhooks", handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listener");
        let url = format!(
            "http://{}/kinde/webhooks",
            listener.local_addr().expect("address")
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        App {
            url,
            http: reqwest::Client::new(),
            events,
        }
    }

    /// Delivers `body` as Kinde does; the status of the answer.
    async fn deliver(&self, webhook_id: &str, body: impl Into<reqwest::Body>) -> u16 {
        self.http
            .post(&self.url)
            .header("content-type", "application/jwt")
            .header("webhook-id", webhook_id)
            .body(body)
            .send()
            .await
            .expect("the application answers")
            .status()
            .as_u16()
    }

    fn events(&self) -> Vec<WebhookEvent> {
        self.events.lock().expect("events").clone()
    }
}

async fn setup(interval: Duration) -> (Kinde, App) {
    let kinde = Kinde::start(&[k1()]).await;
    let verifier = WebhookVerifier::builder(kinde.jwks(interval))
        .build()
        .expect("verifier");
    let app = App::start(verifier).await;
    (kinde, app)
}

// --- the tests ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_webhook_reaches_the_callback_with_its_fields() {
    let (kinde, app) = setup(Duration::from_secs(30)).await;
    let status = app
        .deliver("msg_1", k1().token(&plan_changed("customer_1")))
        .await;
    assert_eq!(status, 200);
    let events = app.events();
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.webhook_id.as_deref(), Some("msg_1"));
    assert_eq!(event.event_id.as_deref(), Some("event_customer_1"));
    assert_eq!(event.kind, EventKind::PlanChanged);
    assert!(event.kind.changes_billing());
    assert_eq!(
        event.customer.as_ref().map(|c| c.as_str()),
        Some("customer_1")
    );
    assert_eq!(
        event.agreement.as_ref().map(|a| a.as_str()),
        Some("agreement_new")
    );
    let previous = event.previous_agreement.as_ref().map(|a| a.as_str());
    assert_eq!(previous, Some("agreement_old"));
    assert_eq!(event.plan_code.as_deref(), Some("pro"));
    assert_eq!(
        event.org_code.as_ref().map(|o| o.as_str()),
        Some("org_1ccfb819462")
    );
    assert_eq!(event.user_id, None);
    assert_eq!(event.source.as_deref(), Some("admin"));
    assert_eq!(
        kinde.fetches(),
        1,
        "the JWKS is fetched on first use, then cached"
    );
    app.deliver("msg_2", k1().token(&plan_changed("customer_2")))
        .await;
    assert_eq!(kinde.fetches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_is_answered_200_and_handled_once_even_20_at_once() {
    let (_kinde, app) = setup(Duration::from_secs(30)).await;
    let token = k1().token(&plan_changed("customer_1"));
    assert_eq!(app.deliver("msg_once", token.clone()).await, 200);
    assert_eq!(app.deliver("msg_once", token).await, 200);
    assert_eq!(app.events().len(), 1);

    let app = Arc::new(app);
    let token = k1().token(&plan_changed("customer_burst"));
    let deliveries: Vec<_> = (0..20)
        .map(|_| {
            let (app, token) = (Arc::clone(&app), token.clone());
            tokio::spawn(async move { app.deliver("msg_burst", token).await })
        })
        .collect();
    for delivery in deliveries {
        assert_eq!(delivery.await.expect("delivery"), 200);
    }
    let burst = app
        .events()
        .iter()
        .filter(|e| e.webhook_id.as_deref() == Some("msg_burst"))
        .count();
    assert_eq!(burst, 1, "20 deliveries of one webhook, handled once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_expired_webhooks_are_refused_401() {
    let (_kinde, app) = setup(Duration::from_secs(30)).await;
    let claims = plan_changed("customer_1");
    let mut expired = claims.clone();
    expired["exp"] = json!(now() - 120);
    let claims_b64 = b64(claims.to_string().as_bytes());
    let unsigned = format!("{}.{claims_b64}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    // Key confusion: an HMAC "signed" with the public key, for verifiers that let the
    // header pick the algorithm.
    let hs256 = {
        let header = b64(br#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#);
        let signed = format!("{header}.{claims_b64}");
        let secret = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            k1().pair.public_key().as_ref(),
        );
        let tag = aws_lc_rs::hmac::sign(&secret, signed.as_bytes());
        format!("{signed}.{}", b64(tag.as_ref()))
    };
    for (id, token) in [
        // Signed by another key, under k1's id.
        (
            "wrong_key",
            k2().sign(
                &json!({"alg": "RS256", "kid": "k1"}),
                claims.to_string().as_bytes(),
            ),
        ),
        ("expired", k1().token(&expired)),
        ("alg_none", unsigned),
        ("hs256", hs256),
    ] {
        assert_eq!(app.deliver(id, token).await, 401, "{id}");
    }
    assert!(app.events().is_empty());
    // None of them used up its id: the real webhook with that id is handled.
    for id in ["wrong_key", "expired", "alg_none"] {
        assert_eq!(app.deliver(id, k1().token(&claims)).await, 200, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_400_and_the_server_lives_on() {
    let (_kinde, app) = setup(Duration::from_secs(30)).await;
    let header = b64(br#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#);
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("one_part", b"abc".to_vec()),
        ("two_parts", format!("{header}.e30").into_bytes()),
        ("four_parts", format!("{header}.e30.c2ln.c2ln").into_bytes()),
        ("bad_base64", format!("{header}.e3$$.c2ln").into_bytes()),
        (
            "header_not_json",
            format!("{}.e30.c2ln", b64(b"{alg")).into_bytes(),
        ),
        // Signed as it should be, but what is signed is not JSON.
        (
            "claims_not_json",
            k1().sign(&json!({"alg": "RS256", "kid": "k1"}), b"{\"type\":")
                .into(),
        ),
        (
            "no_type",
            k1().sign(&json!({"alg": "RS256", "kid": "k1"}), b"{\"data\":{}}")
                .into(),
        ),
        ("binary", vec![0xff, 0x00, b'.', 0x80, b'.', 0x01]),
        ("huge", vec![b'a'; 300 * 1024]),
        (
            "huge_token",
            format!("{header}.{}.c2ln", "A".repeat(300 * 1024)).into_bytes(),
        ),
    ];
    for (case, body) in bodies {
        assert_eq!(app.deliver(case, body).await, 400, "{case}");
    }
    assert!(app.events().is_empty());
    let good = k1().token(&plan_changed("customer_1"));
    assert_eq!(app.deliver("after", good).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_is_read_leniently() {
    let (_kinde, app) = setup(Duration::from_secs(30)).await;
    for (id, claims) in [
        // As real Kinde may send them: no iat, exp or iss.
        (
            "bare",
            json!({"type": "customer.agreement_cancelled", "data": {"customer_id": "customer_9"}}),
        ),
        ("no_data", json!({"type": "customer.payment_failed"})),
        (
            "odd_data",
            json!({"type": "customer.plan_assigned", "data": {
            "customer_id": 42, "agreement_id": "not an id", "org_code": null,
            "user_id": ["kp_1"], "plan_code": {"code": "pro"}, "something_new": true}}),
        ),
        (
            "data_not_an_object",
            json!({"type": "customer.plan_created", "data": "text"}),
        ),
    ] {
        assert_eq!(app.deliver(id, k1().token(&claims)).await, 200, "{id}");
    }
    let events = app.events();
    assert_eq!(events.len(), 4);
    assert_eq!(events[0].kind, EventKind::AgreementCancelled);
    assert_eq!(
        events[0].customer.as_ref().map(|c| c.as_str()),
        Some("customer_9")
    );
    assert_eq!(events[1].kind, EventKind::PaymentFailed);
    assert!(events[1].data.is_null());
    let odd = &events[2];
    assert!(odd.customer.is_none() && odd.agreement.is_none() && odd.org_code.is_none());
    assert!(odd.user_id.is_none() && odd.plan_code.is_none());
    assert_eq!(odd.data["something_new"], true);
    assert_eq!(
        events[3].kind,
        EventKind::Other("customer.plan_created".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_refetches_once_per_interval_even_in_a_burst() {
    let interval = Duration::from_millis(500);
    let (kinde, app) = setup(interval).await;
    assert_eq!(
        app.deliver("first", k1().token(&plan_changed("c1"))).await,
        200
    );
    assert_eq!(kinde.fetches(), 1);

    // Within the interval of that fetch: refused without fetching.
    assert_eq!(
        app.deliver("u1", k2().token(&plan_changed("c1"))).await,
        401
    );
    assert_eq!(kinde.fetches(), 1);

    // After it: one refetch, then refused.
    tokio::time::sleep(interval).await;
    assert_eq!(
        app.deliver("u2", k2().token(&plan_changed("c1"))).await,
        401
    );
    assert_eq!(kinde.fetches(), 2);
    assert_eq!(
        app.deliver("u3", k2().token(&plan_changed("c1"))).await,
        401
    );
    assert_eq!(kinde.fetches(), 2);

    // 50 at once, with a slow JWKS: at most one fetch among them.
    tokio::time::sleep(interval).await;
    kinde.delay_ms.store(200, Ordering::SeqCst);
    let app = Arc::new(app);
    let burst: Vec<_> = (0..50)
        .map(|i| {
            let app = Arc::clone(&app);
            tokio::spawn(async move {
                let claims = plan_changed(&format!("c{i}"));
                app.deliver(&format!("burst_{i}"), k2().token(&claims))
                    .await
            })
        })
        .collect();
    for delivery in burst {
        assert_eq!(delivery.await.expect("delivery"), 401);
    }
    assert_eq!(kinde.fetches(), 3, "one fetch for the whole burst");
    // Known keys never wait for the JWKS.
    assert_eq!(
        app.deliver("known", k1().token(&plan_changed("c1"))).await,
        200
    );
    assert_eq!(kinde.fetches(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_picked_up_by_the_refetch() {
    let interval = Duration::from_millis(300);
    let (kinde, app) = setup(interval).await;
    assert_eq!(
        app.deliver("before", k1().token(&plan_changed("c1"))).await,
        200
    );
    kinde.publish(&[k3()]);
    tokio::time::sleep(interval).await;
    assert_eq!(
        app.deliver("after", k3().token(&plan_changed("c1"))).await,
        200
    );
    assert_eq!(kinde.fetches(), 2);
    // The retired key is gone from the cache with the rotation.
    assert_eq!(
        app.deliver("retired", k1().token(&plan_changed("c1")))
            .await,
        401
    );
    assert_eq!(app.events().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_cannot_be_fetched_are_503_so_kinde_retries() {
    let interval = Duration::from_millis(200);
    let kinde = Kinde::start(&[k1()]).await;
    kinde.status.store(500, Ordering::SeqCst);
    let verifier = WebhookVerifier::builder(kinde.jwks(interval))
        .build()
        .expect("verifier");
    let app = App::start(verifier).await;
    let token = k1().token(&plan_changed("c1"));
    assert_eq!(app.deliver("m", token.clone()).await, 503);
    assert_eq!(
        app.deliver("m", token.clone()).await,
        503,
        "within the interval: not refetched"
    );
    assert_eq!(kinde.fetches(), 1);

    // Kinde's JWKS is back: the retry goes through.
    kinde.status.store(200, Ordering::SeqCst);
    tokio::time::sleep(interval).await;
    assert_eq!(app.deliver("m", token).await, 200);
    assert_eq!(app.events().len(), 1);

    // Nothing listening at all.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = closed.local_addr().expect("address").port();
    drop(closed);
    let domain = Domain::parse(&format!("http://127.0.0.1:{port}")).expect("domain");
    let app = App::start(WebhookVerifier::new(domain).expect("verifier")).await;
    assert_eq!(app.deliver("m", k1().token(&plan_changed("c1"))).await, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_warn_and_redeliveries_do_not() {
    logs::recorded();
    let (_kinde, app) = setup(Duration::from_secs(30)).await;
    let token = k1().token(&plan_changed("c_logs"));
    for _ in 0..3 {
        assert_eq!(app.deliver("log_redelivered", token.clone()).await, 200);
    }
    let forged = k2().sign(
        &json!({"alg": "RS256", "kid": "k1"}),
        plan_changed("c_logs").to_string().as_bytes(),
    );
    assert_eq!(app.deliver("log_forged", forged).await, 401);
    assert_eq!(logs::count(&["WARN", "log_redelivered"]), 0);
    let redeliveries = logs::count(&["DEBUG kinde_meter", "log_redelivered", "already handled"]);
    assert_eq!(redeliveries, 2);
    let refusal = [
        "WARN kinde_meter",
        "log_forged",
        "refused a Kinde webhook",
        "signature does not verify with key \"k1\"",
    ];
    assert_eq!(logs::count(&refusal), 1, "{:?}", logs::recorded());
}
