//! [`WebhookHandler`]: the verifier as a tower `Service` over HTTP requests, with the
//! answers Kinde's retries need, and the actions taken on a verified event.

use std::convert::Infallible;
use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Buf;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use super::error::WebhookError;
use super::event::WebhookEvent;
use super::verifier::{MAX_BODY, WebhookVerifier};

type Callback = Arc<dyn Fn(&WebhookEvent) + Send + Sync + 'static>;

/// Receives Kinde's billing webhooks: a tower [`Service`] of HTTP requests, to mount at
/// the URL registered with Kinde.
///
/// It reads the body (at most 256 KiB), [verifies](WebhookVerifier::verify) it, and
/// answers:
///
/// | answer | when |
/// | --- | --- |
/// | `200` | verified and handled, or a redelivery of a webhook already handled (so Kinde stops retrying) |
/// | `400` | the body is not a webhook (or too large) |
/// | `401` | refused: algorithm, key, signature, expiry |
/// | `405` | not a `POST` |
/// | `500` | the event callback panicked: the webhook is forgotten, so Kinde's retry is handled again |
/// | `503` | the signing keys could not be fetched (so Kinde retries) |
///
/// On a verified event whose [`kind`](super::EventKind::changes_billing) changes billing,
/// it first tells the reporter (which refreshes what it knows of the customer), then calls
/// the [`on_event`](Self::on_event) callback, if any, for every verified event.
///
/// The `content-type` is not checked: the signature is what proves a webhook.
///
/// Cheap to clone; a clone shares the verifier (keys and replay set) and the callback.
///
/// ```
/// use axum::Router;
/// use kinde_meter::webhooks::{WebhookHandler, WebhookVerifier};
///
/// # fn app(verifier: WebhookVerifier) -> Router {
/// let handler = WebhookHandler::new(verifier).on_event(|event| {
///     println!("{} for customer {:?}", event.kind, event.customer);
/// });
/// Router::new().route_service("/kinde/webhooks", handler)
/// # }
/// ```
#[derive(Clone)]
pub struct WebhookHandler {
    verifier: WebhookVerifier,
    on_event: Option<Callback>,
    notify_reporter: bool,
}

impl fmt::Debug for WebhookHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookHandler")
            .field("verifier", &self.verifier)
            .field(
                "on_event",
                &self.on_event.as_ref().map(|_| "Fn(&WebhookEvent)"),
            )
            .field("notify_reporter", &self.notify_reporter)
            .finish()
    }
}

impl WebhookHandler {
    /// A handler verifying with `verifier`.
    pub fn new(verifier: WebhookVerifier) -> Self {
        Self {
            verifier,
            on_event: None,
            notify_reporter: true,
        }
    }

    /// Calls `callback` with each verified event, once per webhook (redeliveries are not
    /// passed on). It runs before the answer is sent, so keep it short: hand the event to
    /// a task or a queue for slow work. If it panics, the answer is `500` and the webhook
    /// is forgotten, so that Kinde's next delivery of it is handled again.
    #[must_use]
    pub fn on_event(mut self, callback: impl Fn(&WebhookEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(callback));
        self
    }

    /// Whether events that change billing are passed to the reporter (default `true`),
    /// which then refreshes what it knows of the customer.
    #[must_use]
    pub fn notify_reporter(mut self, notify: bool) -> Self {
        self.notify_reporter = notify;
        self
    }

    async fn handle<B>(self, request: Request<B>) -> Response<String>
    where
        B: Body,
        B::Error: fmt::Display,
    {
        if request.method() != Method::POST {
            let mut response = answer(StatusCode::METHOD_NOT_ALLOWED, "send webhooks with POST");
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        let webhook_id = match request.headers().get("webhook-id").map(HeaderValue::to_str) {
            None => None,
            Some(Ok(id)) => Some(id.to_owned()),
            Some(Err(_)) => {
                return self.refused(
                    None,
                    &WebhookError::malformed("the `webhook-id` header is not visible ASCII"),
                );
            }
        };
        let body = match read_body(request.into_body()).await {
            Ok(body) => body,
            Err(error) => return self.refused(webhook_id.as_deref(), &error),
        };
        match self
            .verifier
            .verify_keyed(webhook_id.as_deref(), &body)
            .await
        {
            Ok((event, key)) => {
                let acted = catch_unwind(AssertUnwindSafe(|| self.act(&event)));
                if acted.is_ok() {
                    answer(StatusCode::OK, "ok")
                } else {
                    self.verifier.forget(key);
                    tracing::error!(
                        target: "kinde_meter",
                        webhook_id = event.webhook_id.as_deref(),
                        kind = %event.kind,
                        "the webhook event callback panicked; answering 500 so that Kinde delivers it again"
                    );
                    answer(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the event could not be handled",
                    )
                }
            }
            Err(error) => self.refused(webhook_id.as_deref(), &error),
        }
    }

    fn act(&self, event: &WebhookEvent) {
        if self.notify_reporter && event.kind.changes_billing() {
            crate::reporter::billing_changed(
                event.customer.as_ref(),
                event.org_code.as_ref(),
                event.user_id.as_ref(),
            );
        }
        if let Some(callback) = &self.on_event {
            callback(event);
        }
    }

    fn refused(&self, webhook_id: Option<&str>, error: &WebhookError) -> Response<String> {
        if error.is_replay() {
            // Redeliveries are Kinde doing its job, not a problem.
            tracing::debug!(target: "kinde_meter", webhook_id, "webhook redelivered; already handled");
        } else {
            tracing::warn!(
                target: "kinde_meter",
                webhook_id,
                status = error.status().as_u16(),
                %error,
                "refused a Kinde webhook"
            );
        }
        answer(error.status(), error.summary())
    }
}

fn answer(status: StatusCode, text: &'static str) -> Response<String> {
    let mut response = Response::new(format!("{text}\n"));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Reads `body` up to [`MAX_BODY`] bytes, refusing it as soon as it is known to be longer.
async fn read_body<B>(body: B) -> Result<Vec<u8>, WebhookError>
where
    B: Body,
    B::Error: fmt::Display,
{
    let too_large = WebhookError::TooLarge { limit: MAX_BODY };
    if usize::try_from(body.size_hint().lower()).map_or(true, |len| len > MAX_BODY) {
        return Err(too_large);
    }
    let mut body = pin!(body);
    let mut bytes = Vec::new();
    while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame
            .map_err(|e| WebhookError::malformed(format!("the body could not be read ({e})")))?;
        // Trailers and other frames carry nothing of a webhook.
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        if data.remaining() > MAX_BODY - bytes.len() {
            return Err(too_large);
        }
        while data.has_remaining() {
            let chunk = data.chunk();
            bytes.extend_from_slice(chunk);
            let len = chunk.len();
            data.advance(len);
        }
    }
    Ok(bytes)
}

impl<B> Service<Request<B>> for WebhookHandler
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: fmt::Display,
{
    type Response = Response<String>;
    /// Never fails: every outcome is an answer to Kinde.
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let handler = self.clone();
        ResponseFuture(Box::pin(async move { Ok(handler.handle(request).await) }))
    }
}

/// The response future of [`WebhookHandler`].
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture(
    Pin<Box<dyn Future<Output = Result<Response<String>, Infallible>> + Send + 'static>>,
);

impl Future for ResponseFuture {
    type Output = Result<Response<String>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
