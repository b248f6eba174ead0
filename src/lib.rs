//! Event Gateway: takes CloudEvents in over gRPC and JSON REST on one port and stores them in
//! Kafka (or, with no broker configured, in a local fsynced log). A success reply means the
//! event is durably stored. See ARCHITECTURE.md for the code map and the layers: each folder
//! below imports only from the ones listed after it (`tests/layers.rs` checks it).
pub mod config;
pub mod core;
pub mod idp;
pub mod proto;
pub mod server;
pub mod sink;
pub mod spool;
pub mod telemetry;
pub mod transport;

pub use crate::core::error::Error;
pub use config::Config;
pub use server::{ServeReport, StartupError, serve};
