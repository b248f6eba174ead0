//! The stack as one tower layer over every route and the fallback: `observe`, then the
//! browsers' step (`server.cors`, when it lists origins), then authentication and admission
//! as the matched route's [`Kind`] says, then the route. The steps are calls of one function,
//! not a layer each: axum wraps each layer of a route in a boxed service that it clones with
//! everything below it, and whose future it boxes, on every request; one level cost 1.9K
//! instructions of a REST request (2,000 requests under callgrind with a layer that only
//! passes the request on, #26). The order is the stack's (`stack`'s paragraph), and each
//! step stays in its own file.
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::response::Response;

use super::admission::{self, Admission, Kind};
use super::cors::Browsers;
use super::middleware::{Next, from_fn};
use super::observe::{HttpMetrics, observe};

/// What the stack is made of.
pub struct Stack {
    pub metrics: Arc<HttpMetrics>,
    /// `server.cors`, when it lists origins.
    pub browsers: Option<Browsers>,
    pub admission: Arc<Admission>,
}

/// Wraps every route of `router`, and its fallback, in the stack.
pub fn stacked(router: Router, stack: Stack) -> Router {
    router.layer(from_fn(Arc::new(stack), run))
}

async fn run(s: Arc<Stack>, req: Request, next: Next) -> Response {
    // Looked up once for both steps; a clone shares the route's text (an `Arc<str>`).
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let kind = admission::kind(matched.as_ref().map(MatchedPath::as_str));
    observe(&s.metrics, req, matched, |req| below(&s, kind, req, next)).await
}

/// The steps below `observe`: browsers, then admission, then the route. Not an `async fn`,
/// and the browsers' step boxed: inline, the CORS layer's future made every request's future
/// larger, browsers configured or not.
fn below(
    s: &Stack,
    kind: Kind,
    req: Request,
    next: Next,
) -> impl Future<Output = Response> + Send + '_ {
    use futures::future::Either;
    let a = s.admission.clone();
    match &s.browsers {
        Some(b) => Either::Left(Box::pin(
            b.run(req, move |req| admission::admit(a, kind, req, next)),
        )),
        None => Either::Right(admission::admit(a, kind, req, next)),
    }
}
