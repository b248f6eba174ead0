//! The core: what an event is and what may be done with it, free of any wire. Validation
//! (envelope rules, JSON Schema per type), the contracts file, who the caller is and what they
//! may do (`auth`), duplicate suppression, the service both faces call, streams, and the
//! delivery ports (`delivery`) that the spool and the sinks implement. It imports only itself,
//! `config`, `telemetry` and the generated `proto` types: never tonic, axum, http, a sink or the
//! spool (`tests/layers.rs`).
pub mod auth;
pub mod contracts;
pub mod dedup;
pub mod delivery;
pub mod error;
pub mod event;
pub mod service;
pub mod stream;
pub mod validate;
