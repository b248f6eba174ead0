//! Event Gateway: takes CloudEvents in over gRPC and JSON REST on one port and stores them in
//! Kafka (or, with no broker configured, in a local fsynced log). A success reply means the
//! event is durably stored. See ARCHITECTURE.md for the code map and the invariants.
pub mod auth;
pub mod config;
pub mod contracts;
pub mod dedup;
pub mod error;
pub mod event;
pub mod proto;
pub mod server;
pub mod service;
pub mod sink;
pub mod spool;
pub mod stream;
pub mod telemetry;
pub mod transport;
pub mod validate;
pub mod watch;

pub use config::Config;
pub use error::Error;
pub use server::{ServeReport, StartupError, serve};
