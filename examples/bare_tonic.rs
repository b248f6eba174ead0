//! Benchmark floor of the gRPC rows (#26): the gateway's `IngestEvent` and `IngestStream`
//! paths served by bare tonic on `axum::serve` (hyper's HTTP/2, as the gateway serves gRPC
//! through its axum router), with none of the gateway's stack, validation or storage.
//! `bare_tonic ADDR`
//!
//! Like `bare_axum`, which reads a REST body and never parses it, this reads a gRPC message
//! and never decodes its event: a request decodes into a message that knows only the stream's
//! `sequence` (prost skips the event's bytes), and each call or stream message is answered
//! with a reply of the gateway's shape and size. What is left is the protocol: HTTP/2's
//! frames, HPACK, flow control, gRPC's framing and tonic's codec. The gateway's gRPC rows less
//! this floor are the gateway's own work, to compare with the REST row less bare axum.
use std::convert::Infallible;
use std::pin::Pin;

use axum::Router;
use event_gateway::proto::{self, IngestEventResponse, IngestStreamResponse};
use futures::{Stream, StreamExt as _};
use tonic::server::{Grpc, StreamingService, UnaryService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

/// The gateway's allocator (src/main.rs), so that a floor and the gateway it is set against
/// pay the same malloc and free: with glibc's, the floors read 1.5K to 3.2K instructions a
/// request more than with jemalloc (docs/benchmarks.md, "The floors counted alike").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// What this floor reads of an `IngestStreamRequest`: its `sequence` (field 1); its events
/// (field 2) are skipped as unknown fields.
#[derive(Clone, PartialEq, prost::Message)]
struct Sequence {
    #[prost(uint64, optional, tag = "1")]
    sequence: Option<u64>,
}

/// What this floor reads of an `IngestEventRequest`: nothing (every field skipped).
#[derive(Clone, PartialEq, prost::Message)]
struct Skipped {}

/// The gateway's replies carry the event's 36-character id.
const ID: &str = "019a0000-0000-7000-8000-000000000000";

#[derive(Clone, Copy)]
struct Ingest;

impl UnaryService<Skipped> for Ingest {
    type Response = IngestEventResponse;
    type Future = std::future::Ready<Result<Response<IngestEventResponse>, Status>>;

    fn call(&mut self, _: Request<Skipped>) -> Self::Future {
        std::future::ready(Ok(Response::new(IngestEventResponse {
            id: ID.into(),
            ack: proto::AckMode::Stored as i32,
            ..Default::default()
        })))
    }
}

#[derive(Clone, Copy)]
struct IngestStream;

type Reports = Pin<Box<dyn Stream<Item = Result<IngestStreamResponse, Status>> + Send>>;

impl StreamingService<Sequence> for IngestStream {
    type Response = IngestStreamResponse;
    type ResponseStream = Reports;
    type Future = std::future::Ready<Result<Response<Reports>, Status>>;

    fn call(&mut self, req: Request<Streaming<Sequence>>) -> Self::Future {
        // One report per message: the load generator sends one event a message.
        let reports = req.into_inner().map(|m| {
            m.map(|m| IngestStreamResponse {
                sequence: m.sequence.unwrap_or(0),
                id: ID.into(),
                outcome: proto::Outcome::Stored as i32,
                ..Default::default()
            })
        });
        std::future::ready(Ok(Response::new(Box::pin(reports) as Reports)))
    }
}

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18092".into());
    let unary = tower::service_fn(|req: axum::extract::Request| async move {
        let codec = ProstCodec::<IngestEventResponse, Skipped>::default();
        Ok::<_, Infallible>(Grpc::new(codec).unary(Ingest, req).await)
    });
    let streaming = tower::service_fn(|req: axum::extract::Request| async move {
        let codec = ProstCodec::<IngestStreamResponse, Sequence>::default();
        Ok::<_, Infallible>(Grpc::new(codec).streaming(IngestStream, req).await)
    });
    let app = Router::new()
        .route_service(&format!("/{}/IngestEvent", proto::SERVICE_NAME), unary)
        .route_service(&format!("/{}/IngestStream", proto::SERVICE_NAME), streaming);
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    axum::serve(listener, app).await.unwrap();
}
