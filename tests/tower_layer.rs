//! `AgreementLayer` over real HTTP: an async resolver (a lookup in the app's own store),
//! requests it cannot resolve passed through unmetered or rejected, and the usage of each
//! request billed to its own customer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::get;
use kinde_meter::tower::{AgreementLayer, MissingAgreement};
use kinde_meter::{AgreementId, meter};
use kinde_meter_emulator::Emulator;
use kinde_meter_workspace::reporter::fast_config;

#[meter(feature = "tower_searches")]
async fn search() -> &'static str {
    tokio::task::yield_now().await;
    "results"
}

#[meter(feature = "tower_admin")]
async fn admin() -> &'static str {
    "admin"
}

#[meter(feature = "tower_stream_chunks")]
fn chunk(i: u8) -> bytes::Bytes {
    bytes::Bytes::from(vec![b'a' + i])
}

/// A streaming response body that bills each chunk as the server polls it, after the
/// handler has returned.
struct MeteredStream(u8);

impl http_body::Body for MeteredStream {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.0 == 3 {
            return std::task::Poll::Ready(None);
        }
        self.0 += 1;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk(self.0)))))
    }
}

async fn stream() -> axum::body::Body {
    axum::body::Body::new(MeteredStream(0))
}

/// Users and their agreements, as an application keeps them.
fn store() -> Arc<HashMap<String, AgreementId>> {
    Arc::new(HashMap::from([
        ("ada".to_owned(), "agreement_ada".parse().expect("id")),
        ("grace".to_owned(), "agreement_grace".parse().expect("id")),
    ]))
}

fn app() -> Router {
    let lookup = |store: Arc<HashMap<String, AgreementId>>| {
        move |head: &Parts| {
            let user = head
                .headers
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let store = Arc::clone(&store);
            async move {
                // A lookup that really suspends, like a database query.
                tokio::time::sleep(Duration::from_millis(1)).await;
                store.get(&user?).cloned()
            }
        }
    };
    Router::new()
        .route("/search", get(search))
        .route("/stream", get(stream))
        .layer(AgreementLayer::from_async(lookup(store())))
        .merge(
            Router::new().route("/admin", get(admin)).layer(
                AgreementLayer::from_async(lookup(store()))
                    .on_missing(MissingAgreement::Reject(StatusCode::FORBIDDEN)),
            ),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_resolver_scopes_each_request_and_the_missing_policy_applies() {
    let emulator = Emulator::start().expect("emulator");
    let guard = kinde_meter::init(fast_config(&emulator)).expect("init");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, app()).await });
    let client = reqwest::Client::new();
    let get = |path: &str, user: Option<&str>| {
        let mut request = client.get(format!("{base}{path}"));
        if let Some(user) = user {
            request = request.header("x-user", user);
        }
        request.send()
    };

    // Concurrent requests for two customers.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..30 {
        let user = if i % 3 == 0 { "grace" } else { "ada" };
        let request = client.get(format!("{base}/search")).header("x-user", user);
        calls.spawn(async move { request.send().await.expect("request").status() });
    }
    for status in calls.join_all().await {
        assert_eq!(status, 200);
    }
    let unattributed_before = kinde_meter::stats().unattributed;
    // Unknown user on a pass-through route: served, counted as unattributed, not billed.
    assert_eq!(
        get("/search", Some("mallory"))
            .await
            .expect("request")
            .status(),
        200
    );
    assert_eq!(get("/search", None).await.expect("request").status(), 200);
    assert_eq!(kinde_meter::stats().unattributed - unattributed_before, 2);
    // Unknown user on a rejecting route: 403, the handler never runs.
    assert_eq!(
        get("/admin", Some("mallory"))
            .await
            .expect("request")
            .status(),
        403
    );
    assert_eq!(
        get("/admin", Some("ada")).await.expect("request").status(),
        200
    );

    // A streaming body is polled after the handler returned, still in the request's scope.
    let streamed = get("/stream", Some("grace")).await.expect("request");
    assert_eq!(streamed.text().await.expect("body"), "bcd");

    let report = guard.shutdown(Duration::from_secs(10)).await;
    assert!(report.is_complete(), "{report}");
    server.abort();
    assert_eq!(
        emulator.total("agreement_grace", "tower_stream_chunks"),
        3u64
    );
    assert_eq!(emulator.total("agreement_ada", "tower_searches"), 20u64);
    assert_eq!(emulator.total("agreement_grace", "tower_searches"), 10u64);
    assert_eq!(emulator.total("agreement_ada", "tower_admin"), 1u64);
    assert_eq!(emulator.ledger().len(), 4, "{:?}", emulator.ledger());
}

#[meter(feature = "tower_lookups")]
async fn lookup() -> &'static str {
    "found"
}

/// The synchronous resolver's paths that `examples/axum.rs` (which rejects) leaves out:
/// a known user is billed to its agreement, a request without one passes through
/// unmetered.
#[tokio::test(flavor = "current_thread")]
async fn a_sync_resolver_passes_requests_without_an_agreement_through() {
    // The server runs on this thread (a current-thread runtime), so the capture sees it.
    let usage = kinde_meter::testing::capture();
    let store = store();
    let app = Router::new()
        .route("/lookup", get(lookup))
        .layer(AgreementLayer::new(move |head: &Parts| {
            store
                .get(head.headers.get("x-user")?.to_str().ok()?)
                .cloned()
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/lookup", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    for user in [Some("ada"), None, Some("mallory")] {
        let mut request = client.get(&url);
        if let Some(user) = user {
            request = request.header("x-user", user);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), 200, "{user:?}");
        assert_eq!(response.text().await.expect("body"), "found");
    }
    server.abort();

    assert_eq!(usage.total("agreement_ada", "tower_lookups"), 1);
    assert_eq!(usage.unattributed("tower_lookups"), 2);
    assert_eq!(
        usage.usage().len(),
        1,
        "billed to no one else: {:?}",
        usage.usage()
    );
}
