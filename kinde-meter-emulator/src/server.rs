//! The HTTP side: a dedicated thread with its own current-thread runtime, the
//! accept loop (which can go down and come back on the same port), and the
//! request handlers.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc as std_mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::{Method, Request};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::exchange::{CloseConnection, HttpResponse, MAX_BODY, Shared, read_body, to_response};
use crate::ledger::{Answer, ReadRoute, ReceivedRequest, RequestOutcome};

pub(crate) const TOKEN_PATH: &str = "/oauth2/token";
pub(crate) const METER_PATH: &str = "/api/v1/billing/meter_usage";
pub(crate) const AGREEMENTS_PATH: &str = "/api/v1/billing/agreements";
pub(crate) const ORGANIZATION_PATH: &str = "/api/v1/organization";
pub(crate) const USER_PATH: &str = "/api/v1/user";
pub(crate) const JWKS_PATH: &str = "/.well-known/jwks";
/// How long a caller waits for the server thread to act on a command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Orders for the server thread.
#[derive(Debug)]
pub(crate) enum Command {
    GoDown(std_mpsc::Sender<()>),
    ComeUp(std_mpsc::Sender<io::Result<()>>),
    DownFor(Duration, std_mpsc::Sender<()>),
    /// Sent by the timer of `DownFor`; ignored if anything happened since.
    AutoUp(u64),
    Shutdown,
}

/// The running server thread.
#[derive(Debug)]
pub(crate) struct ServerHandle {
    pub(crate) addr: SocketAddr,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) thread: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// Sends a command and waits (bounded) for its reply.
    pub(crate) fn request<T>(
        &self,
        make: impl FnOnce(std_mpsc::Sender<T>) -> Command,
    ) -> Option<T> {
        let (tx, rx) = std_mpsc::channel();
        self.commands.send(make(tx)).ok()?;
        rx.recv_timeout(COMMAND_TIMEOUT).ok()
    }

    /// Stops the server and joins its thread, waiting at most about two seconds.
    pub(crate) fn stop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let deadline = Instant::now() + COMMAND_TIMEOUT;
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// Starts the server thread and waits for it to be listening on `addr`.
pub(crate) fn spawn(shared: Arc<Shared>, addr: SocketAddr) -> io::Result<ServerHandle> {
    let (commands, rx) = mpsc::unbounded_channel();
    let weak = commands.downgrade();
    let (ready_tx, ready_rx) = std_mpsc::channel::<io::Result<SocketAddr>>();
    let thread = std::thread::Builder::new()
        .name("kinde-meter-emulator".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(run(shared, addr, rx, weak, ready_tx));
            runtime.shutdown_timeout(Duration::from_millis(200));
        })?;
    let mut handle = ServerHandle {
        addr,
        commands,
        thread: Some(thread),
    };
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(bound)) => {
            handle.addr = bound;
            Ok(handle)
        }
        Ok(Err(e)) => {
            handle.stop();
            Err(e)
        }
        Err(_) => {
            handle.stop();
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the emulator thread did not start",
            ))
        }
    }
}

/// What woke the accept loop.
enum Event {
    Command(Option<Command>),
    Accepted(io::Result<(TcpStream, SocketAddr)>),
    Reaped,
}

async fn accept(listener: &Option<TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn run(
    shared: Arc<Shared>,
    addr: SocketAddr,
    mut commands: mpsc::UnboundedReceiver<Command>,
    weak: mpsc::WeakUnboundedSender<Command>,
    ready: std_mpsc::Sender<io::Result<SocketAddr>>,
) {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    shared.lock().audience = format!("http://{addr}/api");
    shared.up.store(true, Ordering::SeqCst);
    if let Some(outbox) = shared.take_outbox() {
        tokio::spawn(crate::webhook_delivery::run(shared.clone(), outbox));
    }
    let mut listener = Some(listener);
    let _ = ready.send(Ok(addr));

    let mut connections = JoinSet::new();
    // Bumped on every go-down/come-up so a stale `AutoUp` is ignored.
    let mut generation: u64 = 0;
    loop {
        let event = tokio::select! {
            command = commands.recv() => Event::Command(command),
            accepted = accept(&listener) => Event::Accepted(accepted),
            Some(_) = connections.join_next(), if !connections.is_empty() => Event::Reaped,
        };
        match event {
            Event::Reaped => {}
            Event::Accepted(Ok((stream, _))) => {
                let _ = stream.set_nodelay(true);
                connections.spawn(serve_connection(shared.clone(), stream));
            }
            Event::Accepted(Err(_)) => {
                // Out of descriptors or a connection reset while queued: back off briefly.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Event::Command(None | Some(Command::Shutdown)) => break,
            Event::Command(Some(Command::GoDown(reply))) => {
                generation += 1;
                go_down(&shared, &mut listener, &mut connections).await;
                let _ = reply.send(());
            }
            Event::Command(Some(Command::DownFor(d, reply))) => {
                generation += 1;
                go_down(&shared, &mut listener, &mut connections).await;
                let token = generation;
                let weak = weak.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    if let Some(tx) = weak.upgrade() {
                        let _ = tx.send(Command::AutoUp(token));
                    }
                });
                let _ = reply.send(());
            }
            Event::Command(Some(Command::AutoUp(token))) => {
                if token == generation && listener.is_none() {
                    generation += 1;
                    // Nothing to report to: if the port was taken meanwhile, it stays down.
                    let _ = come_up(&shared, addr, &mut listener).await;
                }
            }
            Event::Command(Some(Command::ComeUp(reply))) => {
                generation += 1;
                let _ = reply.send(come_up(&shared, addr, &mut listener).await);
            }
        }
    }
    shared.up.store(false, Ordering::SeqCst);
    drop(listener);
    connections.shutdown().await;
}

/// Closes the listener and every open connection.
async fn go_down(
    shared: &Shared,
    listener: &mut Option<TcpListener>,
    connections: &mut JoinSet<()>,
) {
    shared.up.store(false, Ordering::SeqCst);
    *listener = None;
    connections.shutdown().await;
}

async fn come_up(
    shared: &Shared,
    addr: SocketAddr,
    listener: &mut Option<TcpListener>,
) -> io::Result<()> {
    if listener.is_none() {
        // tokio sets SO_REUSEADDR on Unix, so the port is free again at once.
        *listener = Some(TcpListener::bind(addr).await?);
    }
    shared.up.store(true, Ordering::SeqCst);
    Ok(())
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream) {
    let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Returned by the service to make hyper close the connection without answering.
async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<HttpResponse, CloseConnection> {
    let arrived_at = Instant::now();
    let post = req.method() == Method::POST;
    let get = req.method() == Method::GET;
    let path = req.uri().path();
    if crate::control::is_control_path(path) {
        return Ok(crate::control::handle(&shared, req).await);
    }
    match path {
        TOKEN_PATH if post => token(&shared, req, arrived_at).await,
        METER_PATH if post => meter(shared, req, arrived_at).await,
        AGREEMENTS_PATH if get => read(&shared, req, arrived_at, ReadRoute::Agreements).await,
        ORGANIZATION_PATH if get => read(&shared, req, arrived_at, ReadRoute::Organization).await,
        USER_PATH if get => read(&shared, req, arrived_at, ReadRoute::User).await,
        JWKS_PATH if get => jwks(&shared, req, arrived_at).await,
        _ => not_found(&shared, req, arrived_at).await,
    }
}

fn header_list(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn header_str(headers: &hyper::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

fn to_result(answer: Answer) -> Result<HttpResponse, CloseConnection> {
    match answer {
        Answer::Respond(reply) => Ok(to_response(reply)),
        Answer::Drop => Err(CloseConnection),
    }
}

async fn token(
    shared: &Shared,
    req: Request<Incoming>,
    arrived_at: Instant,
) -> Result<HttpResponse, CloseConnection> {
    let (parts, body) = req.into_parts();
    let body = read_body(body).await?;
    let reply =
        shared
            .lock()
            .token_request(header_list(&parts.headers), body.as_deref(), arrived_at);
    Ok(to_response(reply))
}

fn log_entry(
    parts: &hyper::http::request::Parts,
    body: &[u8],
    arrived_at: Instant,
) -> ReceivedRequest {
    ReceivedRequest {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(hide_secrets),
        headers: header_list(&parts.headers),
        // A token request sent to a wrong path still carries the client secret.
        body: match std::str::from_utf8(body) {
            Ok(text) if text.contains("client_secret=") => hide_secrets(text).into_bytes(),
            _ => body.to_vec(),
        },
        arrived_at,
        responded_at: None,
        status: None,
        outcome: RequestOutcome::Pending,
        error_codes: Vec::new(),
        rate_limit_reset: None,
        retry_after: None,
    }
}

/// `text` with the values of form or query parameters that carry secrets replaced.
fn hide_secrets(text: &str) -> String {
    text.split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if matches!(name, "client_secret" | "access_token" | "token") => {
                format!("{name}=<hidden>")
            }
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

async fn not_found(
    shared: &Shared,
    req: Request<Incoming>,
    arrived_at: Instant,
) -> Result<HttpResponse, CloseConnection> {
    let (parts, body) = req.into_parts();
    let body = read_body(body).await?.unwrap_or_default();
    let mut state = shared.lock();
    let idx = state.log_request(log_entry(&parts, &body, arrived_at));
    to_result(state.not_found(idx, Instant::now()))
}

async fn read(
    shared: &Shared,
    req: Request<Incoming>,
    arrived_at: Instant,
    route: ReadRoute,
) -> Result<HttpResponse, CloseConnection> {
    let (parts, body) = req.into_parts();
    let body = read_body(body).await?.unwrap_or_default();
    let authorization = header_str(&parts.headers, "authorization");
    let mut state = shared.lock();
    let idx = state.log_request(log_entry(&parts, &body, arrived_at));
    to_result(state.read(
        idx,
        route,
        authorization.as_deref(),
        parts.uri.query(),
        Instant::now(),
    ))
}

/// `GET /.well-known/jwks`: the webhook signing key, without authentication.
async fn jwks(
    shared: &Shared,
    req: Request<Incoming>,
    arrived_at: Instant,
) -> Result<HttpResponse, CloseConnection> {
    let (parts, body) = req.into_parts();
    let body = read_body(body).await?.unwrap_or_default();
    // Made outside the state's lock: generating the key takes a moment.
    let result = shared.signer().map(crate::WebhookSigner::jwks_json);
    let mut state = shared.lock();
    let idx = state.log_request(log_entry(&parts, &body, arrived_at));
    let result = result.map_err(|e| (500, crate::codes::INTERNAL_ERROR, e.to_string()));
    to_result(state.read_reply(idx, result, Instant::now()))
}

/// Counts a meter request as in flight for as long as it lives.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: Arc<Shared>) -> Self {
        {
            let mut state = shared.lock();
            state.in_flight += 1;
            state.max_in_flight = state.max_in_flight.max(state.in_flight);
        }
        InFlight(shared)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
    }
}

async fn meter(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    arrived_at: Instant,
) -> Result<HttpResponse, CloseConnection> {
    let in_flight = InFlight::enter(shared.clone());
    let (parts, body) = req.into_parts();
    let body = read_body(body).await?;
    let now = Instant::now();
    let (idx, draw) = {
        let mut state = shared.lock();
        let idx = state.log_request(log_entry(
            &parts,
            body.as_deref().unwrap_or_default(),
            arrived_at,
        ));
        if body.is_none() {
            return to_result(state.too_large(idx, MAX_BODY, now));
        }
        if let Some(answer) = state.unavailable(idx, now) {
            return to_result(answer);
        }
        let authorization = header_str(&parts.headers, "authorization");
        match state.admit(idx, authorization.as_deref(), now) {
            Ok(draw) => (idx, draw),
            Err(answer) => return to_result(answer),
        }
    };
    // A reset while this request waits must not let it write into the new state.
    let epoch = shared.lock().epoch();
    let body = body.unwrap_or_default();
    let content_type = header_str(&parts.headers, "content-type");
    let idempotency_key = header_str(&parts.headers, "idempotency-key");

    // Latency and apply run detached, so a client that gives up (or the
    // emulator going down) never cancels an apply that has started.
    let (tx, rx) = oneshot::channel();
    let detached = shared.clone();
    tokio::spawn(async move {
        let _in_flight = in_flight;
        if !draw.latency.is_zero() {
            tokio::time::sleep(draw.latency).await;
        }
        let answer = {
            let mut state = detached.lock();
            if state.epoch() == epoch {
                state.decide(
                    idx,
                    draw,
                    content_type.as_deref(),
                    &body,
                    idempotency_key,
                    Instant::now(),
                )
            } else {
                crate::ledger::State::reset_meanwhile()
            }
        };
        if tx.send(answer).is_err() {
            let mut state = detached.lock();
            if state.epoch() == epoch {
                state.abandon(idx);
            }
        }
    });
    match rx.await {
        Ok(answer) => to_result(answer),
        Err(_) => Err(CloseConnection),
    }
}
