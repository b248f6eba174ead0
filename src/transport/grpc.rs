//! The tonic service: unwraps each request, calls the core [`Gateway`], and maps errors with
//! `status.rs`; replies are encoded by `reply.rs`, as REST's are. Nothing cross-cutting lives
//! here (no interceptors): that is the shared stack's.
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::proto::event_gateway_service_server::{EventGatewayService, EventGatewayServiceServer};
use crate::proto::{
    IngestBatchRequest, IngestBatchResponse, IngestEventRequest, IngestEventResponse,
    ListEventTypesRequest, ListEventTypesResponse, ValidateRequest, ValidateResponse,
};
use crate::service::Gateway;
use crate::transport::reply::{batch_reply, event_reply, types_reply, validate_reply};
use crate::validate::Incoming;

pub struct GrpcService {
    gateway: Arc<Gateway>,
}

/// The tonic server for the gateway service, decoding messages up to `max_message_size`.
pub fn server(
    gateway: Arc<Gateway>,
    max_message_size: usize,
) -> EventGatewayServiceServer<GrpcService> {
    EventGatewayServiceServer::new(GrpcService { gateway })
        .max_decoding_message_size(max_message_size)
}

#[tonic::async_trait]
impl EventGatewayService for GrpcService {
    async fn ingest_event(
        &self,
        request: Request<IngestEventRequest>,
    ) -> Result<Response<IngestEventResponse>, Status> {
        let event = request.into_inner().event.map(Incoming::from);
        let ingested = self.gateway.ingest_event(event).await?;
        Ok(Response::new(event_reply(ingested)))
    }

    async fn ingest_batch(
        &self,
        request: Request<IngestBatchRequest>,
    ) -> Result<Response<IngestBatchResponse>, Status> {
        let events = request.into_inner().events;
        let items = self
            .gateway
            .ingest_batch(events.into_iter().map(Incoming::from).collect())
            .await?;
        Ok(Response::new(batch_reply(items)))
    }

    async fn validate(
        &self,
        request: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        let event = request.into_inner().event.map(Incoming::from);
        Ok(Response::new(validate_reply(self.gateway.validate(event)?)))
    }

    async fn list_event_types(
        &self,
        _request: Request<ListEventTypesRequest>,
    ) -> Result<Response<ListEventTypesResponse>, Status> {
        let (policy, listing) = self.gateway.list_types();
        Ok(Response::new(types_reply(policy, listing)))
    }
}
