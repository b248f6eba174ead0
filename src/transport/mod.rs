//! The transports that adapt the core service to the wire: gRPC (tonic), REST (axum, JSON
//! transcoding per the contract's google.api.http annotations), the health endpoints, the
//! API docs, the shared stack every request passes through, the one table where errors become
//! status codes (`status`), the reply messages both adapters send (`reply`), WebSocket
//! ingest (`ws`), the HTTP face of `IngestStream`, the listener's TLS (`tls`), and the gRPC
//! message codec (`codec`: a message that does not decode is the client's mistake), and
//! JSON arrays decoded no further than the batch limit (`bounded`).
pub mod bounded;
pub mod cloudevents;
pub mod codec;
pub mod docs;
pub mod grpc;
pub mod health;
pub mod reply;
pub mod rest;
pub mod stack;
pub mod status;
pub mod tls;
pub mod ws;
