//! The payload of one spooled record: the event, the topic validation routed it to, the trace
//! headers of the request that brought it, and when it was spooled. Its framing on disk is
//! `segment.rs`'s; this module only turns a [`Record`] into bytes and back.
use std::sync::Arc;

use crate::core::event::Event;

/// One spooled event with what forwarding needs besides the event: its topic (decided by
/// validation) and the trace headers of the request that brought it.
#[derive(Debug, Clone)]
pub struct Record {
    pub spooled_at_ms: u64,
    pub topic: Option<String>,
    pub trace: Vec<(String, String)>,
    pub event: Event,
}

#[derive(serde::Deserialize)]
struct Meta {
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    trace: Vec<(String, String)>,
    /// The event's forwarded request headers (`kafka.forward_headers`); absent in records
    /// written before they existed, and when there are none.
    #[serde(default)]
    headers: Vec<(String, String)>,
}

/// [`Meta`] as written: borrowed, so encoding clones neither the topic nor the trace headers.
#[derive(serde::Serialize)]
struct MetaRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    trace: &'a [(String, String)],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    headers: &'a [(String, String)],
}

/// Payload layout: version u8 = 1 | spooled-at ms u64 LE | meta length u32 LE | meta (JSON:
/// topic, trace headers, forwarded headers) | the event in the CloudEvents JSON format.
const PAYLOAD_VERSION: u8 = 1;

/// A record to be written, borrowing what it stores: appending encodes events in place
/// instead of cloning each into a [`Record`] first (#26).
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub spooled_at_ms: u64,
    pub topic: Option<&'a str>,
    pub trace: &'a [(String, String)],
    pub event: &'a Event,
}

impl Entry<'_> {
    /// Appends the payload to `out` (no intermediate buffers).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(PAYLOAD_VERSION);
        out.extend_from_slice(&self.spooled_at_ms.to_le_bytes());
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let meta = MetaRef {
            topic: self.topic,
            trace: self.trace,
            headers: self.event.forwarded.as_deref().unwrap_or_default(),
        };
        serde_json::to_writer(&mut *out, &meta).expect("meta serializes");
        let meta_len = (out.len() - len_at - 4) as u32;
        out[len_at..len_at + 4].copy_from_slice(&meta_len.to_le_bytes());
        self.event.write_structured_json(out);
    }
}

impl Record {
    /// The record as an [`Entry`] to append.
    pub fn entry(&self) -> Entry<'_> {
        Entry {
            spooled_at_ms: self.spooled_at_ms,
            topic: self.topic.as_deref(),
            trace: &self.trace,
            event: &self.event,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        self.entry().encode_into(&mut out);
        out
    }

    /// The event's CloudEvents JSON inside a payload, without decoding the rest.
    pub fn event_json(payload: &[u8]) -> Result<&[u8], String> {
        Self::split(payload).map(|(_, _, e)| e)
    }

    fn split(payload: &[u8]) -> Result<(u64, &[u8], &[u8]), String> {
        if payload.len() < 13 || payload[0] != PAYLOAD_VERSION {
            return Err("unknown record version".into());
        }
        let at = u64::from_le_bytes(payload[1..9].try_into().expect("8 bytes"));
        let meta_len = u32::from_le_bytes(payload[9..13].try_into().expect("4 bytes")) as usize;
        let rest = &payload[13..];
        if meta_len > rest.len() {
            return Err("record metadata runs past the record".into());
        }
        Ok((at, &rest[..meta_len], &rest[meta_len..]))
    }

    pub fn decode(payload: &[u8]) -> Result<Record, String> {
        let (spooled_at_ms, meta, event) = Self::split(payload)?;
        let meta: Meta =
            serde_json::from_slice(meta).map_err(|e| format!("record metadata: {e}"))?;
        let mut event = Event::from_structured_json(event)?;
        event.topic = meta.topic.as_deref().map(Arc::from);
        event.forwarded = (!meta.headers.is_empty()).then(|| Arc::from(meta.headers));
        Ok(Record {
            spooled_at_ms,
            topic: meta.topic,
            trace: meta.trace,
            event,
        })
    }
}
