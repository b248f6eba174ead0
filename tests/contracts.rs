//! Data contracts over real sockets: per-type JSON Schema validation with every violating path
//! named over both protocols (and in Validate, which writes nothing), the registered/open
//! policies, required attributes, routing types to topics on a real broker (batches spanning
//! topics), a missing topic failing readiness, the listing, and reloads that pick up a changed
//! schema file and refuse a broken one while the old schemas keep working.
mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::*;
use event_gateway::Config;
use event_gateway::config::{SchemaSource, TypeEntryConfig, TypesPolicy};
use event_gateway::proto::{
    CloudEvent, IngestEventRequest, ListEventTypesRequest, ValidateRequest,
};
use serde_json::{Value, json};
use tonic_types::StatusExt;

fn entry(ty: &str) -> TypeEntryConfig {
    TypeEntryConfig {
        r#type: ty.into(),
        schema: None,
        topic: None,
        datacontenttype: None,
        dataschema: None,
    }
}

/// A schema with a required field, a nested object and an array of objects.
fn user_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["user_id", "email"],
        "properties": {
            "user_id": {"type": "string"},
            "email": {"type": "string"},
            "address": {"type": "object", "properties": {"zip": {"type": "string"}}},
            "items": {
                "type": "array",
                "items": {"type": "object", "properties": {"price": {"type": "number", "minimum": 0}}}
            }
        }
    })
}

fn local_with(types: Vec<TypeEntryConfig>, policy: TypesPolicy) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    c.types.entries = types;
    c.types.policy = policy;
    c
}

fn user_entry() -> TypeEntryConfig {
    TypeEntryConfig {
        schema: Some(SchemaSource::Inline(user_schema())),
        ..entry("user.created")
    }
}

const BAD_DATA: &str = r#"{"user_id":5,"address":{"zip":123},"items":[{"price":1},{"price":-2}]}"#;

/// The field paths of a REST error reply.
fn rest_fields(body: &Value) -> BTreeSet<String> {
    body["details"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .flat_map(|d| d["fieldViolations"].as_array().unwrap().clone())
        .map(|v| v["field"].as_str().unwrap().to_owned())
        .collect()
}

fn grpc_fields(s: &tonic::Status) -> BTreeSet<String> {
    s.get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

fn event_json(ty: &str, data: &str) -> String {
    format!(r#"{{"type":"{ty}","source":"s","data":{data}}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonconforming_data_names_every_violating_path_over_both_protocols() {
    let gw = TestGateway::start(local_with(vec![user_entry()], TypesPolicy::Open)).await;
    let want: BTreeSet<String> = [
        "event.data",                // required: email
        "event.data.user_id",        // type
        "event.data.address.zip",    // nested object
        "event.data.items[1].price", // array index
    ]
    .into_iter()
    .map(String::from)
    .collect();

    for route in ["/api/v1/events", "/api/v1/events/validate"] {
        let (s, body) = post_json(
            &http(),
            &gw.url(route),
            &event_json("user.created", BAD_DATA),
        )
        .await;
        assert_eq!(s, 400, "{route}: {body}");
        assert_eq!(body["code"], 3);
        assert_eq!(rest_fields(&body), want, "{route}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("minimum"),
            "the keyword is named: {message}"
        );
    }

    let ev: CloudEvent = serde_json::from_str(&event_json("user.created", BAD_DATA)).unwrap();
    let mut client = gw.grpc().await;
    let err = client
        .ingest_event(IngestEventRequest {
            event: Some(ev.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(grpc_fields(&err), want);
    let err = client
        .validate(ValidateRequest { event: Some(ev) })
        .await
        .unwrap_err();
    assert_eq!(grpc_fields(&err), want);

    // In a batch the paths carry the event's index.
    let (s, body) = gw
        .post_batch(&[
            json!({"type":"user.created","source":"s","data":{"user_id":"1","email":"e"}}),
            serde_json::from_str(&event_json("user.created", BAD_DATA)).unwrap(),
        ])
        .await;
    assert_eq!(s, 400);
    assert!(
        rest_fields(&body).contains("events[1].data.items[1].price"),
        "{body}"
    );

    // A conforming event is stored; nothing else was written, Validate included.
    let good = event_json(
        "user.created",
        r#"{"user_id":"1","email":"a@b","items":[{"price":0}]}"#,
    );
    let (s, body) = post_json(&http(), &gw.url("/api/v1/events"), &good).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(gw.log_lines().len(), 1);
    // Schema violations are counted per type, for ingest only (not the dry runs).
    let m = gw.metrics().await;
    assert!(
        m.lines()
            .any(|l| l == "schema_violations_total{type=\"user.created\"} 3"),
        "{m}"
    );
}

/// A hostile event cannot make the reply (or the memory behind it) grow with its size: the
/// schema violations of one event are capped, and the rest are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_violations_per_event_are_capped_and_counted() {
    let types = vec![TypeEntryConfig {
        schema: Some(SchemaSource::Inline(
            json!({"type": "array", "items": {"type": "string"}}),
        )),
        ..entry("list.sent")
    }];
    let gw = TestGateway::start(local_with(types, TypesPolicy::Open)).await;
    let n = 100_000;
    let data = format!("[{}]", vec!["1"; n].join(","));
    let (s, body) = post_json(
        &http(),
        &gw.url("/api/v1/events"),
        &event_json("list.sent", &data),
    )
    .await;
    assert_eq!(s, 400);
    let listed = body["details"][0]["fieldViolations"].as_array().unwrap();
    let cap = event_gateway::core::contracts::MAX_SCHEMA_VIOLATIONS;
    assert_eq!(
        listed.len(),
        cap + 1,
        "the cap, plus one line counting the rest"
    );
    assert_eq!(listed[0]["field"], "event.data[0]");
    let last = listed[cap]["description"].as_str().unwrap();
    assert!(last.contains(&format!("and {} more", n - cap)), "{last}");
    assert!(body.to_string().len() < 16 * 1024, "the reply stays small");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_policy_refuses_unknown_types_and_open_accepts_them() {
    let types = vec![entry("billing.*"), entry("user.created")];
    let gw = TestGateway::start(local_with(types.clone(), TypesPolicy::Registered)).await;
    let (s, body) = post_json(
        &http(),
        &gw.url("/api/v1/events"),
        &event_json("audit.logged", "1"),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        body["details"][0]["fieldViolations"][0]["field"],
        "event.type"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("not a registered event type"),
        "{body}"
    );
    let ev: CloudEvent = serde_json::from_str(&event_json("audit.logged", "1")).unwrap();
    let err = gw.grpc_ingest(ev).await.unwrap_err();
    assert_eq!(grpc_fields(&err), BTreeSet::from(["event.type".to_owned()]));
    // A glob matches.
    let (s, _) = post_json(
        &http(),
        &gw.url("/api/v1/events"),
        &event_json("billing.invoice.paid", "1"),
    )
    .await;
    assert_eq!(s, 200);

    let open = TestGateway::start(local_with(types, TypesPolicy::Open)).await;
    let (s, _) = post_json(
        &http(),
        &open.url("/api/v1/events"),
        &event_json("audit.logged", "1"),
    )
    .await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_attributes_binary_data_and_the_filled_in_dataschema() {
    let types = vec![
        TypeEntryConfig {
            datacontenttype: Some("application/json".into()),
            dataschema: Some("https://example.com/schemas/user.created.json".into()),
            ..user_entry()
        },
        TypeEntryConfig {
            schema: Some(SchemaSource::Inline(json!({"type": "object"}))),
            ..entry("blob.*")
        },
    ];
    let gw = TestGateway::start(local_with(types, TypesPolicy::Open)).await;
    let url = gw.url("/api/v1/events");
    let data = r#"{"user_id":"1","email":"e"}"#;
    // No datacontenttype: refused, naming it.
    let (s, body) = post_json(&http(), &url, &event_json("user.created", data)).await;
    assert_eq!(s, 400);
    assert_eq!(
        rest_fields(&body),
        BTreeSet::from(["event.datacontenttype".to_owned()])
    );
    // The right one (parameters aside), no dataschema: stored with the contract's dataschema.
    let body = format!(
        r#"{{"type":"user.created","source":"s","datacontenttype":"application/json; charset=utf-8","data":{data}}}"#
    );
    let (s, reply) = post_json(&http(), &url, &body).await;
    assert_eq!(s, 200, "{reply}");
    assert_eq!(
        gw.log_lines()[0]["dataschema"],
        "https://example.com/schemas/user.created.json"
    );
    // Another dataschema: refused.
    let body = format!(
        r#"{{"type":"user.created","source":"s","datacontenttype":"application/json","dataschema":"https://example.com/other","data":{data}}}"#
    );
    let (s, reply) = post_json(&http(), &url, &body).await;
    assert_eq!(s, 400);
    assert_eq!(
        rest_fields(&reply),
        BTreeSet::from(["event.dataschema".to_owned()])
    );
    // Binary data cannot match a JSON Schema.
    let (s, reply) = post_json(
        &http(),
        &url,
        r#"{"type":"blob.put","source":"s","data_base64":"AAEC"}"#,
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        reply["message"].as_str().unwrap().contains("binary"),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listing_shows_the_registry_over_both_protocols() {
    let types = vec![
        TypeEntryConfig {
            topic: Some("users".into()),
            ..user_entry()
        },
        entry("billing.*"),
    ];
    let gw = TestGateway::start(local_with(types, TypesPolicy::Registered)).await;
    let rest = gw.get_json("/api/v1/types").await;
    assert_eq!(rest["policy"], "registered");
    let types = rest["types"].as_array().unwrap();
    assert_eq!(types.len(), 2);
    // Most specific first: the exact pattern before the glob.
    assert_eq!(types[0]["pattern"], "user.created");
    assert_eq!(types[0]["topic"], "users");
    // As a google.protobuf.Value: numbers are doubles (`0` reads `0.0`).
    let as_value: pbjson_types::Value = serde_json::from_value(user_schema()).unwrap();
    assert_eq!(types[0]["schema"], serde_json::to_value(as_value).unwrap());
    assert_eq!(types[0]["schemaOrigin"], "inline");
    assert_eq!(types[1]["pattern"], "billing.*");
    let grpc = gw
        .grpc()
        .await
        .list_event_types(ListEventTypesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serde_json::to_value(grpc).unwrap(), rest);
}

fn write(path: &Path, text: &str) {
    // Write then rename, as editors and ConfigMap updates do.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_file_changes_are_picked_up_and_a_broken_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let schemas = dir.path().join("schemas");
    std::fs::create_dir(&schemas).unwrap();
    let schema_path = schemas.join("order.json");
    write(&schema_path, r#"{"type":"object","required":["id"]}"#);
    let types_file = dir.path().join("types.yaml");
    write(
        &types_file,
        "entries:\n  - type: order.placed\n    schema: schemas/order.json\n",
    );
    let mut config = test_config(dir.path());
    config.types.file = Some(types_file.clone());
    let gw = TestGateway::start(config).await;
    let url = gw.url("/api/v1/events");
    let with_id = event_json("order.placed", r#"{"id":1}"#);
    let with_both = event_json("order.placed", r#"{"id":1,"total":2}"#);
    let status = |body: String| {
        let url = url.clone();
        async move { post_json(&http(), &url, &body).await.0 }
    };
    assert_eq!(status(with_id.clone()).await, 200);
    assert_eq!(
        gw.get_json("/api/v1/types").await["types"][0]["schemaOrigin"],
        schema_path.display().to_string()
    );

    // A changed schema file takes effect without a restart.
    write(
        &schema_path,
        r#"{"type":"object","required":["id","total"]}"#,
    );
    wait_until(Duration::from_secs(10), "the new schema", || {
        let s = status(with_id.clone());
        async move { s.await == 400 }
    })
    .await;
    assert_eq!(status(with_both.clone()).await, 200);

    // A broken schema is refused: counted, and the schema in force stays.
    write(&schema_path, r#"{"type": 12}"#);
    gw.wait_metrics_containing("types_reload_failures_total 1")
        .await;
    assert_eq!(status(with_id.clone()).await, 400);
    assert_eq!(status(with_both.clone()).await, 200);

    // So is a types file that does not parse; a good one afterwards takes effect.
    write(&types_file, "entries: [");
    gw.wait_metrics_containing("types_reload_failures_total 2")
        .await;
    write(&schema_path, r#"{"type":"object"}"#);
    write(
        &types_file,
        "entries:\n  - type: order.placed\n    schema: schemas/order.json\n",
    );
    wait_until(Duration::from_secs(10), "the repaired registry", || {
        let body = event_json("order.placed", "{}");
        let s = status(body);
        async move { s.await == 200 }
    })
    .await;
}

/// `$ref` resolves among the schema files, shared definitions included, by relative path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refs_resolve_among_the_schema_files() {
    let dir = tempfile::tempdir().unwrap();
    let schemas = dir.path().join("schemas");
    std::fs::create_dir(&schemas).unwrap();
    write(
        &schemas.join("common.json"),
        r#"{"$defs": {"email": {"type": "string", "pattern": "@"}}}"#,
    );
    write(
        &schemas.join("user.json"),
        r#"{"type": "object", "required": ["email"], "properties": {"email": {"$ref": "common.json#/$defs/email"}}}"#,
    );
    let types_file = dir.path().join("types.yaml");
    write(
        &types_file,
        "entries:\n  - type: user.created\n    schema: schemas/user.json\n",
    );
    let mut config = test_config(dir.path());
    config.types.file = Some(types_file);
    let gw = TestGateway::start(config).await;
    let url = gw.url("/api/v1/events");
    let (s, r) = post_json(
        &http(),
        &url,
        &event_json("user.created", r#"{"email":"a@b"}"#),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let (s, r) = post_json(
        &http(),
        &url,
        &event_json("user.created", r#"{"email":"nope"}"#),
    )
    .await;
    assert_eq!(s, 400, "{r}");
    assert_eq!(
        rest_fields(&r),
        BTreeSet::from(["event.data.email".to_owned()])
    );
    // The shared file is watched too: tightening it takes effect without a restart.
    write(
        &schemas.join("common.json"),
        r#"{"$defs": {"email": {"type": "string", "pattern": "@example[.]com$"}}}"#,
    );
    wait_until(
        Duration::from_secs(10),
        "the shared definition reloaded",
        || {
            let url = url.clone();
            async move {
                post_json(
                    &http(),
                    &url,
                    &event_json("user.created", r#"{"email":"a@b"}"#),
                )
                .await
                .0 == 400
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_that_does_not_compile_stops_startup() {
    let mut config = local_with(
        vec![TypeEntryConfig {
            schema: Some(SchemaSource::Inline(json!({"type": 12}))),
            ..entry("user.created")
        }],
        TypesPolicy::Open,
    );
    let dir = tempfile::tempdir().unwrap();
    config.storage.data_dir = dir.path().to_path_buf();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = event_gateway::serve(config, listener, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("user.created") && err.contains("does not compile"),
        "{err}"
    );
}

fn kafka_with(broker: &Broker, types: Vec<TypeEntryConfig>) -> Config {
    let mut c = Config::default();
    c.server.address = "127.0.0.1:0".into();
    c.rate_limit.enabled = false;
    c.kafka.brokers = vec![broker.bootstrap()];
    c.kafka.topic = "events".into();
    c.kafka.message_timeout = Duration::from_secs(10);
    c.performance.request_timeout = Duration::from_secs(15);
    c.types.entries = types;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_are_routed_to_their_topics_and_batches_span_topics() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start("events", 1).await;
    broker.create_topic("users", 2).await;
    broker.create_topic("orders", 3).await;
    let types = vec![
        TypeEntryConfig {
            topic: Some("users".into()),
            ..user_entry()
        },
        TypeEntryConfig {
            topic: Some("orders".into()),
            ..entry("order.*")
        },
    ];
    let gw = TestGateway::start(kafka_with(&broker, types)).await;
    gw.wait_ready().await;

    let user = |id: &str| json!({"id": id, "type":"user.created","source":"s","subject": id,"data":{"user_id": id,"email":"e"}});
    let order = |id: &str| json!({"id": id, "type":"order.placed","source":"s","subject": id,"data":{"n":1}});
    let (s, r) = post_json(&http(), &gw.url("/api/v1/events"), &user("u0").to_string()).await;
    assert_eq!(s, 200, "{r}");
    let ev: CloudEvent = serde_json::from_value(order("o0")).unwrap();
    gw.grpc_ingest(ev).await.unwrap();
    let (s, r) = gw
        .post_batch(&[user("u1"), order("o1"), user("u2"), order("o2")])
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["storedCount"], 4);
    // An unregistered type (policy open) goes to kafka.topic.
    let (s, _) = post_json(
        &http(),
        &gw.url("/api/v1/events"),
        &event_json("audit.logged", "1"),
    )
    .await;
    assert_eq!(s, 200);

    let users = broker.read_all("users", 3, Duration::from_secs(20));
    let orders = broker.read_all("orders", 3, Duration::from_secs(20));
    let default = broker.read_all("events", 1, Duration::from_secs(20));
    let ids = |rs: &[Record]| -> BTreeSet<String> {
        rs.iter().map(|r| r.headers["ce_id"].clone()).collect()
    };
    assert_eq!(
        ids(&users),
        BTreeSet::from(["u0", "u1", "u2"].map(String::from))
    );
    assert_eq!(
        ids(&orders),
        BTreeSet::from(["o0", "o1", "o2"].map(String::from))
    );
    assert_eq!(default.len(), 1);
    assert_eq!(default[0].headers["ce_type"], "audit.logged");
    // Each batch result's partition and offset is where that event really is, in its topic.
    for result in r["results"].as_array().unwrap() {
        let id = result["id"].as_str().unwrap();
        let records = if id.starts_with('u') { &users } else { &orders };
        let rec = records
            .iter()
            .find(|rec| rec.headers["ce_id"] == id)
            .unwrap();
        assert_eq!(result["partition"], rec.partition, "{id}");
        assert_eq!(result["offset"], rec.offset.to_string(), "{id}");
    }
    let m = gw.metrics().await;
    assert!(
        m.contains("kafka_events_produced_total{topic=\"users\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("kafka_events_produced_total{topic=\"orders\"} 3"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_fails_readiness_naming_it() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start("events", 1).await;
    let types = vec![TypeEntryConfig {
        topic: Some("payments".into()),
        ..entry("payment.*")
    }];
    let gw = TestGateway::start(kafka_with(&broker, types)).await;
    gw.wait_not_ready_naming("payments").await;
    broker.create_topic("payments", 1).await;
    gw.wait_ready().await;
}
