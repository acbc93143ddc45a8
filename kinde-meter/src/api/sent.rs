//! Whether a failed request was ever sent: the line between *not applied* (safe to
//! resend) and *ambiguous* (a resent delta may count twice).
//!
//! reqwest cannot say: a request timeout that fires while connecting or during the TLS
//! handshake (the usual case at shutdown, where each request's timeout is clipped to the
//! time left, below the connect timeout) looks exactly like one that fires while waiting
//! for Kinde's answer. So the request body says it instead. hyper asks for a body only on
//! an established connection (TCP and TLS done), while it writes the request; a body
//! never asked for never left this process, and Kinde cannot apply a request whose body
//! it never received.
//!
//! Asking the body is a race, since the connection may run on another thread: after a
//! failure the client *withholds* the body in the same atomic step that reads whether it
//! was sent, so a connection that gets to it late finds it refusing, and the verdict
//! "not sent" stays true.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering::AcqRel, Ordering::Acquire};
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};

use super::error::BoxError;

const UNREAD: u8 = 0;
const READ: u8 = 1;
const WITHHELD: u8 = 2;

/// Wraps a request body; the [`Sent`] tells whether it was ever read.
pub(crate) fn watch(body: Vec<u8>) -> (reqwest::Body, Sent) {
    let state = Arc::new(AtomicU8::new(UNREAD));
    let watched = Watched {
        inner: reqwest::Body::from(body),
        state: Arc::clone(&state),
    };
    (reqwest::Body::wrap(watched), Sent(state))
}

/// The sending side's view of a [`watch`]ed body.
pub(crate) struct Sent(Arc<AtomicU8>);

impl Sent {
    /// For a request without a body, which cannot tell: it may have been sent.
    pub(crate) fn assumed() -> Self {
        Sent(Arc::new(AtomicU8::new(READ)))
    }

    /// Whether any of the body may have been sent. When not, the body is withheld from
    /// then on, so it never will be.
    pub(crate) fn may_have_been_sent(&self) -> bool {
        match self.0.compare_exchange(UNREAD, WITHHELD, AcqRel, Acquire) {
            Ok(_) => false,
            Err(state) => state == READ,
        }
    }
}

struct Watched {
    inner: reqwest::Body,
    state: Arc<AtomicU8>,
}

/// Refused to a connection that asks for the body after the request was given up on.
#[derive(Debug)]
struct Withheld;

impl std::fmt::Display for Withheld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request was given up on before its body was sent")
    }
}

impl std::error::Error for Withheld {}

impl Body for Watched {
    type Data = <reqwest::Body as Body>::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Err(WITHHELD) = this.state.compare_exchange(UNREAD, READ, AcqRel, Acquire) {
            return Poll::Ready(Some(Err(Box::new(Withheld))));
        }
        Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map(|frame| frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // Exact, so the request keeps its `Content-Length` rather than going chunked.
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the connection gets when it asks for the body: data (`true`) or an error.
    fn ask(body: &mut reqwest::Body) -> Option<bool> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(body).poll_frame(&mut cx) {
            Poll::Ready(Some(frame)) => Some(frame.is_ok()),
            _ => None,
        }
    }

    #[test]
    fn a_body_never_read_is_withheld_and_stays_unsent() {
        let (mut body, sent) = watch(b"{}".to_vec());
        assert_eq!(body.size_hint().exact(), Some(2));
        assert!(!sent.may_have_been_sent());
        assert_eq!(ask(&mut body), Some(false), "refused once withheld");
        assert!(!sent.may_have_been_sent(), "still not sent");
    }

    #[test]
    fn a_body_read_may_have_been_sent() {
        let (mut body, sent) = watch(b"{}".to_vec());
        assert_eq!(ask(&mut body), Some(true));
        assert!(sent.may_have_been_sent());
        assert!(sent.may_have_been_sent());
    }
}
