//! The gRPC request decoder (the codec's batch count, then prost) and validation.
#![no_main]
mod common;

use event_gateway::proto::{IngestBatchRequest, IngestEventRequest};
use event_gateway::transport::grpc::codec;
use event_gateway::core::validate::Incoming;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    codec::admit_batches_of(common::LIMITS.max_batch_events);
    if let Ok(r) = codec::decode::<IngestEventRequest>(data)
        && let Some(event) = r.event
    {
        common::check(Incoming::from(event));
    }
    if let Ok(r) = codec::decode::<IngestBatchRequest>(data) {
        assert!(r.events.len() <= common::LIMITS.max_batch_events);
        r.events.into_iter().map(Incoming::from).for_each(common::check);
    }
});
