//! The contract's reply messages, built from the core's domain outcomes. Both adapters send
//! these (gRPC as protobuf, REST as pbjson JSON), so a reply cannot differ between protocols;
//! a failed batch item's code comes from `status.rs`.
use crate::proto::{
    EventResult, IngestBatchResponse, IngestEventResponse, Outcome, ValidateResponse,
};
use crate::service::{Ingested, ItemOutcome, Validated};
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
