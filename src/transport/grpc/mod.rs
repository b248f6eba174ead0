//! The tonic service: unwraps each request, calls the core [`Gateway`] (or, for
//! `IngestStream`, the core's stream loop in `stream.rs`), and maps errors with `status.rs`;
//! replies are encoded by `reply.rs`, as REST's are. Nothing cross-cutting lives here (no
//! interceptors): that is the shared stack's, which also admits each streamed event.
pub mod codec;

/// The generated gRPC client and server of the contract (build.rs's second pass): they name
/// this face's codec, so they live here, and the messages stay in `crate::proto`.
#[allow(clippy::all, missing_docs)]
pub mod generated {
    include!(concat!(env!("OUT_DIR"), "/grpc/eventgateway.v1.rs"));
}
pub use generated::{event_gateway_service_client, event_gateway_service_server};

use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{CompressionEncoding, SingleMessageCompressionOverride};
use tonic::{Request, Response, Status, Streaming};

use crate::core::error::Error;
use crate::core::service::Gateway;
use crate::core::stream::{self, End, StreamAdmission, Submission};
use crate::core::validate::Incoming;
use crate::proto::{
    IngestBatchRequest, IngestBatchResponse, IngestEventRequest, IngestEventResponse,
    IngestStreamRequest, IngestStreamResponse, ListEventTypesRequest, ListEventTypesResponse,
    ValidateRequest, ValidateResponse,
};
use crate::transport::reply::{
    ack_request, batch_reply, event_reply, stream_reply, types_reply, validate_reply,
};
use crate::transport::stack;
use event_gateway_service_server::{EventGatewayService, EventGatewayServiceServer};

pub struct GrpcService {
    gateway: Arc<Gateway>,
    max_stream_in_flight: usize,
}

/// The tonic server for the gateway service, decoding messages up to `max_message_size`.
///
/// Requests may be compressed with gzip or zstd (`grpc-encoding`); tonic (0.14.9 and later)
/// decompresses into a buffer limited to `max_message_size`, so a compression bomb ends in
/// RESOURCE_EXHAUSTED at the limit instead of in memory. Unary replies are compressed when
/// the client's `grpc-accept-encoding` asks for it and they are at least
/// [`COMPRESS_REPLIES_FROM`] bytes (see [`reply`]).
pub fn server(
    gateway: Arc<Gateway>,
    max_message_size: usize,
    max_stream_in_flight: usize,
) -> EventGatewayServiceServer<GrpcService> {
    EventGatewayServiceServer::new(GrpcService {
        gateway,
        max_stream_in_flight,
    })
    .max_decoding_message_size(max_message_size)
    .accept_compressed(CompressionEncoding::Gzip)
    .accept_compressed(CompressionEncoding::Zstd)
    .send_compressed(CompressionEncoding::Gzip)
    .send_compressed(CompressionEncoding::Zstd)
}

/// The smallest unary reply worth compressing. grpcio, grpc-java and the C++ clients
/// advertise gzip on every call, and setting up a deflate state for an 80-byte
/// IngestEvent reply cost about 250K instructions per request (callgrind: 370K per gRPC
/// request against 118K with identity only) while making the reply bigger. A batch's reply
/// (a result per event) is where compression pays.
pub const COMPRESS_REPLIES_FROM: usize = 1024;

/// A unary reply, compressed only from [`COMPRESS_REPLIES_FROM`] bytes: tonic compresses
/// every message of a service that sends compressed, unless the response carries
/// [`SingleMessageCompressionOverride::Disable`].
fn reply<T: prost::Message>(message: T) -> Response<T> {
    let small = message.encoded_len() < COMPRESS_REPLIES_FROM;
    let mut response = Response::new(message);
    if small {
        response
            .extensions_mut()
            .insert(SingleMessageCompressionOverride::Disable);
    }
    response
}

/// Why a stream ended, as the call's final status: nothing for a clean end (OK).
fn final_status(end: End<Status>) -> Option<Status> {
    match end {
        End::Closed | End::Gone => None,
        End::Draining => Some(
            Error::unavailable(
                "the gateway is shutting down; events without a result were not taken: send them again",
            )
            .into(),
        ),
        End::Broken(status) => Some(status),
        // UNAUTHENTICATED for a revoked or expired credential, UNAVAILABLE at the lifetime.
        End::Refused(e) => Some(e.into()),
    }
}

#[tonic::async_trait]
impl EventGatewayService for GrpcService {
    async fn ingest_event(
        &self,
        request: Request<IngestEventRequest>,
    ) -> Result<Response<IngestEventResponse>, Status> {
        let principal = stack::principal(request.extensions().get())?;
        let request = request.into_inner();
        let ack = ack_request(request.ack);
        let event = request.event.map(Incoming::from);
        let ingested = self.gateway.ingest_event(&principal, event, ack).await?;
        Ok(reply(event_reply(ingested)))
    }

    async fn ingest_batch(
        &self,
        request: Request<IngestBatchRequest>,
    ) -> Result<Response<IngestBatchResponse>, Status> {
        let principal = stack::principal(request.extensions().get())?;
        let request = request.into_inner();
        let ack = ack_request(request.ack);
        let items = self
            .gateway
            .ingest_batch(
                &principal,
                request.events.into_iter().map(Incoming::from).collect(),
                ack,
            )
            .await?;
        Ok(reply(batch_reply(items)))
    }

    async fn validate(
        &self,
        request: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        let principal = stack::principal(request.extensions().get())?;
        let event = request.into_inner().event.map(Incoming::from);
        Ok(reply(validate_reply(
            self.gateway.validate(&principal, event)?,
        )))
    }

    async fn list_event_types(
        &self,
        _request: Request<ListEventTypesRequest>,
    ) -> Result<Response<ListEventTypesResponse>, Status> {
        let (policy, listing) = self.gateway.list_types();
        Ok(reply(types_reply(policy, listing)))
    }

    type IngestStreamStream = BoxStream<'static, Result<IngestStreamResponse, Status>>;

    /// Results stream back as the core's loop produces them; the loop's end becomes the
    /// call's final status.
    async fn ingest_stream(
        &self,
        request: Request<Streaming<IngestStreamRequest>>,
    ) -> Result<Response<Self::IngestStreamStream>, Status> {
        let admit = match request.extensions().get::<StreamAdmission>() {
            Some(StreamAdmission(opened)) => opened.clone()?,
            None => {
                return Err(Error::Internal(
                    "IngestStream served outside its admission layer".into(),
                )
                .into());
            }
        };
        if self.gateway.streams_stopped() {
            return Err(Error::unavailable(
                "the gateway is shutting down; open the stream elsewhere",
            )
            .into());
        }
        let input = request.into_inner().map_ok(|r| Submission {
            sequence: r.sequence,
            events: r
                .events
                .into_iter()
                .map(|e| Ok(Incoming::from(e)))
                .collect(),
        });
        let (results, reports) = mpsc::channel(self.max_stream_in_flight);
        let (ended, end) = oneshot::channel();
        let gateway = self.gateway.clone();
        let max = self.max_stream_in_flight;
        // The request's trace goes with the loop, so its context reaches the records.
        tokio::spawn(crate::telemetry::CurrentTrace::capture().carry(async move {
            let end = stream::run(gateway, admit, input, results, max).await;
            let _ = ended.send(end);
        }));
        let end = futures::stream::once(end).filter_map(|end| async move {
            match end {
                Ok(end) => final_status(end).map(Err),
                Err(_) => Some(Err(Error::Internal(
                    "the stream ended without saying how".into(),
                )
                .into())),
            }
        });
        let replies = ReceiverStream::new(reports).map(|r| Ok(stream_reply(r)));
        Ok(Response::new(replies.chain(end).boxed()))
    }
}
