//! The transports that adapt the core service to the wire: gRPC (tonic), REST (axum, JSON
//! transcoding per the contract's google.api.http annotations), the health endpoints, the
//! API docs, and the shared stack every request passes through.
pub mod docs;
pub mod grpc;
pub mod health;
pub mod rest;
pub mod stack;
