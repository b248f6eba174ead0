//! The transports that adapt the core service to the wire, by face: `http/` (REST transcoding
//! per the contract's google.api.http annotations, CloudEvents, WebSocket ingest, health, the
//! API docs), `grpc/` (the tonic service and its message codec), and `stack/`, the one tower
//! stack every request of both faces passes through (authentication, client address, rate
//! limits, admission, metrics and spans). Below them sit what they share: `routes` (the REST
//! table and what the edge refuses), `status` (the one table where errors become status codes),
//! `reply` (the reply messages both faces send), `bounded` (JSON arrays decoded no further than
//! the batch limit) and `tls` (the listener's certificates). Arrows point from the faces to the
//! stack to the shared rendering, never back (`tests/layers.rs`).
pub mod bounded;
pub mod grpc;
pub mod http;
pub mod reply;
pub mod routes;
pub mod stack;
pub mod status;
pub mod tls;
