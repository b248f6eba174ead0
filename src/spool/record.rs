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

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    trace: Vec<(String, String)>,
}

/// Payload layout: version u8 = 1 | spooled-at ms u64 LE | meta length u32 LE | meta (JSON:
/// topic, trace headers) | the event in the CloudEvents JSON format.
const PAYLOAD_VERSION: u8 = 1;

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let meta = serde_json::to_vec(&Meta {
            topic: self.topic.clone(),
            trace: self.trace.clone(),
        })
        .expect("meta serializes");
        let event = self.event.to_structured_json();
        let mut out = Vec::with_capacity(13 + meta.len() + event.len());
        out.push(PAYLOAD_VERSION);
        out.extend_from_slice(&self.spooled_at_ms.to_le_bytes());
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&event);
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
        Ok(Record {
            spooled_at_ms,
            topic: meta.topic,
            trace: meta.trace,
            event,
        })
    }
}
