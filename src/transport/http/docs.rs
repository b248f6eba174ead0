//! API documentation served by the binary itself: the OpenAPI 3 document of the REST API
//! (`docs/openapi.yaml`, compiled in) as JSON, and a readable page that renders it with no
//! external assets. A test keeps the document and the server's routes equal.
use std::sync::OnceLock;

use axum::Router;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use http::header;

pub const ROUTE_DOCS: &str = "/api/docs";
pub const ROUTE_OPENAPI: &str = "/api/docs/openapi.json";

/// The document's source, as written.
pub const OPENAPI_YAML: &str = include_str!("../../../docs/openapi.yaml");

/// The document as JSON, parsed once. figment's YAML provider does the parsing: it is
/// already a dependency (for config), which spares a direct one on the deprecated serde_yaml.
pub fn openapi() -> &'static serde_json::Value {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    DOC.get_or_init(|| {
        use figment::providers::{Format, Yaml};
        figment::Figment::from(Yaml::string(OPENAPI_YAML))
            .extract()
            .expect("docs/openapi.yaml is valid YAML (checked by tests)")
    })
}

pub fn router() -> Router {
    Router::new()
        .route(ROUTE_DOCS, get(page))
        .route(ROUTE_OPENAPI, get(document))
}

async fn document() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(openapi()).expect("a JSON value serializes"),
    )
        .into_response()
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Event Gateway API</title>
<style>
body{font:15px/1.5 system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0}.op{border:1px solid #ddd;border-radius:6px;margin:1em 0;padding:.5em 1em}
.m{font-weight:bold;text-transform:uppercase;display:inline-block;min-width:4em}
.post{color:#0a6}.get{color:#06c}code,pre{background:#f6f6f6;border-radius:4px}
pre{padding:.6em;overflow:auto;font-size:13px}.codes span{margin-right:.8em}
details{margin:.3em 0}
</style></head><body>
<h1>Event Gateway API</h1><p id="desc"></p>
<p>Data contracts in force: <a href="/api/v1/types"><code>GET /api/v1/types</code></a></p>
<div id="ops"></div>
<h2>Schemas</h2><div id="schemas"></div>
<script>
fetch('/api/docs/openapi.json').then(r => r.json()).then(doc => {
  const esc = s => String(s ?? '').replace(/[&<>]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;'}[c]));
  document.getElementById('desc').innerHTML = '<pre>' + esc(doc.info.description) + '</pre>';
  const ops = document.getElementById('ops');
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const body = op.requestBody ? Object.values(op.requestBody.content)[0] : null;
      const codes = Object.entries(op.responses).map(([c, r]) => {
        const ref = r.$ref ? r.$ref.split('/').pop() : '';
        const d = ref ? doc.components.responses[ref].description : r.description;
        return '<span title="' + esc(d) + '"><b>' + c + '</b> ' + esc(ref || d) + '</span>';
      }).join('');
      ops.insertAdjacentHTML('beforeend', '<div class="op"><span class="m ' + method + '">' + method +
        '</span> ' + (method === 'get' && !path.includes('{')
        ? '<a href="' + esc(path) + '"><code>' + esc(path) + '</code></a>'
        : '<code>' + esc(path) + '</code>') + ' — ' + esc(op.summary) +
        (op.description ? '<p>' + esc(op.description) + '</p>' : '') +
        (body && body.example ? '<details><summary>example request</summary><pre>' +
          esc(JSON.stringify(body.example, null, 2)) + '</pre></details>' : '') +
        '<div class="codes">' + codes + '</div></div>');
    }
  }
  const sc = document.getElementById('schemas');
  for (const [name, s] of Object.entries(doc.components.schemas)) {
    sc.insertAdjacentHTML('beforeend', '<details><summary><code>' + esc(name) + '</code></summary><pre>' +
      esc(JSON.stringify(s, null, 2)) + '</pre></details>');
  }
});
</script></body></html>
"#;
