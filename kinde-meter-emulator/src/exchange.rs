//! What the emulator's request handlers share: the state behind the server, reading a
//! request body, writing a reply. Both the Kinde endpoints (`server`) and the control API
//! (`control`) use it.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

use crate::ledger::{Reply, State};
use crate::webhook::{Outgoing, WebhookSigner};

/// Largest request body accepted (413 beyond).
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// State shared by the server thread and the [`Emulator`](crate::Emulator) handle.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) up: AtomicBool,
    /// The webhook signing key, made on first use (an RSA key takes a while).
    signer: OnceLock<WebhookSigner>,
    /// The receiving end of the webhook outbox, taken by the server thread.
    outbox: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Outgoing>>>,
}

impl Shared {
    pub(crate) fn new(mut state: State) -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        state.outbox = Some(tx);
        Shared {
            state: Mutex::new(state),
            up: AtomicBool::new(false),
            signer: OnceLock::new(),
            outbox: Mutex::new(Some(rx)),
        }
    }

    /// The webhook signing key, generated on the first call.
    pub(crate) fn signer(&self) -> io::Result<&WebhookSigner> {
        if let Some(signer) = self.signer.get() {
            return Ok(signer);
        }
        let fresh = WebhookSigner::generate()?;
        // Two first calls at once: one key wins, both callers get it.
        let _ = self.signer.set(fresh);
        self.signer
            .get()
            .ok_or_else(|| io::Error::other("the webhook signing key is missing"))
    }

    /// Takes the outbox's receiving end (once).
    pub(crate) fn take_outbox(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Outgoing>> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Locks the state, recovering from poisoning (a panicking test thread
    /// must not take the emulator down with it).
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
pub(crate) struct CloseConnection;

impl std::fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection closed on purpose by the emulator")
    }
}

impl std::error::Error for CloseConnection {}

pub(crate) type HttpResponse = Response<Full<Bytes>>;

/// The body, `Ok(None)` when over the limit, or `Err` when the client went away.
pub(crate) async fn read_body(body: Incoming) -> Result<Option<Bytes>, CloseConnection> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(Some(collected.to_bytes())),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Ok(None),
        Err(_) => Err(CloseConnection),
    }
}

pub(crate) fn to_response(reply: Reply) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    for (name, value) in reply.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    response
}
