//! The contract's reply messages, built from the core's domain outcomes. Both adapters send
//! these (gRPC as protobuf, REST as pbjson JSON), so a reply cannot differ between protocols;
//! a failed batch item's code comes from `status.rs`.
use crate::config::TypesPolicy;
use crate::core::contracts::TypeListing;
use crate::core::delivery::{Delivery, Receipt};
use crate::core::service::{AckRequest, BatchItem, Ingested, Validated};
use crate::core::stream::Report;
use crate::proto::{
    AckMode, EventResult, EventType, IngestBatchResponse, IngestEventResponse,
    IngestStreamResponse, ListEventTypesResponse, Outcome, ValidateResponse,
};
use crate::transport::status::item_error;

/// The contract's `ack` field of a request, as the core's request.
pub fn ack_request(ack: i32) -> AckRequest {
    match AckMode::try_from(ack) {
        Ok(AckMode::Stored) => AckRequest::Stored,
        Ok(AckMode::Spooled) => AckRequest::Spooled,
        // Unknown numbers read as unspecified, as proto3 enums do.
        Ok(AckMode::Unspecified) | Err(_) => AckRequest::Default,
    }
}

/// (ack, partition, offset, spool position) of a receipt; the position only when spooled.
fn placed(r: &Receipt) -> (AckMode, i32, i64, Option<u64>) {
    match r.delivery {
        Delivery::Stored(s) => (AckMode::Stored, s.partition, s.offset, None),
        Delivery::Spooled { position } => (AckMode::Spooled, 0, 0, Some(position)),
    }
}

pub fn event_reply(i: Ingested) -> IngestEventResponse {
    let (ack, partition, offset, spool_position) = placed(&i.receipt);
    IngestEventResponse {
        id: i.id,
        partition,
        offset,
        time: Some(i.time.into()),
        ack: ack as i32,
        spool_position,
        duplicate: i.receipt.duplicate,
    }
}

/// True when the reply stands for a spooled event (REST answers 202).
pub fn is_spooled(ack: i32) -> bool {
    ack == AckMode::Spooled as i32
}

pub fn validate_reply(v: Validated) -> ValidateResponse {
    ValidateResponse {
        valid: true,
        size_bytes: v.size as u32,
        max_event_size_bytes: v.max_event_size as u32,
    }
}

/// The `IngestBatch` reply, one result per event in request order; its `ack` is the weakest
/// guarantee any event got.
pub fn batch_reply(items: Vec<BatchItem>) -> IngestBatchResponse {
    let (mut stored, mut spooled) = (0, 0);
    let results: Vec<EventResult> = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item.result {
            Ok(r) => {
                let (ack, partition, offset, spool_position) = placed(&r);
                let outcome = match ack {
                    AckMode::Spooled => {
                        spooled += 1;
                        Outcome::Spooled
                    }
                    AckMode::Stored | AckMode::Unspecified => {
                        stored += 1;
                        Outcome::Stored
                    }
                };
                EventResult {
                    index: index as i32,
                    id: item.id,
                    outcome: outcome as i32,
                    partition,
                    offset,
                    error: None,
                    spool_position,
                    duplicate: r.duplicate,
                }
            }
            Err(e) => EventResult {
                index: index as i32,
                id: item.id,
                outcome: Outcome::Failed as i32,
                partition: 0,
                offset: 0,
                error: Some(item_error(e)),
                spool_position: None,
                duplicate: false,
            },
        })
        .collect();
    let failed = results.len() as i32 - stored - spooled;
    IngestBatchResponse {
        results,
        stored_count: stored,
        failed_count: failed,
        spooled_count: spooled,
        ack: if spooled > 0 {
            AckMode::Spooled
        } else {
            AckMode::Stored
        } as i32,
    }
}

/// One event's result on a stream (IngestStream, and the WebSocket route's result frames).
pub fn stream_reply(r: Report) -> IngestStreamResponse {
    let (outcome, partition, offset, error) = match r.result {
        Ok(s) => (Outcome::Stored, s.partition, s.offset, None),
        Err(e) => (Outcome::Failed, 0, 0, Some(item_error(e))),
    };
    IngestStreamResponse {
        sequence: r.sequence,
        id: r.id,
        outcome: outcome as i32,
        partition,
        offset,
        error,
    }
}

/// The registry listing. A schema holding an integer a double cannot represent (beyond 2^53)
/// has no `google.protobuf.Value` form: it is listed without its document, origin kept.
pub fn types_reply(policy: TypesPolicy, listing: Vec<TypeListing>) -> ListEventTypesResponse {
    ListEventTypesResponse {
        policy: match policy {
            TypesPolicy::Open => "open",
            TypesPolicy::Registered => "registered",
        }
        .into(),
        types: listing
            .into_iter()
            .map(|t| EventType {
                pattern: t.pattern,
                topic: t.topic.unwrap_or_default(),
                datacontenttype: t.datacontenttype.unwrap_or_default(),
                dataschema: t.dataschema.unwrap_or_default(),
                schema: t.schema.and_then(|s| serde_json::from_value(s).ok()),
                schema_origin: t.schema_origin.unwrap_or_default(),
            })
            .collect(),
    }
}
