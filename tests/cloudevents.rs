//! The CloudEvents HTTP binding on the REST routes and compressed request bodies, over real
//! sockets: binary mode (headers percent-decoded, JSON or binary bodies, errors naming the
//! header), batch mode on both routes with all-or-nothing validation, the same stored event
//! whichever mode carried it, and gzip / deflate / zstd bodies held to the request limit after
//! decompression (a gzip bomb gets 413), unknown encodings 415 naming the supported ones.
mod common;

use std::io::Write as _;

use common::*;
use serde_json::{Value, json};

const FIXED: &str = "2026-01-02T03:04:05Z";

async fn post(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = http().post(gw.url(path)).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn fields(body: &Value) -> Vec<String> {
    let mut f: Vec<String> = body["details"][0]["fieldViolations"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v["field"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    f.sort();
    f
}

fn binary_headers(id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ce-specversion", "1.0".into()),
        ("ce-id", id.into()),
        ("ce-type", "user.created".into()),
        ("ce-source", "https://example.com/svc".into()),
        ("ce-subject", "user%201".into()),
        ("ce-time", FIXED.into()),
        ("ce-partitionkey", "k-1".into()),
        ("content-type", "application/json".into()),
    ]
}

fn as_refs<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    h.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

const DATA: &str = r#"{"z":1.0,"a":[12345678901234567890]}"#;

/// The stored line of each mode, without its id: equal events, equal records.
fn without_id(mut line: Value) -> Value {
    line.as_object_mut().unwrap().remove("id");
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_structured_and_batch_modes_store_the_same_event() {
    let gw = TestGateway::local().await;
    let (s, _, r) = post(
        &gw,
        "/api/v1/events",
        &as_refs(&binary_headers("bin")),
        DATA.into(),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["id"], "bin");

    let structured = format!(
        r#"{{"specversion":"1.0","id":"str","type":"user.created","source":"https://example.com/svc","subject":"user 1","time":"{FIXED}","datacontenttype":"application/json","partitionkey":"k-1","data":{DATA}}}"#
    );
    let (s, _, r) = post(
        &gw,
        "/api/v1/events",
        &[(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )],
        structured.clone().into(),
    )
    .await;
    assert_eq!(s, 200, "{r}");

    // Batch mode, on the batch route and on the single-event route.
    for (path, id) in [("/api/v1/events/batch", "b1"), ("/api/v1/events", "b2")] {
        let batch = format!(
            "[{}]",
            structured.replace(r#""id":"str""#, &format!(r#""id":"{id}""#))
        );
        let (s, _, r) = post(
            &gw,
            path,
            &[("content-type", "application/cloudevents-batch+json")],
            batch.into(),
        )
        .await;
        assert_eq!(s, 200, "{path}: {r}");
        assert_eq!(r["storedCount"], 1);
        assert_eq!(r["results"][0]["id"], id);
    }

    let lines = gw.log_lines();
    assert_eq!(lines.len(), 4);
    // data byte for byte, whichever mode.
    let text = gw.log_text();
    assert_eq!(
        text.matches(&format!(r#""data":{DATA}"#)).count(),
        4,
        "{text}"
    );
    let first = without_id(lines[0].clone());
    for line in &lines[1..] {
        assert_eq!(without_id(line.clone()), first);
    }
    assert_eq!(first["subject"], "user 1", "percent-decoded");
    assert_eq!(first["partitionkey"], "k-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_bodies_and_errors() {
    let gw = TestGateway::local().await;
    // A body of another media type is binary data.
    let mut h = binary_headers("png");
    h.retain(|(k, _)| *k != "content-type");
    h.push(("content-type", "image/png".into()));
    let (s, _, r) = post(
        &gw,
        "/api/v1/events",
        &as_refs(&h),
        vec![0x89, b'P', b'N', b'G'],
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(gw.log_lines()[0]["data_base64"], "iVBORw==");
    assert_eq!(gw.log_lines()[0]["datacontenttype"], "image/png");

    // Missing ce-type and a bad ce-source: the header names, as the core would name fields.
    let mut h = binary_headers("e1");
    h.retain(|(k, _)| *k != "ce-type");
    h.retain(|(k, _)| *k != "ce-source");
    h.push(("ce-source", "not a uri".into()));
    let (s, _, r) = post(&gw, "/api/v1/events", &as_refs(&h), DATA.into()).await;
    assert_eq!(s, 400);
    assert_eq!(fields(&r), ["ce-source", "ce-type"]);
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("ce-type: is required"),
        "{r}"
    );

    // Bad percent-encoding, a bad time, a JSON content type with a body that is not JSON.
    let mut h = binary_headers("e2");
    h.retain(|(k, _)| !matches!(*k, "ce-subject" | "ce-time"));
    h.push(("ce-subject", "%C3%28".into()));
    h.push(("ce-time", "yesterday".into()));
    let (s, _, r) = post(&gw, "/api/v1/events", &as_refs(&h), b"{not json".to_vec()).await;
    assert_eq!(s, 400);
    assert_eq!(fields(&r), ["body", "ce-subject", "ce-time"]);

    // Validate takes binary mode too, and writes nothing.
    let (s, _, r) = post(
        &gw,
        "/api/v1/events/validate",
        &as_refs(&binary_headers("v")),
        DATA.into(),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["valid"], true);
    assert_eq!(gw.log_lines().len(), 1);
    // A binary-mode event to the batch route is refused with what to do instead.
    let (s, _, r) = post(
        &gw,
        "/api/v1/events/batch",
        &as_refs(&binary_headers("x")),
        DATA.into(),
    )
    .await;
    assert_eq!(s, 415, "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("POST /api/v1/events"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_invalid_event_stores_nothing() {
    let gw = TestGateway::local().await;
    let batch = json!([
        {"specversion":"1.0","id":"1","type":"a","source":"s"},
        {"specversion":"1.0","id":"2","type":"","source":"s"},
    ]);
    let (s, _, r) = post(
        &gw,
        "/api/v1/events/batch",
        &[("content-type", "application/cloudevents-batch+json")],
        batch.to_string().into(),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(fields(&r), ["events[1].type"]);
    assert!(gw.log_lines().is_empty());
    // Validate checks one event: a batch body is refused, saying what it takes.
    let (s, _, r) = post(
        &gw,
        "/api/v1/events/validate",
        &[("content-type", "application/cloudevents-batch+json")],
        batch.to_string().into(),
    )
    .await;
    assert_eq!(s, 415, "{r}");
    assert!(r["message"].as_str().unwrap().contains("one event"), "{r}");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_bodies_are_decompressed_within_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.performance.max_request_size = bytesize::ByteSize::mib(1);
    let gw = TestGateway::start(config).await;
    let json_ct = ("content-type", "application/json");

    let gz = gzip(SEED_EVENT.as_bytes());
    let (s, _, r) = post(
        &gw,
        "/api/v1/events",
        &[json_ct, ("content-encoding", "gzip")],
        gz,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let mut d = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    d.write_all(SEED_EVENT.as_bytes()).unwrap();
    let (s, _, r) = post(
        &gw,
        "/api/v1/events",
        &[json_ct, ("content-encoding", "deflate")],
        d.finish().unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let z = zstd::encode_all(SEED_EVENT.as_bytes(), 3).unwrap();
    let (s, _, r) = post(
        &gw,
        "/api/v1/events",
        &[json_ct, ("content-encoding", "zstd")],
        z,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    // Binary mode and batches too.
    let batch = format!(r#"{{"events":[{SEED_EVENT},{SEED_EVENT}]}}"#);
    let (s, _, r) = post(
        &gw,
        "/api/v1/events/batch",
        &[json_ct, ("content-encoding", "gzip")],
        gzip(batch.as_bytes()),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(gw.log_lines().len(), 5);

    // A gzip bomb: 64 MiB of zeros in about 64 KiB, against a 1 MiB limit.
    let bomb = gzip(&vec![b' '; 64 << 20]);
    assert!(bomb.len() < 1 << 20);
    let (s, _, r) = post(
        &gw,
        "/api/v1/events",
        &[json_ct, ("content-encoding", "gzip")],
        bomb,
    )
    .await;
    assert_eq!(s, 413, "{r}");
    assert!(r["message"].as_str().unwrap().contains("1048576"), "{r}");
    // A corrupt stream is the client's mistake.
    let (s, _, r) = post(
        &gw,
        "/api/v1/events",
        &[json_ct, ("content-encoding", "gzip")],
        b"not gzip".to_vec(),
    )
    .await;
    assert_eq!(s, 400, "{r}");

    // Unknown encoding: 415 naming the supported ones, also in Accept-Encoding.
    let (s, h, r) = post(
        &gw,
        "/api/v1/events",
        &[json_ct, ("content-encoding", "br")],
        SEED_EVENT.into(),
    )
    .await;
    assert_eq!(s, 415);
    assert_eq!(h["accept-encoding"], "gzip, deflate, zstd");
    assert!(r["message"].as_str().unwrap().contains("`br`"), "{r}");
    assert_eq!(gw.log_lines().len(), 5);
}
