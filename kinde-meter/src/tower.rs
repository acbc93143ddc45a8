//! A tower [`Layer`] that runs each request in its customer's agreement scope, so every
//! `#[meter]` handler below it bills the right customer (cargo feature `tower`).
//!
//! The agreement comes from a resolver you supply, over the request's head: a header, a
//! claim of an already-verified Kinde token in the extensions, or a lookup in your own
//! store (async). Requests it cannot resolve are passed through unmetered (metered calls
//! in them are counted as unattributed) or rejected, as configured.
//!
//! ```
//! use axum::{routing::get, Router};
//! use kinde_meter::{meter, tower::{AgreementLayer, MissingAgreement}};
//!
//! #[meter(feature = "reports")]
//! async fn report() -> &'static str {
//!     "report"
//! }
//!
//! let app: Router = Router::new().route("/report", get(report)).layer(
//!     AgreementLayer::new(|head: &http::request::Parts| {
//!         head.headers.get("x-agreement-id")?.to_str().ok()?.parse().ok()
//!     })
//!     .on_missing(MissingAgreement::Reject(http::StatusCode::PAYMENT_REQUIRED)),
//! );
//! # let _ = app;
//! ```

use std::future::{Future, Ready, ready};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::request::Parts;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
pub use tower_layer::Layer;
use tower_service::Service;

use crate::api::{AgreementId, Customer};
use crate::context::{WithAgreement, in_poll};

/// What to do with a request whose agreement cannot be resolved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissingAgreement {
    /// Handle it without an agreement scope (the default): metered calls in it are
    /// counted as unattributed and reported, never billed to a guess.
    #[default]
    PassThrough,
    /// Answer with this status (`402 Payment Required` or `403 Forbidden`, typically)
    /// and an empty body, without calling the service.
    Reject(StatusCode),
}

/// Turns a request head into an agreement, maybe asynchronously.
pub trait ResolveAgreement: Clone + Send + Sync + 'static {
    /// The resolution in progress.
    type Future: Future<Output = Option<AgreementId>> + Send + 'static;
    /// Starts resolving the agreement of a request.
    fn resolve(&self, head: &Parts) -> Self::Future;
}

/// A synchronous resolver: `Fn(&Parts) -> Option<AgreementId>`.
#[derive(Clone, Debug)]
pub struct SyncResolver<F>(F);

impl<F> ResolveAgreement for SyncResolver<F>
where
    F: Fn(&Parts) -> Option<AgreementId> + Clone + Send + Sync + 'static,
{
    type Future = Ready<Option<AgreementId>>;
    fn resolve(&self, head: &Parts) -> Self::Future {
        ready((self.0)(head))
    }
}

/// An asynchronous resolver: `Fn(&Parts) -> impl Future<Output = Option<AgreementId>>`.
/// Take what you need from the head before the `async` block, which must not borrow it.
#[derive(Clone, Debug)]
pub struct AsyncResolver<F>(F);

impl<F, Fut> ResolveAgreement for AsyncResolver<F>
where
    F: Fn(&Parts) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Option<AgreementId>> + Send + 'static,
{
    type Future = Fut;
    fn resolve(&self, head: &Parts) -> Self::Future {
        (self.0)(head)
    }
}

/// A resolver that reads the customer from claims an authentication layer already
/// verified and put in the request's extensions (as a value of type `C`). Built by
/// [`AgreementLayer::customer_from_claims`].
pub struct ClaimsResolver<C, F> {
    read: F,
    _claims: PhantomData<fn() -> C>,
}

impl<C, F: Clone> Clone for ClaimsResolver<C, F> {
    fn clone(&self) -> Self {
        Self {
            read: self.read.clone(),
            _claims: PhantomData,
        }
    }
}

impl<C, F> std::fmt::Debug for ClaimsResolver<C, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimsResolver")
            .field("claims", &std::any::type_name::<C>())
            .finish_non_exhaustive()
    }
}

impl<C, F> ResolveAgreement for ClaimsResolver<C, F>
where
    C: Send + Sync + 'static,
    F: Fn(&C) -> Option<Customer> + Clone + Send + Sync + 'static,
{
    type Future = Ready<Option<AgreementId>>;
    fn resolve(&self, head: &Parts) -> Self::Future {
        let customer = head
            .extensions
            .get::<C>()
            .and_then(|claims| (self.read)(claims));
        ready(customer.map(|c| AgreementId::for_customer(&c)))
    }
}

/// Sets the current agreement for each request. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct AgreementLayer<R> {
    resolver: R,
    missing: MissingAgreement,
}

impl<F> AgreementLayer<SyncResolver<F>>
where
    F: Fn(&Parts) -> Option<AgreementId> + Clone + Send + Sync + 'static,
{
    /// A layer resolving agreements with a synchronous function of the request head.
    pub fn new(resolver: F) -> Self {
        Self {
            resolver: SyncResolver(resolver),
            missing: MissingAgreement::default(),
        }
    }
}

impl<F, Fut> AgreementLayer<AsyncResolver<F>>
where
    F: Fn(&Parts) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Option<AgreementId>> + Send + 'static,
{
    /// A layer resolving agreements asynchronously (a lookup in your own store).
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use std::sync::Arc;
    /// use kinde_meter::{tower::AgreementLayer, AgreementId};
    ///
    /// let store: Arc<HashMap<String, AgreementId>> = Arc::default();
    /// let layer = AgreementLayer::from_async(move |head: &http::request::Parts| {
    ///     let user = head.headers.get("x-user").and_then(|v| v.to_str().ok()).map(str::to_owned);
    ///     let store = Arc::clone(&store);
    ///     async move { store.get(&user?).cloned() }
    /// });
    /// # let _ = layer;
    /// ```
    pub fn from_async(resolver: F) -> Self {
        Self {
            resolver: AsyncResolver(resolver),
            missing: MissingAgreement::default(),
        }
    }
}

impl<C, F> AgreementLayer<ClaimsResolver<C, F>>
where
    C: Send + Sync + 'static,
    F: Fn(&C) -> Option<Customer> + Clone + Send + Sync + 'static,
{
    /// A layer that runs each request in its customer's scope, the customer read from
    /// the verified token claims (a value of type `C`) that your authentication layer
    /// put in the request's extensions: `org_code` for a B2B service, `sub` for a B2C
    /// one ([`Customer::from_claims`]). The layer verifies nothing itself. Usage is
    /// resolved to the customer's agreement off the request path.
    ///
    /// ```
    /// use axum::{routing::get, Router};
    /// use kinde_meter::{meter, tower::AgreementLayer, Customer};
    ///
    /// /// What the service's JWT layer inserts once it has verified the token.
    /// #[derive(Clone)]
    /// struct Claims {
    ///     sub: String,
    ///     org_code: Option<String>,
    /// }
    ///
    /// #[meter(feature = "reports")]
    /// async fn report() -> &'static str {
    ///     "report"
    /// }
    ///
    /// let app: Router = Router::new().route("/report", get(report)).layer(
    ///     AgreementLayer::customer_from_claims(|claims: &Claims| {
    ///         Customer::from_claims(claims.org_code.as_deref(), Some(&claims.sub))
    ///     }),
    /// );
    /// # let _ = app;
    /// ```
    pub fn customer_from_claims(read: F) -> Self {
        Self {
            resolver: ClaimsResolver {
                read,
                _claims: PhantomData,
            },
            missing: MissingAgreement::default(),
        }
    }
}

impl<R> AgreementLayer<R> {
    /// What to do with requests whose agreement cannot be resolved (default: pass through).
    #[must_use]
    pub fn on_missing(mut self, missing: MissingAgreement) -> Self {
        self.missing = missing;
        self
    }
}

impl<S, R: Clone> Layer<S> for AgreementLayer<R> {
    type Service = AgreementService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        AgreementService {
            inner,
            resolver: self.resolver.clone(),
            missing: self.missing,
        }
    }
}

/// The service [`AgreementLayer`] wraps around yours.
#[derive(Clone, Debug)]
pub struct AgreementService<S, R> {
    inner: S,
    resolver: R,
    missing: MissingAgreement,
}

impl<S, R, B, ResBody> Service<Request<B>> for AgreementService<S, R>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    R: ResolveAgreement,
    ResBody: Default,
{
    /// The response body runs in the request's scope too, so metered code in a streaming
    /// body (polled by the server after the handler returned) bills the same customer.
    type Response = Response<WithAgreement<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<R, S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (head, body) = request.into_parts();
        let resolving = self.resolver.resolve(&head);
        // The service made ready by `poll_ready` handles this request; its clone takes
        // its place for the next one.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: State::Resolving {
                resolving,
                call: Some((service, Request::from_parts(head, body))),
                missing: self.missing,
            },
        }
    }
}

pin_project! {
    /// The response future of [`AgreementService`]: resolves the request's agreement, then
    /// runs your service's call and response future in its scope (or answers at once, for a
    /// request without an agreement that the layer rejects).
    ///
    /// `R` is the resolver, `S` your service and `B` the request body.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<R, S, B>
    where
        R: ResolveAgreement,
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<R::Future, S, B>,
    }
}

pin_project! {
    /// Where a [`ResponseFuture`] is.
    #[project = StateProj]
    enum State<Resolving, S, B>
    where
        S: Service<Request<B>>,
    {
        /// Waiting for the resolver; holds the service and the request for the call.
        Resolving {
            #[pin]
            resolving: Resolving,
            call: Option<(S, Request<B>)>,
            missing: MissingAgreement,
        },
        /// Waiting for the service's response, in the agreement's scope if there is one.
        Responding {
            #[pin]
            response: WithAgreement<S::Future>,
            body_scope: Option<AgreementId>,
        },
        /// The response has been returned.
        Done,
    }
}

impl<R, S, B, ResBody> Future for ResponseFuture<R, S, B>
where
    R: ResolveAgreement,
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Output = Result<Response<WithAgreement<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Resolving {
                    resolving,
                    call,
                    missing,
                } => {
                    let agreement = ready!(resolving.poll(cx));
                    let Some((mut service, request)) = call.take() else {
                        unreachable!("the call is taken only when leaving this state")
                    };
                    let (response, body_scope) = match (agreement, *missing) {
                        // The inner call itself runs in the scope too, not just its future.
                        (Some(agreement), _) => {
                            let future = in_poll(&agreement, || service.call(request));
                            let body_scope = Some(agreement.clone());
                            (WithAgreement::new(Some(agreement), future), body_scope)
                        }
                        (None, MissingAgreement::PassThrough) => {
                            (WithAgreement::new(None, service.call(request)), None)
                        }
                        (None, MissingAgreement::Reject(status)) => {
                            state.set(State::Done);
                            let mut response =
                                Response::new(WithAgreement::new(None, ResBody::default()));
                            *response.status_mut() = status;
                            return Poll::Ready(Ok(response));
                        }
                    };
                    state.set(State::Responding {
                        response,
                        body_scope,
                    });
                }
                StateProj::Responding {
                    response,
                    body_scope,
                } => {
                    let result = ready!(response.poll(cx));
                    let body_scope = body_scope.take();
                    state.set(State::Done);
                    return Poll::Ready(result.map(|response| {
                        response.map(|body| WithAgreement::new(body_scope, body))
                    }));
                }
                StateProj::Done => panic!("`ResponseFuture` polled after it completed"),
            }
        }
    }
}

impl<R, S, B> std::fmt::Debug for ResponseFuture<R, S, B>
where
    R: ResolveAgreement,
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Resolving { .. } => "resolving",
            State::Responding { .. } => "responding",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
