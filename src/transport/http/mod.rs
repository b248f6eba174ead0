//! The HTTP face: REST transcoding of every RPC (`rest`), the CloudEvents HTTP binding
//! (`cloudevents`), the WebSocket face of `IngestStream` (`ws`), the health endpoints
//! (`health`), the API docs (`docs`) and the ingest replies' JSON (`json`). Each handler calls the core's `Gateway`, as the gRPC
//! face does, and renders through `transport::status` and `transport::reply`.
pub mod cloudevents;
pub mod docs;
pub mod health;
pub mod json;
pub mod rest;
pub mod ws;
