//! The OpenAPI document against the server and the contract: every documented route exists
//! and every route is documented, the document is valid OpenAPI 3 (openapi-spec-validator from
//! PyPI), its event schema has the proto's fields, and the docs page needs no external assets.
mod common;

use std::collections::BTreeSet;

use common::*;
use event_gateway::transport::http::{docs, health};
use event_gateway::transport::routes::ROUTES;

fn server_routes() -> BTreeSet<(String, String)> {
    let mut s = BTreeSet::new();
    for (method, path, _, _) in ROUTES {
        s.insert((method.to_lowercase(), path.to_string()));
    }
    for path in [
        health::ROUTE_HEALTH,
        health::ROUTE_LIVE,
        health::ROUTE_READY,
        health::ROUTE_DETAILED,
        docs::ROUTE_DOCS,
        docs::ROUTE_OPENAPI,
    ] {
        s.insert(("get".to_owned(), path.to_owned()));
    }
    s.insert((
        "get".to_owned(),
        event_gateway::Config::default().metrics.path,
    ));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_routes_are_exactly_the_servers_routes_and_answer() {
    let gw = TestGateway::local().await;
    let doc = gw.get_json(docs::ROUTE_OPENAPI).await;
    assert_eq!(&doc, docs::openapi());
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    assert_eq!(documented, server_routes());
    // Each one answers its method (no 404/405).
    for (method, path) in &documented {
        let status = if method == "post" {
            post_json(&http(), &gw.url(path), SEED_EVENT).await.0
        } else {
            http()
                .get(gw.url(path))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        };
        assert!(status != 404 && status != 405, "{method} {path}: {status}");
    }
}

#[test]
fn the_document_is_valid_openapi() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, serde_json::to_vec(docs::openapi()).unwrap()).unwrap();
    let Some(py) = require(Tool::Python) else {
        return;
    };
    let out = std::process::Command::new(&py)
        .args([
            "-c",
            "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))\nprint('valid')",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", py.display()));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_event_schema_has_every_field_of_the_proto() {
    let pool =
        prost_reflect::DescriptorPool::decode(event_gateway::proto::FILE_DESCRIPTOR_SET).unwrap();
    let msg = pool
        .get_message_by_name("eventgateway.v1.CloudEvent")
        .unwrap();
    let proto: BTreeSet<String> = msg.fields().map(|f| f.name().to_owned()).collect();
    let doc: BTreeSet<String> =
        docs::openapi()["components"]["schemas"]["CloudEvent"]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
    assert_eq!(proto, doc);
}

#[test]
fn reply_schemas_have_every_field_of_the_proto() {
    let pool =
        prost_reflect::DescriptorPool::decode(event_gateway::proto::FILE_DESCRIPTOR_SET).unwrap();
    for name in [
        "IngestEventResponse",
        "IngestBatchRequest",
        "IngestBatchResponse",
        "EventResult",
    ] {
        let msg = pool
            .get_message_by_name(&format!("eventgateway.v1.{name}"))
            .unwrap();
        let proto: BTreeSet<String> = msg.fields().map(|f| f.json_name().to_owned()).collect();
        let doc: BTreeSet<String> = docs::openapi()["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} is documented"))
            .keys()
            .cloned()
            .collect();
        assert_eq!(proto, doc, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_is_self_contained() {
    let gw = TestGateway::local().await;
    let r = http().get(gw.url(docs::ROUTE_DOCS)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = r.text().await.unwrap();
    assert!(html.contains(docs::ROUTE_OPENAPI));
    // The data contracts in force are one click away.
    assert!(html.contains("href=\"/api/v1/types\""), "{html}");
    for external in ["<script src", "<link", "http://", "https://"] {
        assert!(!html.contains(external), "external asset: {external}");
    }
}
