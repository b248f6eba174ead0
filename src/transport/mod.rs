//! The transports that adapt the core service to the wire: gRPC (tonic), REST (axum, JSON
//! transcoding per the contract's google.api.http annotations), the health endpoints, the
//! API docs, the shared stack every request passes through, the one table where errors become
//! status codes (`status`), the reply messages both adapters send (`reply`), WebSocket
//! ingest (`ws`), the HTTP face of `IngestStream`, and the listener's TLS (`tls`).
pub mod cloudevents;
pub mod docs;
pub mod grpc;
pub mod health;
pub mod reply;
pub mod rest;
pub mod stack;
pub mod status;
pub mod tls;
pub mod ws;
