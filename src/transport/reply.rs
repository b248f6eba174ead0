//! The contract's reply messages, built from the core's domain outcomes. Both adapters send
//! these (gRPC as protobuf, REST as pbjson JSON), so a reply cannot differ between protocols;
//! a failed batch item's code comes from `status.rs`.
use crate::config::TypesPolicy;
use crate::contracts::TypeListing;
use crate::proto::{
    EventResult, EventType, IngestBatchResponse, IngestEventResponse, IngestStreamResponse,
    ListEventTypesResponse, Outcome, ValidateResponse,
};
use crate::service::{Ingested, ItemOutcome, Validated};
use crate::stream::Report;
use crate::transport::status::item_error;

pub fn event_reply(i: Ingested) -> IngestEventResponse {
    IngestEventResponse {
        id: i.id,
        partition: i.stored.partition,
        offset: i.stored.offset,
        time: Some(i.time.into()),
    }
}

pub fn validate_reply(v: Validated) -> ValidateResponse {
    ValidateResponse {
        valid: true,
        size_bytes: v.size as u32,
        max_event_size_bytes: v.max_event_size as u32,
    }
}

/// The `IngestBatch` reply, one result per event in request order.
pub fn batch_reply(items: Vec<ItemOutcome>) -> IngestBatchResponse {
    let mut stored = 0;
    let results: Vec<EventResult> = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item.result {
            Ok(s) => {
                stored += 1;
                EventResult {
                    index: index as i32,
                    id: item.id,
                    outcome: Outcome::Stored as i32,
                    partition: s.partition,
                    offset: s.offset,
                    error: None,
                }
            }
            Err(e) => EventResult {
                index: index as i32,
                id: item.id,
                outcome: Outcome::Failed as i32,
                partition: 0,
                offset: 0,
                error: Some(item_error(e)),
            },
        })
        .collect();
    let failed = results.len() as i32 - stored;
    IngestBatchResponse {
        results,
        stored_count: stored,
        failed_count: failed,
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
