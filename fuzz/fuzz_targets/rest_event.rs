//! The REST decoders and validation on arbitrary bytes: the contract's JSON (`RestEvent`),
//! the CloudEvents structured and batch formats, bounded arrays.
#![no_main]
mod common;

use event_gateway::transport::bounded;
use event_gateway::transport::http::{cloudevents, rest::RestEvent};
use event_gateway::core::validate::Incoming;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = serde_json::from_slice::<RestEvent>(data) {
        common::check(Incoming::from(e));
    }
    if let Ok(i) = cloudevents::decode_structured(data) {
        common::check(i);
    }
    if let Ok(events) = cloudevents::decode_batch(data, 8) {
        assert!(events.len() <= 8, "a batch over the ceiling was decoded");
        events.into_iter().for_each(common::check);
    }
    if let Ok(v) = bounded::json_array::<serde_json::Value>(data, 4) {
        assert!(v.len() <= 4);
    }
});
