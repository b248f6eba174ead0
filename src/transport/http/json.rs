//! The ingest replies as JSON, written directly: `IngestEvent`'s and `IngestBatch`'s REST
//! replies and the WebSocket's per-event reports. Each writes the bytes pbjson's generated
//! `Serialize` writes (the contract's JSON mapping, every field present, 64-bit integers as
//! strings), which the unit tests below hold byte for byte over every field's cases. Through
//! serde_json each key and value is escaped a byte at a time and each 64-bit integer becomes
//! a `String` first: about 2K instructions per reply or per batch item (#26). The other
//! replies (validate, types, errors) are rare or small and stay with serde_json.
use crate::core::event::{write_json_str, write_rfc3339};
use crate::proto::{
    AckMode, EventError, EventResult, IngestBatchResponse, IngestEventResponse,
    IngestStreamResponse, Outcome,
};

/// `IngestEvent`'s reply.
pub fn event_response(r: &IngestEventResponse) -> Vec<u8> {
    let mut out = Vec::with_capacity(192);
    out.extend_from_slice(b"{\"id\":");
    write_json_str(&mut out, &r.id);
    int(&mut out, b",\"partition\":", r.partition);
    quoted(&mut out, b",\"offset\":", r.offset);
    if let Some(ts) = r.time {
        // As pbjson writes a Timestamp: chrono's RFC 3339 with the offset as `+00:00`.
        let t = chrono::DateTime::<chrono::Utc>::try_from(ts).expect("replies always serialize");
        out.extend_from_slice(b",\"time\":\"");
        write_rfc3339(&mut out, &t, false);
        out.push(b'"');
    }
    out.extend_from_slice(b",\"ack\":\"");
    out.extend_from_slice(ack_name(r.ack).as_bytes());
    out.push(b'"');
    if let Some(p) = r.spool_position {
        quoted(&mut out, b",\"spoolPosition\":", p);
    }
    boolean(&mut out, b",\"duplicate\":", r.duplicate);
    out.push(b'}');
    out
}

/// `IngestBatch`'s reply.
pub fn batch_response(r: &IngestBatchResponse) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + 160 * r.results.len());
    out.extend_from_slice(b"{\"results\":[");
    for (i, item) in r.results.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        event_result(&mut out, item);
    }
    out.push(b']');
    int(&mut out, b",\"storedCount\":", r.stored_count);
    int(&mut out, b",\"failedCount\":", r.failed_count);
    int(&mut out, b",\"spooledCount\":", r.spooled_count);
    out.extend_from_slice(b",\"ack\":\"");
    out.extend_from_slice(ack_name(r.ack).as_bytes());
    out.extend_from_slice(b"\"}");
    out
}

/// One report of a WebSocket stream, as a text frame's text.
pub fn stream_response(r: &IngestStreamResponse) -> String {
    let mut out = Vec::with_capacity(160);
    quoted(&mut out, b"{\"sequence\":", r.sequence);
    outcome(
        &mut out,
        &r.id,
        r.outcome,
        r.partition,
        r.offset,
        r.error.as_ref(),
    );
    out.push(b'}');
    String::from_utf8(out).expect("JSON written from str is UTF-8")
}

fn event_result(out: &mut Vec<u8>, r: &EventResult) {
    int(out, b"{\"index\":", r.index);
    outcome(
        out,
        &r.id,
        r.outcome,
        r.partition,
        r.offset,
        r.error.as_ref(),
    );
    if let Some(p) = r.spool_position {
        quoted(out, b",\"spoolPosition\":", p);
    }
    boolean(out, b",\"duplicate\":", r.duplicate);
    out.push(b'}');
}

/// The fields a batch item's result and a stream's report share, in their order:
/// `,"id":…,"outcome":…,"partition":…,"offset":…` and the error when there is one (code,
/// message, violations: rare, through pbjson).
fn outcome(
    out: &mut Vec<u8>,
    id: &str,
    outcome: i32,
    partition: i32,
    offset: i64,
    error: Option<&EventError>,
) {
    out.extend_from_slice(b",\"id\":");
    write_json_str(out, id);
    out.extend_from_slice(b",\"outcome\":\"");
    out.extend_from_slice(outcome_name(outcome).as_bytes());
    out.push(b'"');
    int(out, b",\"partition\":", partition);
    quoted(out, b",\"offset\":", offset);
    if let Some(e) = error {
        out.extend_from_slice(b",\"error\":");
        serde_json::to_writer(&mut *out, e).expect("replies always serialize");
    }
}

/// A key, then a 32-bit integer as a JSON number (as the contract's JSON mapping writes it).
fn int(out: &mut Vec<u8>, key: &[u8], n: i32) {
    out.extend_from_slice(key);
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A key, then a 64-bit integer as a JSON string (as the contract's JSON mapping writes it).
fn quoted(out: &mut Vec<u8>, key: &[u8], n: impl itoa::Integer) {
    out.extend_from_slice(key);
    out.push(b'"');
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.push(b'"');
}

fn boolean(out: &mut Vec<u8>, key: &[u8], b: bool) {
    out.extend_from_slice(key);
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// The enum's name as pbjson writes it; a number the contract does not define cannot be
/// written (pbjson fails too), and the gateway never builds one.
fn ack_name(ack: i32) -> &'static str {
    AckMode::try_from(ack)
        .expect("replies always serialize")
        .as_str_name()
}

fn outcome_name(outcome: i32) -> &'static str {
    Outcome::try_from(outcome)
        .expect("replies always serialize")
        .as_str_name()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::FieldViolation;

    /// Ids that are plain, need escapes at either end or in the middle, are empty, or
    /// carry multi-byte characters.
    const IDS: &[&str] = &[
        "",
        "0195d0c2-7a3b-7c41-9a55-1f0e7b6c2d11",
        "a\"b",
        "\\",
        "tab\there",
        "\u{1}",
        "é€😀",
        "seventeen chars!!",
        "new\nline at the end of a long id that spans chunks\n",
    ];

    fn error() -> EventError {
        EventError {
            code: "INVALID_ARGUMENT".into(),
            message: "type: must not be empty".into(),
            retryable: false,
            field_violations: vec![FieldViolation {
                field: "events[3].type".into(),
                description: "must not be \"empty\"".into(),
            }],
        }
    }

    fn same<T: serde::Serialize>(ours: &[u8], r: &T) {
        let theirs = serde_json::to_vec(r).unwrap();
        assert_eq!(
            String::from_utf8_lossy(ours),
            String::from_utf8_lossy(&theirs)
        );
    }

    #[test]
    fn event_response_writes_what_pbjson_writes() {
        let times = [
            None,
            Some(pbjson_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            Some(pbjson_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 120_000_000,
            }),
            Some(pbjson_types::Timestamp {
                seconds: 0,
                nanos: 1,
            }),
            Some(pbjson_types::Timestamp {
                seconds: -1,
                nanos: 7_000,
            }),
            Some(pbjson_types::Timestamp {
                seconds: 253_402_300_800, // 10000-01-01: chrono writes it whole
                nanos: 0,
            }),
        ];
        for id in IDS {
            for time in times {
                for (ack, spool_position) in [
                    (AckMode::Stored, None),
                    (AckMode::Spooled, Some(0)),
                    (AckMode::Spooled, Some(u64::MAX)),
                    (AckMode::Unspecified, None),
                ] {
                    for (partition, offset) in [(0, 0), (7, 123_456), (i32::MIN, i64::MIN)] {
                        for duplicate in [false, true] {
                            let r = IngestEventResponse {
                                id: (*id).into(),
                                partition,
                                offset,
                                time,
                                ack: ack as i32,
                                spool_position,
                                duplicate,
                            };
                            same(&event_response(&r), &r);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn batch_response_writes_what_pbjson_writes() {
        let item = |index: usize, id: &str| EventResult {
            index: index as i32,
            id: id.into(),
            outcome: [Outcome::Stored, Outcome::Failed, Outcome::Spooled][index % 3] as i32,
            partition: index as i32 % 4,
            offset: index as i64 * 1_000_003 - 5,
            error: (index % 3 == 1).then(error),
            spool_position: (index % 3 == 2).then_some(index as u64 * 77),
            duplicate: index.is_multiple_of(2),
        };
        for n in [0, 1, 2, IDS.len(), 30] {
            let r = IngestBatchResponse {
                results: (0..n).map(|i| item(i, IDS[i % IDS.len()])).collect(),
                stored_count: n as i32,
                failed_count: -1,
                spooled_count: i32::MAX,
                ack: [AckMode::Stored, AckMode::Spooled][n % 2] as i32,
            };
            same(&batch_response(&r), &r);
        }
    }

    #[test]
    fn stream_response_writes_what_pbjson_writes() {
        for (i, id) in IDS.iter().enumerate() {
            for outcome in [
                Outcome::Unspecified,
                Outcome::Stored,
                Outcome::Failed,
                Outcome::Spooled,
            ] {
                let r = IngestStreamResponse {
                    sequence: [0, 1, u64::MAX][i % 3],
                    id: (*id).into(),
                    outcome: outcome as i32,
                    partition: i as i32,
                    offset: -(i as i64),
                    error: (outcome == Outcome::Failed).then(error),
                };
                same(stream_response(&r).as_bytes(), &r);
            }
        }
    }
}
