//! CloudEvents binary mode: `ce-*` headers (percent-encoded) and a body, from arbitrary bytes.
//! Lines before the first empty line are `name: value` headers; the rest is the body.
#![no_main]
mod common;

use event_gateway::transport::http::cloudevents;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.windows(2).position(|w| w == b"\n\n").unwrap_or(data.len());
    let (head, body) = data.split_at(split);
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = line.split_at(colon);
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value[1..].trim_ascii()),
        ) {
            headers.append(n, v);
        }
    }
    let body = bytes::Bytes::copy_from_slice(body.get(2..).unwrap_or_default());
    let _ = cloudevents::mode(&headers);
    if let Ok(i) = cloudevents::decode_binary(&headers, body) {
        common::check(i);
    }
});
