//! The transports that adapt the core service to the wire: gRPC (tonic), REST (axum, JSON
//! transcoding per the contract's google.api.http annotations) and the health endpoints.
pub mod grpc;
pub mod health;
pub mod rest;
pub mod stack;
