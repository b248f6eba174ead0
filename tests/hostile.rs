//! Hostile and broken input that must get a client error naming what was wrong, never a
//! server error: protobuf messages that do not decode.
mod common;

use bytes::{Buf, BufMut};
use common::*;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Sends bytes as they are: the message a broken or hostile client would frame.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_that_does_not_decode_is_invalid_argument_not_internal() {
    let gw = TestGateway::local().await;
    let cases: &[(&str, Vec<u8>, &str)] = &[
        // event (field 1) says 5 bytes follow; 3 do.
        (
            "truncated",
            vec![0x0a, 0x05, 0x12, 0x03, b'a'],
            "buffer underflow",
        ),
        // field 1 with wire type 7, which does not exist.
        ("bad wire type", vec![0x0f], "wire type"),
        // event.source (field 2 of CloudEvent) holding bytes that are not UTF-8.
        (
            "invalid UTF-8",
            vec![0x0a, 0x04, 0x12, 0x02, 0xff, 0xfe],
            "UTF-8",
        ),
        // a length that is an 11-byte varint.
        (
            "varint overflow",
            [vec![0x0a], vec![0xff; 11]].concat(),
            "varint",
        ),
    ];
    for method in ["IngestEvent", "IngestBatch", "Validate"] {
        for (what, bytes, says) in cases {
            let mut grpc = tonic::client::Grpc::new(gw.channel().await);
            grpc.ready().await.unwrap();
            let path = format!("/eventgateway.v1.EventGatewayService/{method}")
                .parse()
                .unwrap();
            let err = grpc
                .unary(tonic::Request::new(bytes.clone()), path, RawCodec)
                .await
                .unwrap_err();
            assert_eq!(
                err.code(),
                tonic::Code::InvalidArgument,
                "{method}, {what}: {err:?}"
            );
            assert!(
                err.message().contains("does not decode"),
                "{method}, {what}: {err:?}"
            );
            assert!(
                err.message().to_lowercase().contains(&says.to_lowercase()),
                "{method}, {what}: the message says what was wrong: {err:?}"
            );
        }
    }
    // Nothing was stored, and the gateway answers normally afterwards.
    assert!(gw.log_lines().is_empty());
    gw.grpc_ingest_seed().await;
    assert_eq!(gw.log_lines().len(), 1);
}

/// An event with `n` extensions whose names break the rules (upper case).
fn many_bad_extensions(n: usize) -> serde_json::Value {
    let ext: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| (format!("Bad{i}"), serde_json::Value::from("v")))
        .collect();
    serde_json::json!({"type": "t", "source": "s", "extensions": ext})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn violation_lists_are_capped_in_both_renderings() {
    use tonic_types::StatusExt as _;
    let gw = TestGateway::local().await;
    // REST: the first 100 violations and one entry counting the rest; a short message.
    let body = many_bad_extensions(5000).to_string();
    let r = post_raw(&http(), &gw.url("/api/v1/events"), &body).await;
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(
        text.len() < 64 * 1024,
        "a {} byte error for a {} byte request",
        text.len(),
        body.len()
    );
    let reply: serde_json::Value = serde_json::from_str(&text).unwrap();
    let fv = reply["details"][0]["fieldViolations"].as_array().unwrap();
    assert_eq!(fv.len(), 101);
    assert_eq!(fv[100]["field"], "event");
    assert!(
        fv[100]["description"]
            .as_str()
            .unwrap()
            .starts_with("and 4900 more violations"),
        "{}",
        fv[100]
    );
    assert!(
        reply["message"].as_str().unwrap().len() < 2048,
        "{}",
        reply["message"]
    );

    // gRPC: the status fits a client's 8 KiB metadata limit, and still says how many.
    let ev: event_gateway::proto::CloudEvent =
        serde_json::from_value(many_bad_extensions(5000)).unwrap();
    let err = gw
        .grpc()
        .await
        .ingest_event(event_gateway::proto::IngestEventRequest {
            event: Some(ev),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let trailer_bytes = err.message().len() + err.details().len().div_ceil(3) * 4;
    assert!(
        trailer_bytes < 8 * 1024,
        "{trailer_bytes} bytes of grpc-message and details"
    );
    let bad = err.get_details_bad_request().expect("BadRequest details");
    let last = bad.field_violations.last().unwrap();
    let listed = bad.field_violations.len() - 1;
    assert!(listed >= 20, "{listed} listed");
    assert_eq!(
        last.description,
        format!(
            "and {} more violations, not listed here (REST replies list up to 100)",
            5000 - listed
        )
    );

    // A batch shares one cap, counted under `events`.
    let events: Vec<serde_json::Value> = (0..50).map(|_| many_bad_extensions(10)).collect();
    let (status, reply) = gw.post_batch(&events).await;
    assert_eq!(status, 400);
    let fv = reply["details"][0]["fieldViolations"].as_array().unwrap();
    assert_eq!(fv.len(), 101);
    assert_eq!(fv[100]["field"], "events");
    assert!(
        fv[100]["description"]
            .as_str()
            .unwrap()
            .starts_with("and 400 more")
    );
    assert!(gw.log_lines().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_inflate_the_metrics_with_methods_or_paths() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let gw = TestGateway::local().await;
    let before = gw.metrics().await.len();
    // 100 custom HTTP methods of 64 KiB each, over plain HTTP/1.
    for i in 0..100 {
        let method = format!("X{i}{}", "M".repeat(64 * 1024));
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(
            format!("{method} /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply).await;
    }
    // 300 distinct gRPC method paths, some long.
    let mut grpc = tonic::client::Grpc::new(gw.channel().await);
    for i in 0..300 {
        grpc.ready().await.unwrap();
        let path = format!(
            "/eventgateway.v1.EventGatewayService/M{i}{}",
            "x".repeat(i % 3 * 100)
        )
        .parse()
        .unwrap();
        let err = grpc
            .unary(tonic::Request::new(vec![]), path, RawCodec)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented);
    }
    let text = gw.metrics().await;
    assert!(
        text.len() < before + 256 * 1024,
        "the scrape grew from {before} to {} bytes",
        text.len()
    );
    assert!(
        text.contains(r#"method="other""#),
        "unknown methods collapse into one value"
    );
    assert!(
        !text.contains("MMMMMMMM"),
        "no method's text is a label value"
    );
    let longest = text
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(longest <= 128, "a label value of {longest} bytes");
}
