//! What the emulator's request handlers share: the state behind the server, reading a
//! request body, writing a reply. Both the Kinde endpoints (`server`) and the control API
//! (`control`) use it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

use crate::ledger::{Reply, State};

/// Largest request body accepted (413 beyond).
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// State shared by the server thread and the [`Emulator`](crate::Emulator) handle.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) up: AtomicBool,
}

impl Shared {
    pub(crate) fn new(state: State) -> Self {
        Shared {
            state: Mutex::new(state),
            up: AtomicBool::new(false),
        }
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
