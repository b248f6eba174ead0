//! The core API over real sockets with the embedded local log: REST and gRPC on one port,
//! parity between them, error mapping, health, reflection, and the contract's routes.
mod common;

use common::*;
use event_gateway::proto::{CloudEvent, IngestBatchRequest, IngestEventRequest, ValidateRequest};
use event_gateway::transport::routes::ROUTES;
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_event_over_rest_is_stored_in_the_local_log() {
    let gw = TestGateway::local().await;
    let (status, reply) = post_json(&http(), &gw.url("/api/v1/events"), SEED_EVENT).await;
    assert_eq!(status, 200, "{reply}");
    let id = reply["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    assert_eq!(reply["partition"], 0);
    assert_eq!(reply["offset"], "0");
    assert!(reply["time"].as_str().unwrap().starts_with("20"));

    let lines = gw.log_lines();
    assert_eq!(lines.len(), 1);
    let line = &lines[0];
    assert_eq!(line["id"], id);
    assert_eq!(line["specversion"], "1.0");
    assert_eq!(line["type"], "user.created");
    assert_eq!(line["source"], "user-service");
    assert_eq!(line["subject"], "user-123");
    assert_eq!(
        line["data"],
        json!({"user_id":"123","email":"user@example.com"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_of_every_json_kind_round_trips() {
    let gw = TestGateway::local().await;
    let values = [
        json!({"nested": {"a": [1, 2, {"b": null}]}, "n": -17, "f": 0.25}),
        json!([1, "two", 3.5, false, null, 9007199254740991_i64]),
        json!("just a string"),
        json!(12345),
        json!(-0.5),
        json!(true),
    ];
    for (i, v) in values.iter().enumerate() {
        let body = json!({"type": "t.x", "source": "s", "id": format!("e{i}"), "data": v});
        let (status, reply) =
            post_json(&http(), &gw.url("/api/v1/events"), &body.to_string()).await;
        assert_eq!(status, 200, "{reply}");
    }
    let lines = gw.log_lines();
    assert_eq!(lines.len(), values.len());
    for (line, v) in lines.iter().zip(&values) {
        assert_eq!(&line["data"], v);
    }
}

/// Over REST, `data` is stored byte for byte as sent: key order, number spelling and integers
/// a double cannot hold all survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_data_is_stored_exactly_as_sent() {
    let gw = TestGateway::local().await;
    let data = r#"{"z":1.0,"a":[1e3,12345678901234567890,-0],"m":{"y":"\u00e9"}}"#;
    let body = format!(r#"{{"type":"t","source":"s","data":{data}}}"#);
    let (status, reply) = post_json(&http(), &gw.url("/api/v1/events"), &body).await;
    assert_eq!(status, 200, "{reply}");
    let text = gw.log_text();
    assert!(text.contains(&format!(r#""data":{data}}}"#)), "{text}");
}

/// Over gRPC, `data` is a `google.protobuf.Value`: an object's members are stored in the
/// order they came on the wire (protobuf maps have none of their own), numbers as JSON
/// clients write them; objects or lists inside it that do not decode make an invalid event,
/// named by its `data` field, not an undecodable message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_data_keeps_the_wire_order_and_malformed_data_is_named() {
    use event_gateway::proto::WireValue;
    use event_gateway::proto::cloud_event::Payload;
    use prost::Message as _;
    use prost::encoding::bytes;
    /// A Value's bytes: a `Struct` (field 5) of map entries (key 1, value 2) in this order.
    fn object(members: &[(&[u8], Vec<u8>)]) -> Vec<u8> {
        let mut fields = Vec::new();
        for (k, v) in members {
            let mut entry = Vec::new();
            bytes::encode(1, &k.to_vec(), &mut entry);
            bytes::encode(2, v, &mut entry);
            bytes::encode(1, &entry, &mut fields);
        }
        let mut value = Vec::new();
        bytes::encode(5, &fields, &mut value);
        value
    }
    let scalar = |v: pbjson_types::Value| v.encode_to_vec();
    let event = |id: &str, data: &[u8]| CloudEvent {
        id: id.into(),
        r#type: "t.x".into(),
        source: "s".into(),
        payload: Some(Payload::Data(WireValue::decode(data).unwrap())),
        ..Default::default()
    };
    let gw = TestGateway::local().await;
    let mut client = gw.grpc().await;

    let list = pbjson_types::Value::from(vec![1000.0.into(), true.into()]);
    let inner = object(&[
        (b"y", scalar("\u{e9}".to_string().into())),
        (b"x", scalar((-0.5).into())),
    ]);
    let data = object(&[
        (b"z", scalar(1.0.into())),
        (b"a", scalar(list)),
        (b"m", inner),
    ]);
    client
        .ingest_event(IngestEventRequest {
            event: Some(event("ordered", &data)),
            ..Default::default()
        })
        .await
        .unwrap();
    let text = gw.log_text();
    assert!(
        text.contains(r#""data":{"z":1,"a":[1000,true],"m":{"y":"é","x":-0.5}}"#),
        "{text}"
    );

    // A key that is not UTF-8, two objects deep.
    let malformed = object(&[(b"k", object(&[(b"\xff", scalar(1.0.into()))]))]);
    let err = client
        .ingest_event(IngestEventRequest {
            event: Some(event("malformed", &malformed)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("event.data: is not a google.protobuf.Value"),
        "{}",
        err.message()
    );
    // In a batch, the event is named by its place, like any invalid event.
    let err = client
        .ingest_batch(IngestBatchRequest {
            events: vec![event("fine", &data), event("bad", &malformed)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let br = err.get_details_bad_request().unwrap();
    assert_eq!(br.field_violations[0].field, "events[1].data");
    assert_eq!(gw.log_lines().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_and_camel_case_field_names_are_accepted() {
    let gw = TestGateway::local().await;
    let body = r#"{"type":"t","source":"s","id":"b64","datacontenttype":"image/png","data_base64":"AAEC"}"#;
    let (status, reply) = post_json(&http(), &gw.url("/api/v1/events"), body).await;
    assert_eq!(status, 200, "{reply}");
    let body = r#"{"type":"t","source":"s","id":"b64c","dataBase64":"AAEC"}"#;
    let (status, reply) = post_json(&http(), &gw.url("/api/v1/events"), body).await;
    assert_eq!(status, 200, "{reply}");
    let lines = gw.log_lines();
    assert_eq!(lines[0]["data_base64"], "AAEC");
    assert_eq!(lines[0]["datacontenttype"], "image/png");
    assert_eq!(lines[1]["data_base64"], "AAEC");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_serves_all_three_rpcs() {
    let gw = TestGateway::local().await;
    let mut client = gw.grpc().await;
    let event: CloudEvent = serde_json::from_str(SEED_EVENT).unwrap();

    let r = client
        .ingest_event(IngestEventRequest {
            event: Some(event.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.id.is_empty());
    assert_eq!(r.offset, 0);

    let v = client
        .validate(ValidateRequest {
            event: Some(event.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v.valid);
    assert!(v.size_bytes > 0 && v.size_bytes < v.max_event_size_bytes);

    let b = client
        .ingest_batch(IngestBatchRequest {
            events: vec![event.clone(), event],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.stored_count, 2);
    assert_eq!(b.failed_count, 0);
    assert_eq!(
        b.results.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(b.results[1].index, 1);
    // Validate wrote nothing: one single event plus two batch events.
    assert_eq!(gw.log_lines().len(), 3);
}

/// What an RPC did, in protocol-neutral terms, for comparing gRPC with REST.
#[derive(Debug, PartialEq)]
struct Outcome {
    code: i32,
    violations: Vec<(String, String)>,
    reply: Value,
}

fn violations_from_json(body: &Value) -> Vec<(String, String)> {
    body["details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .flat_map(|d| d["fieldViolations"].as_array().unwrap().clone())
        .map(|v| {
            (
                v["field"].as_str().unwrap().to_owned(),
                v["description"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A gRPC call's result as an [`Outcome`]: the reply as pbjson JSON, or the status.
fn grpc_outcome<T: serde::Serialize>(r: Result<tonic::Response<T>, tonic::Status>) -> Outcome {
    match r {
        Ok(r) => Outcome {
            code: 0,
            violations: vec![],
            reply: serde_json::to_value(r.into_inner()).unwrap(),
        },
        Err(s) => outcome_from_status(s),
    }
}

fn outcome_from_status(s: tonic::Status) -> Outcome {
    let violations = s
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default();
    Outcome {
        code: s.code() as i32,
        violations,
        reply: Value::Null,
    }
}

async fn rest_outcome(gw: &TestGateway, route: &str, body: &str) -> Outcome {
    let (status, reply) = post_json(&http(), &gw.url(route), body).await;
    if status == 200 {
        Outcome {
            code: 0,
            violations: vec![],
            reply,
        }
    } else {
        Outcome {
            code: reply["code"].as_i64().unwrap() as i32,
            violations: violations_from_json(&reply),
            reply: Value::Null,
        }
    }
}

/// Every fixture goes through gRPC and REST: same code, same violations, same reply, and
/// the same stored event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_rest_give_the_same_result() {
    let single_fixtures = [
        r#"{"id":"p1","time":"2026-01-02T03:04:05Z","type":"user.created","source":"user-service","subject":"user-123","data":{"user_id":"123","n":1.5}}"#,
        r#"{"id":"p2","time":"2026-01-02T03:04:05Z","type":"t","source":"s","datacontenttype":"text/plain","data":"hello","extensions":{"partitionkey":"k"}}"#,
        r#"{"type":"","source":""}"#,
        r#"{"id":"bad id","type":"a b","source":"s","dataschema":"relative","extensions":{"Bad":"x"}}"#,
        r#"{"id":"p3","time":"2026-01-02T03:04:05Z","type":"t","source":"s","specversion":"0.3"}"#,
    ];
    let batch_fixtures = [
        r#"{"events":[{"id":"b1","time":"2026-01-02T03:04:05Z","type":"a","source":"s"},{"id":"b2","time":"2026-01-02T03:04:05Z","type":"b","source":"s","data":[1,2]}]}"#,
        r#"{"events":[{"type":"a","source":"s"},{"type":"","source":"s"},{"type":"c","source":""}]}"#,
        r#"{"events":[]}"#,
    ];
    // Two gateways, so each protocol's stored events can be compared line by line.
    let via_grpc = TestGateway::local().await;
    let via_rest = TestGateway::local().await;
    let mut client = via_grpc.grpc().await;

    for body in single_fixtures {
        let event: CloudEvent = serde_json::from_str(body).unwrap();
        for (route, grpc) in [("/api/v1/events", true), ("/api/v1/events/validate", false)] {
            let event = Some(event.clone());
            let g = if grpc {
                grpc_outcome(
                    client
                        .ingest_event(IngestEventRequest {
                            event,
                            ..Default::default()
                        })
                        .await,
                )
            } else {
                grpc_outcome(client.validate(ValidateRequest { event }).await)
            };
            let r = rest_outcome(&via_rest, route, body).await;
            assert_eq!(g, r, "fixture {body} on {route}");
        }
    }
    for body in batch_fixtures {
        let batch: IngestBatchRequest = serde_json::from_str(body).unwrap();
        let g = grpc_outcome(client.ingest_batch(batch).await);
        let r = rest_outcome(&via_rest, "/api/v1/events/batch", body).await;
        assert_eq!(g, r, "fixture {body}");
    }
    let (g, r) = (via_grpc.log_lines(), via_rest.log_lines());
    assert_eq!(g.len(), 4, "two single events and one batch of two stored");
    assert_eq!(g, r, "both protocols stored the same events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_names_the_field_over_both_protocols() {
    let gw = TestGateway::local().await;
    let body = r#"{"events":[{"type":"ok","source":"s"},{"type":"ok","source":"s"},{"type":"ok","source":"s"},{"type":"","source":"s"}]}"#;
    let (status, reply) = post_json(&http(), &gw.url("/api/v1/events/batch"), body).await;
    assert_eq!(status, 400);
    assert_eq!(reply["code"], 3);
    assert_eq!(
        violations_from_json(&reply),
        vec![(
            "events[3].type".to_owned(),
            "is required and must not be empty".to_owned()
        )]
    );
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("events[3].type")
    );

    let mut client = gw.grpc().await;
    let batch: IngestBatchRequest = serde_json::from_str(body).unwrap();
    let err = client.ingest_batch(batch).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let br = err.get_details_bad_request().unwrap();
    assert_eq!(br.field_violations[0].field, "events[3].type");
    assert!(
        gw.log_lines().is_empty(),
        "nothing of a rejected batch is written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_are_specific() {
    let gw = TestGateway::local().await;
    let c = http();

    // Malformed JSON says where.
    let (s, r) = post_json(&c, &gw.url("/api/v1/events"), r#"{"type":"a","#).await;
    assert_eq!(s, 400);
    assert!(
        r["message"].as_str().unwrap().contains("line 1 column"),
        "{r}"
    );
    // A misspelt field is named.
    let (s, r) = post_json(
        &c,
        &gw.url("/api/v1/events"),
        r#"{"tpye":"a","source":"s"}"#,
    )
    .await;
    assert_eq!(s, 400);
    assert!(r["message"].as_str().unwrap().contains("tpye"), "{r}");
    // A wrong type is named.
    let (s, r) = post_json(&c, &gw.url("/api/v1/events"), r#"{"type":5,"source":"s"}"#).await;
    assert_eq!(s, 400, "{r}");

    // Wrong content type: 415.
    let r = c
        .post(gw.url("/api/v1/events"))
        .header("content-type", "text/plain")
        .body(SEED_EVENT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("application/json")
    );
    // CloudEvents structured content type is JSON too.
    let r = c
        .post(gw.url("/api/v1/events"))
        .header(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )
        .body(SEED_EVENT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Unknown route: 404; wrong method: 405 with Allow.
    let r = c.get(gw.url("/api/v1/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("/api/v1/nothing")
    );
    let r = c.get(gw.url("/api/v1/events")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let r = c
        .delete(gw.url("/api/v1/events/batch"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_without_being_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.performance.max_request_size = bytesize::ByteSize::kib(1);
    let gw = TestGateway::start(config).await;
    let c = http();
    let big = format!(
        r#"{{"type":"t","source":"s","data":"{}"}}"#,
        "x".repeat(4096)
    );
    // Declared length over the limit.
    let (s, r) = post_json(&c, &gw.url("/api/v1/events"), &big).await;
    assert_eq!(s, 413, "{r}");
    assert!(r["message"].as_str().unwrap().contains("1024"), "{r}");
    // Chunked body with no declared length: cut at the limit.
    let stream = futures::stream::iter(
        (0..2).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 1024]))),
    );
    let r = c
        .post(gw.url("/api/v1/events"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // Over gRPC the same limit applies to the message.
    let mut client = gw.grpc().await;
    let event: CloudEvent = serde_json::from_str(&big).unwrap();
    let err = client
        .ingest_event(IngestEventRequest {
            event: Some(event),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(gw.log_lines().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_size_limit_is_enforced_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_event_size = bytesize::ByteSize::b(300);
    let gw = TestGateway::start(config).await;
    let body = format!(
        r#"{{"events":[{{"type":"t","source":"s"}},{{"type":"t","source":"s","data":"{}"}}]}}"#,
        "y".repeat(400)
    );
    let (s, r) = post_json(&http(), &gw.url("/api/v1/events/batch"), &body).await;
    assert_eq!(s, 400);
    let v = violations_from_json(&r);
    assert_eq!(v[0].0, "events[1]");
    assert!(v[0].1.contains("limits.max_event_size"), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_is_a_dry_run_over_both_protocols() {
    let gw = TestGateway::local().await;
    let (s, r) = post_json(&http(), &gw.url("/api/v1/events/validate"), SEED_EVENT).await;
    assert_eq!(s, 200);
    assert_eq!(r["valid"], true);
    let (s, r) = post_json(
        &http(),
        &gw.url("/api/v1/events/validate"),
        r#"{"type":"x","source":""}"#,
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(violations_from_json(&r)[0].0, "event.source");
    let mut client = gw.grpc().await;
    let event: CloudEvent = serde_json::from_str(SEED_EVENT).unwrap();
    client
        .validate(ValidateRequest { event: Some(event) })
        .await
        .unwrap();
    assert!(gw.log_lines().is_empty());
    assert!(gw.log_text().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_over_rest_and_grpc() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let gw = TestGateway::local().await;
    gw.wait_ready().await;
    let c = http();
    for path in [
        "/health",
        "/health/live",
        "/health/ready",
        "/health/detailed",
    ] {
        let r = c.get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let d = gw.get_json("/health/detailed").await;
    assert_eq!(d["sink"]["sink"], "local-log");
    assert_eq!(d["ready"], true);
    assert!(d["config"]["server"]["address"].is_string());

    for service in ["", "eventgateway.v1.EventGatewayService"] {
        wait_grpc_health(gw.channel().await, service, ServingStatus::Serving).await;
    }
    let mut health = HealthClient::new(gw.channel().await);
    let err = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_describe_the_service() {
    use tokio_stream::StreamExt;
    let gw = TestGateway::local().await;
    let channel = gw.channel().await;

    // v1
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel.clone());
        let reqs = vec![
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(
                    "eventgateway.v1.EventGatewayService".into(),
                )),
            },
        ];
        let mut stream = client
            .server_reflection_info(tokio_stream::iter(reqs))
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
            panic!("expected a service list");
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(
            names.contains(&"eventgateway.v1.EventGatewayService"),
            "{names:?}"
        );
        assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
        let second = stream.next().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(fd)) = second.message_response else {
            panic!("expected file descriptors");
        };
        let files: Vec<prost_types::FileDescriptorProto> = fd
            .file_descriptor_proto
            .iter()
            .map(|b| prost::Message::decode(b.as_slice()).unwrap())
            .collect();
        let file = files
            .iter()
            .find(|f| f.package() == "eventgateway.v1")
            .expect("the contract's file is returned");
        let methods: Vec<_> = file.service[0]
            .method
            .iter()
            .map(|m| m.name().to_owned())
            .collect();
        assert_eq!(
            methods,
            vec![
                "IngestEvent",
                "IngestBatch",
                "Validate",
                "ListEventTypes",
                "IngestStream"
            ]
        );
    }
    // v1alpha
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel);
        let reqs = vec![ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }];
        let mut stream = client
            .server_reflection_info(tokio_stream::iter(reqs))
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
            panic!("expected a service list");
        };
        assert!(
            list.service
                .iter()
                .any(|s| s.name == "eventgateway.v1.EventGatewayService")
        );
    }
}

/// The routes the server answers are exactly the contract's google.api.http annotations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_routes_match_the_contract_annotations() {
    let pool =
        prost_reflect::DescriptorPool::decode(event_gateway::proto::FILE_DESCRIPTOR_SET).unwrap();
    let svc = pool
        .get_service_by_name(event_gateway::proto::SERVICE_NAME)
        .unwrap();
    let http_ext = pool.get_extension_by_name("google.api.http").unwrap();
    let mut from_contract = Vec::new();
    for m in svc.methods() {
        let opts = m.options();
        let rule = opts.get_extension(&http_ext);
        let rule = rule
            .as_message()
            .expect("every RPC has a google.api.http rule");
        // The one pattern set among post/get (prost-reflect reports an unset string as "").
        let (method, path) = ["post", "get"]
            .iter()
            .find_map(|m| {
                let v = rule.get_field_by_name(m).unwrap();
                let p = v.as_str().unwrap().to_owned();
                (!p.is_empty()).then(|| (m.to_uppercase(), p))
            })
            .expect("a post or get rule");
        let body = rule.get_field_by_name("body").unwrap();
        from_contract.push((
            method,
            path,
            m.name().to_owned(),
            body.as_str().unwrap().to_owned(),
        ));
    }
    let served: Vec<_> = ROUTES
        .iter()
        .map(|(method, r, m, b)| {
            (
                method.to_string(),
                r.to_string(),
                m.to_string(),
                b.to_string(),
            )
        })
        .collect();
    assert_eq!(from_contract, served);

    // And each declared route really answers: 400 for an empty event, 200 for a listing, 426
    // for a plain GET of IngestStream's WebSocket (tests/streaming.rs speaks WebSocket to it).
    let gw = TestGateway::local().await;
    for (method, route, rpc, _) in &from_contract {
        let s = if method == "POST" {
            post_json(&http(), &gw.url(route), "{}").await.0
        } else {
            http()
                .get(gw.url(route))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        };
        let want = match (method.as_str(), rpc.as_str()) {
            ("POST", _) => 400,
            (_, "IngestStream") => 426,
            _ => 200,
        };
        assert_eq!(s, want, "{route}");
    }
}
