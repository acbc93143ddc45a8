//! The verifier and the handler end to end, with keys generated here and fixed JWKS.
//! The fetching, rotation and refetch limits are tested over HTTP in `tests/webhooks.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use http::{Request, StatusCode};
use serde_json::json;
use tower_service::Service;

use super::base64url::encode;
use super::claims::unix_now;
use super::*;

/// A refusal case: its name, the token, and the refusal expected.
type Case = (&'static str, String, fn(&WebhookError) -> bool);

/// A signing key and its id.
struct Signer {
    kid: &'static str,
    pair: KeyPair,
}

/// Generated once: RSA key generation is slow in unoptimized builds.
static KEYS: LazyLock<[Signer; 2]> = LazyLock::new(|| {
    ["k1", "k2"].map(|kid| Signer {
        kid,
        pair: KeyPair::generate(KeySize::Rsa2048).expect("key generation"),
    })
});

/// `(n, e)` of an RFC 8017 `RSAPublicKey` (`SEQUENCE { INTEGER n, INTEGER e }`).
fn components(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    fn element(der: &[u8]) -> (&[u8], &[u8]) {
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
    let (sequence, _) = element(der);
    let (n, rest) = element(sequence);
    let (e, _) = element(rest);
    let strip = |b: &[u8]| b.iter().skip_while(|&&x| x == 0).copied().collect();
    (strip(n), strip(e))
}

impl Signer {
    fn jwk(&self) -> serde_json::Value {
        let (n, e) = components(self.pair.public_key().as_ref());
        json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid, "n": encode(&n), "e": encode(&e)})
    }

    fn sign(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let signed = format!(
            "{}.{}",
            encode(header.to_string().as_bytes()),
            encode(claims.to_string().as_bytes())
        );
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signed.as_bytes(),
                &mut signature,
            )
            .expect("signs");
        format!("{signed}.{}", encode(&signature))
    }

    fn token(&self, claims: &serde_json::Value) -> String {
        self.sign(
            &json!({"alg": "RS256", "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }
}

fn good() -> &'static Signer {
    &KEYS[0]
}

fn other() -> &'static Signer {
    &KEYS[1]
}

fn claims() -> serde_json::Value {
    let now = unix_now();
    json!({
        "type": "customer.plan_changed",
        "event_id": "event_1",
        "event_timestamp": "2026-01-02T03:04:05Z",
        "timestamp": "2026-01-02T03:04:06Z",
        "source": "admin",
        "iat": now,
        "exp": now + 300,
        "data": {"customer_id": "customer_1", "agreement_id": "agreement_2", "plan_code": "pro"},
    })
}

fn verifier() -> WebhookVerifier {
    let jwks = json!({"keys": [good().jwk()]}).to_string();
    WebhookVerifier::with_keys(jwks.as_bytes()).expect("verifier")
}

#[tokio::test]
async fn a_good_token_verifies_and_a_redelivery_is_a_replay() {
    let verifier = verifier();
    let token = good().token(&claims());
    let event = verifier
        .verify(Some("msg_1"), token.as_bytes())
        .await
        .expect("verifies");
    assert_eq!(event.kind, EventKind::PlanChanged);
    assert_eq!(
        event.customer.as_ref().map(|c| c.as_str()),
        Some("customer_1")
    );
    assert_eq!(
        event.agreement.as_ref().map(|a| a.as_str()),
        Some("agreement_2")
    );
    let again = verifier
        .clone()
        .verify(Some("msg_1"), token.as_bytes())
        .await;
    let err = again.expect_err("replay");
    assert!(err.is_replay(), "{err}");
    assert_eq!(err.status(), StatusCode::OK);
    // Without a `webhook-id`, the event id tells the redelivery.
    let token = good().token(&json!({"type": "x", "event_id": "e9"}));
    verifier
        .verify(None, token.as_bytes())
        .await
        .expect("first");
    let twice = verifier.verify(None, token.as_bytes()).await;
    assert!(twice.expect_err("replay").is_replay());
}

#[tokio::test]
async fn refusals() {
    let verifier = verifier();
    let now = unix_now();
    let mut expired = claims();
    expired["exp"] = json!(now - 61);
    let mut future = claims();
    future["nbf"] = json!(now + 3600);
    let unsigned = format!(
        "{}.{}.",
        encode(br#"{"alg":"none","typ":"JWT"}"#),
        encode(claims().to_string().as_bytes())
    );
    let hs256 = {
        let token = good().token(&claims());
        let (_, rest) = token.split_once('.').expect("dots");
        format!(
            "{}.{rest}",
            encode(br#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#)
        )
    };
    let tampered = {
        let token = good().token(&claims());
        let parts: Vec<_> = token.split('.').collect();
        let mut changed = claims();
        changed["data"]["customer_id"] = json!("customer_evil");
        format!(
            "{}.{}.{}",
            parts[0],
            encode(changed.to_string().as_bytes()),
            parts[2]
        )
    };
    let cases: [Case; 7] = [
        (
            "wrong key",
            other().sign(&json!({"alg": "RS256", "kid": "k1"}), &claims()),
            |e| matches!(e, WebhookError::BadSignature { .. }),
        ),
        ("tampered", tampered, |e| {
            matches!(e, WebhookError::BadSignature { .. })
        }),
        ("unknown kid", other().token(&claims()), |e| {
            matches!(e, WebhookError::UnknownKeyId { .. })
        }),
        ("expired", good().token(&expired), |e| {
            matches!(e, WebhookError::Expired { .. })
        }),
        ("not yet valid", good().token(&future), |e| {
            matches!(e, WebhookError::NotYetValid { claim: "nbf", .. })
        }),
        (
            "alg none",
            unsigned,
            |e| matches!(e, WebhookError::UnsupportedAlgorithm { alg } if alg == "none"),
        ),
        (
            "hs256",
            hs256,
            |e| matches!(e, WebhookError::UnsupportedAlgorithm { alg } if alg == "HS256"),
        ),
    ];
    for (case, token, expected) in cases {
        let id = case.replace(' ', "_");
        let err = verifier
            .verify(Some(&id), token.as_bytes())
            .await
            .expect_err(case);
        assert!(expected(&err), "{case}: {err}");
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED, "{case}");
    }
    // Refused tokens did not use up their ids: a good token with the same id verifies.
    for case in ["wrong_key", "expired", "alg_none"] {
        verifier
            .verify(Some(case), good().token(&claims()).as_bytes())
            .await
            .expect(case);
    }
}

#[tokio::test]
async fn a_token_without_kid_needs_a_single_key() {
    let no_kid = |s: &Signer| s.sign(&json!({"alg": "RS256"}), &claims());
    verifier()
        .verify(None, no_kid(good()).as_bytes())
        .await
        .expect("one key");
    let both = json!({"keys": [good().jwk(), other().jwk()]}).to_string();
    let two = WebhookVerifier::with_keys(both.as_bytes()).expect("verifier");
    let err = two
        .verify(None, no_kid(good()).as_bytes())
        .await
        .expect_err("ambiguous");
    assert_eq!(err, WebhookError::MissingKeyId { keys: 2 });
    two.verify(None, other().token(&claims()).as_bytes())
        .await
        .expect("kid k2");
}

#[test]
fn options_out_of_range_are_refused() {
    let jwks =
        || Jwks::from_json(json!({"keys": [good().jwk()]}).to_string().as_bytes()).expect("jwks");
    let err = WebhookVerifier::builder(jwks())
        .replay_capacity(0)
        .build()
        .expect_err("zero");
    assert!(
        err.to_string()
            .contains("`replay_capacity` must be greater than zero"),
        "{err}"
    );
    let err = WebhookVerifier::builder(jwks())
        .replay_window(std::time::Duration::ZERO)
        .build()
        .expect_err("zero");
    assert!(err.to_string().contains("`replay_window`"), "{err}");
}

fn post(id: Option<&str>, body: impl Into<String>) -> Request<String> {
    let mut request = Request::post("/kinde/webhooks").header("content-type", "application/jwt");
    if let Some(id) = id {
        request = request.header("webhook-id", id);
    }
    request.body(body.into()).expect("request")
}

async fn status(handler: &mut WebhookHandler, request: Request<String>) -> StatusCode {
    handler
        .call(request)
        .await
        .map(|r| r.status())
        .unwrap_or_else(|never| match never {})
}

#[tokio::test]
async fn the_handler_answers_for_each_outcome() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let mut handler = WebhookHandler::new(verifier()).on_event(move |event| {
        assert_eq!(event.webhook_id.as_deref(), Some("msg_1"));
        counted.fetch_add(1, Ordering::SeqCst);
    });
    let token = good().token(&claims());
    assert_eq!(
        status(&mut handler, post(Some("msg_1"), token.clone())).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&mut handler.clone(), post(Some("msg_1"), token)).await,
        StatusCode::OK
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a redelivery is not passed on"
    );
    let mut expired = claims();
    expired["exp"] = json!(unix_now() - 3600);
    for (request, expected) in [
        (
            post(Some("m2"), good().token(&expired)),
            StatusCode::UNAUTHORIZED,
        ),
        (
            post(Some("m3"), other().token(&claims())),
            StatusCode::UNAUTHORIZED,
        ),
        (post(Some("m4"), "not a token"), StatusCode::BAD_REQUEST),
        (post(Some("m5"), "a.b.c"), StatusCode::BAD_REQUEST),
        (
            post(Some("m6"), "x".repeat(MAX_BODY + 1)),
            StatusCode::BAD_REQUEST,
        ),
        (
            post(Some("bad id"), good().token(&claims())),
            StatusCode::BAD_REQUEST,
        ),
        (
            Request::get("/kinde/webhooks")
                .body(String::new())
                .expect("get"),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ] {
        assert_eq!(status(&mut handler, request).await, expected);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_panicking_callback_gets_the_webhook_delivered_again() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let mut handler = WebhookHandler::new(verifier()).on_event(move |_| {
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("the first attempt fails");
        }
    });
    let token = good().token(&claims());
    let first = status(&mut handler, post(Some("msg_p"), token.clone())).await;
    assert_eq!(first, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        status(&mut handler, post(Some("msg_p"), token.clone())).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&mut handler, post(Some("msg_p"), token)).await,
        StatusCode::OK
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
