//! How the stack wraps the routes: its steps in one `async` function (`layer`), and `authn`
//! alone around `/metrics`, each a function of its state, the request and the rest of the
//! stack ([`Next`]), made a tower layer by [`from_fn`], as with axum's `from_fn_with_state`. axum's
//! also clones the service below into a boxed `Next` of its own on every request and boxes
//! the call's future once more inside it: two allocations and two copies of the future per
//! piece per request that this does without (#26).
use std::convert::Infallible;
use std::future::Future;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use axum::routing::Route;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use tower::Service as _;

/// `f(state, request, next)` as a layer.
pub(super) fn from_fn<T, F, Fut>(state: T, f: F) -> Layer<T, F>
where
    T: Clone + Send + Sync + 'static,
    F: Fn(T, Request, Next) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    Layer { state, f }
}

/// The rest of the stack below a middleware (what axum's `Next` is to `from_fn`).
pub(super) struct Next(Route);

impl Next {
    /// Passes `req` on to the rest of the stack. Not an `async fn`: the route's own future
    /// is returned as it is, not moved into another one.
    pub(super) fn run(mut self, req: Request) -> impl Future<Output = Response> + Send + 'static {
        self.0.call(req).map(|r| match r {
            Ok(resp) => resp,
            Err(never) => match never {},
        })
    }
}

/// `f` and its state as a tower layer, for `Router::layer` and `Router::route_layer`.
#[derive(Clone)]
pub(super) struct Layer<T, F> {
    state: T,
    f: F,
}

impl<T: Clone, F: Clone> tower::Layer<Route> for Layer<T, F> {
    type Service = Wrapped<T, F>;

    fn layer(&self, inner: Route) -> Wrapped<T, F> {
        Wrapped {
            layer: self.clone(),
            inner,
        }
    }
}

/// A route wrapped in a layer's `f`.
#[derive(Clone)]
pub(super) struct Wrapped<T, F> {
    layer: Layer<T, F>,
    inner: Route,
}

impl<T, F, Fut> tower::Service<Request> for Wrapped<T, F>
where
    T: Clone + Send + Sync + 'static,
    F: Fn(T, Request, Next) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        <Route as tower::Service<Request>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The route that was polled ready is the one handed on; its clone stays for the
        // next request (tower's usual hand-over). A route is always ready.
        let clone = self.inner.clone();
        let next = Next(std::mem::replace(&mut self.inner, clone));
        Box::pin((self.layer.f)(self.layer.state.clone(), req, next).map(Ok))
    }
}
