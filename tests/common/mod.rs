//! Test fixtures shared by the integration tests: a gateway served on port 0 through the
//! library's own `serve`, real clients (tonic, reqwest), a real tansu broker started per test
//! on a free port, and a Kafka reader that assigns every partition from the beginning. Tests
//! that need a program from outside Cargo (tansu, promtool, the Python clients) ask
//! [`require`] first, so a plain `cargo test` runs the rest and says what it skipped.
//!
//! By role: `gateway` (the gateway process), `broker` (tansu and the reader), `pki` (certificates
//! and the TLS terminator), `codec` (raw gRPC), `clients` (HTTP and gRPC helpers), `tools`.
#![allow(dead_code)]

mod broker;
mod clients;
mod codec;
mod gateway;
mod pki;
mod tools;

// Each test binary uses some of these, none all: the re-exports are not all used in any.
#[allow(unused_imports)]
pub use broker::*;
#[allow(unused_imports)]
pub use clients::*;
#[allow(unused_imports)]
pub use codec::*;
#[allow(unused_imports)]
pub use gateway::*;
#[allow(unused_imports)]
pub use pki::*;
#[allow(unused_imports)]
pub use tools::*;
