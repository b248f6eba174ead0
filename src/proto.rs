//! Generated protobuf types for `eventgateway.v1` (prost messages and their pbjson serde
//! impls) and the encoded descriptor set that server reflection publishes. The gRPC client and
//! server are generated apart, into `transport::grpc::generated`, because they name the
//! transport's codec: this module sits below the core, which reads its messages.
#![allow(clippy::all, missing_docs)]

mod value;
pub use value::{Form as WireForm, WireValue};

tonic::include_proto!("eventgateway.v1");
include!(concat!(env!("OUT_DIR"), "/eventgateway.v1.serde.rs"));

/// The descriptor set of `proto/`, imports included, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("eventgateway_descriptor");

/// Fully qualified gRPC service name, as gRPC health and reflection report it.
pub const SERVICE_NAME: &str = "eventgateway.v1.EventGatewayService";
