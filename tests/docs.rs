//! The docs against the server and the code. The OpenAPI document: every documented route
//! exists and every route is documented, the document is valid OpenAPI 3
//! (openapi-spec-validator from PyPI), its event schema has the proto's fields, and the docs
//! page needs no external assets. The prose (#27): every configuration key the code has is in
//! docs/configuration.md and every key there exists; the README stays a five-minute read, its
//! links land on files and headings that exist, its REST examples answer with the fields it
//! shows and its production configuration loads; every alert's runbook link lands on a heading
//! of docs/operations.md.
mod common;

use std::collections::BTreeSet;

use common::*;
use event_gateway::transport::http::{docs, health};
use event_gateway::transport::routes::ROUTES;
use serde_json::Value;

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
    // Each field by its proto name and, where it differs, the lowerCamelCase name the
    // proto3 JSON mapping also accepts (`data_base64` / `dataBase64`).
    let proto: BTreeSet<String> = msg
        .fields()
        .flat_map(|f| [f.name().to_owned(), f.json_name().to_owned()])
        .collect();
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

/// The keys of docs/configuration.md's tables: the first cell of each row, `a.b.c`.
fn documented_keys() -> BTreeSet<String> {
    let text = std::fs::read_to_string("docs/configuration.md").unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .map(|l| l.split('`').next().unwrap().to_owned())
        .collect()
}

#[test]
fn docs_configuration_lists_every_key_and_only_keys_that_exist() {
    let code: BTreeSet<String> = event_gateway::config::keys().into_iter().collect();
    let docs = documented_keys();
    let undocumented: Vec<_> = code.difference(&docs).collect();
    let unknown: Vec<_> = docs.difference(&code).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "keys in the code but not in docs/configuration.md: {undocumented:?}\n\
         keys in docs/configuration.md that the code does not have: {unknown:?}"
    );
}

/// GitHub's anchor for a heading: lower case, spaces to hyphens, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_links_a_runbook_in_docs_operations() {
    let ops = std::fs::read_to_string("docs/operations.md").unwrap();
    let anchors: BTreeSet<String> = ops
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string("deploy/prometheus/alerts.yaml").unwrap())
            .unwrap();
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            let url = rule["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} has no runbook_url"));
            let target = url
                .strip_prefix("docs/operations.md#")
                .unwrap_or_else(|| panic!("{name}: {url} is not in docs/operations.md"));
            assert_eq!(
                target,
                anchor(name),
                "{name}: the anchor is the alert's name"
            );
            assert!(anchors.contains(target), "{name}: no heading for #{target}");
            alerts += 1;
        }
    }
    assert!(alerts >= 10, "{alerts}");
}

/// The fenced blocks of `lang` in a Markdown text.
fn fenced(text: &str, lang: &str) -> Vec<String> {
    let open = format!("```{lang}");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_start() == open => current = Some(String::new()),
            Some(block) if line.trim_start() == "```" => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn the_readme_is_a_five_minute_read_whose_links_resolve() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 250,
        "README.md has {lines} lines; the rest belongs in docs/"
    );
    let mut pages = vec![std::path::PathBuf::from("README.md")];
    for entry in std::fs::read_dir("docs").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    // Every relative link of the README and of docs/: the file exists, and a #fragment is
    // one of its headings.
    let mut links = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        let base = page.parent().unwrap();
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let target = &rest[..rest.find(')').unwrap()];
            if target.starts_with("http") {
                continue;
            }
            let (file, fragment) = target.split_once('#').unwrap_or((target, ""));
            let file = if file.is_empty() {
                page.clone()
            } else {
                base.join(file)
            };
            assert!(file.exists(), "{} links {}", page.display(), file.display());
            if !fragment.is_empty() {
                let doc = std::fs::read_to_string(&file).unwrap();
                let headings: BTreeSet<String> = doc
                    .lines()
                    .filter(|l| l.starts_with('#'))
                    .map(|l| anchor(l.trim_start_matches('#')))
                    .collect();
                assert!(
                    headings.contains(fragment),
                    "{} links {}#{fragment}",
                    page.display(),
                    file.display()
                );
            }
            links += 1;
        }
    }
    assert!(
        pages.len() >= 7 && links >= 15,
        "{links} links in {pages:?}"
    );
}

/// The keys of every object in `v`, recursively (array items by their first element), as
/// dotted paths: the shape of a reply, not its values (ids, times and offsets differ).
fn shape(v: &Value, path: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{path}.{k}");
                out.insert(p.clone());
                shape(x, &p, out);
            }
        }
        Value::Array(a) if !a.is_empty() => shape(&a[0], &format!("{path}[]"), out),
        _ => {}
    }
}

/// Each `curl` of the README against a gateway on its local log, as written (headers, body,
/// path), and the reply's shape against the `# {...}` line under it.
#[tokio::test]
async fn the_readme_rest_examples_answer_with_the_fields_shown() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let gw = TestGateway::local().await;
    let client = reqwest::Client::new();
    let mut checked = 0;
    for block in fenced(&readme, "sh") {
        let joined = block.replace("\\\n", " ");
        let mut lines = joined.lines().peekable();
        while let Some(line) = lines.next() {
            if !line.starts_with("curl ") {
                continue;
            }
            let Some(shown) = lines.peek().and_then(|l| l.strip_prefix("# ")) else {
                continue;
            };
            let shown: Value = serde_json::from_str(shown).unwrap();
            let args = shlex::split(line).unwrap_or_else(|| panic!("{line}"));
            let mut req = None;
            let mut headers = Vec::new();
            let mut body = None;
            let mut it = args.iter().skip(1);
            while let Some(a) = it.next() {
                match a.as_str() {
                    "-s" => {}
                    "-X" => assert_eq!(it.next().unwrap(), "POST"),
                    "-H" => headers.push(it.next().unwrap().clone()),
                    "-d" => body = Some(it.next().unwrap().clone()),
                    url => req = Some(url.strip_prefix("localhost:8090").unwrap().to_owned()),
                }
            }
            let mut r = client
                .post(gw.url(&req.unwrap()))
                .body(body.expect("every README curl sends a body"));
            for h in &headers {
                let (k, v) = h.split_once(": ").unwrap();
                r = r.header(k, v);
            }
            let reply: Value = r.send().await.unwrap().json().await.unwrap();
            let (mut want, mut got) = (BTreeSet::new(), BTreeSet::new());
            shape(&shown, "", &mut want);
            shape(&reply, "", &mut got);
            assert_eq!(got, want, "{line}\nreplied {reply}");
            checked += 1;
        }
    }
    assert!(checked >= 4, "{checked} examples");
    gw.stop().await;
}

/// The README's production configuration is one the gateway loads (every key exists, every
/// value parses and passes the checks; the files it names are read at start, not here).
#[test]
fn the_readme_production_configuration_loads() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let blocks = fenced(&readme, "yaml");
    assert_eq!(blocks.len(), 1, "one production configuration in README.md");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, &blocks[0]).unwrap();
    let config = event_gateway::Config::load(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.auth.required && !config.kafka.brokers.is_empty());
    assert!(
        blocks[0].lines().count() <= 12,
        "a ten-line production configuration"
    );
}
