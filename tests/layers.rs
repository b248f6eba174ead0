//! The layers of `src/`, checked: every `crate::` path in every file (a `use` or a path in
//! code) must point at a module its own module may import, by the table below, which is the
//! one ARCHITECTURE.md draws. The table itself must admit no circle, so arrows only point down.
//! The core also names none of the wire's crates (tonic, axum, http, hyper, tower) nor
//! rdkafka. A failure names the file, the line and the path, and what that module may import.
//!
//! syn parses the files (comments, strings and nested `use` groups are its business, not a
//! hand-written scanner's); `span-locations` gives the line numbers.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Each layer: the module prefix it covers (longest prefix wins) and the layers it may import
/// besides itself. Top to bottom.
const LAYERS: &[(&str, &[&str])] = &[
    // Wiring: builds everything and serves it.
    (
        "server",
        &[
            "idp",
            "transport::http",
            "transport::grpc",
            "transport::tls",
            "transport::stack",
            "transport::shared",
            "sink",
            "spool",
            "core",
            "telemetry",
            "config",
            "proto",
        ],
    ),
    // The two faces: neither imports the other.
    (
        "transport::http",
        &[
            "transport::stack",
            "transport::shared",
            "spool",
            "core",
            "telemetry",
            "config",
            "proto",
        ],
    ),
    (
        "transport::grpc",
        &[
            "transport::stack",
            "transport::shared",
            "core",
            "telemetry",
            "config",
            "proto",
        ],
    ),
    (
        "transport::tls",
        &["transport::stack", "core", "telemetry", "config"],
    ),
    // The one stack both faces share.
    (
        "transport::stack",
        &["transport::shared", "core", "telemetry", "config", "proto"],
    ),
    // What the faces and the stack render with: routes, status codes, replies, bounded arrays.
    (
        "transport::shared",
        &["core", "telemetry", "config", "proto"],
    ),
    // Identity providers: fetches the JWT signing keys and hands them to the core.
    ("idp", &["core", "telemetry", "config"]),
    // Storage: a sink may use the spool (the local log is one); the spool knows no sink.
    ("sink", &["spool", "core", "telemetry", "config", "proto"]),
    ("spool", &["core", "telemetry", "config"]),
    // The core: no wire, no storage (it defines the ports storage implements).
    ("core", &["telemetry", "config", "proto"]),
    ("telemetry", &["config"]),
    ("config", &[]),
    ("proto", &[]),
];

/// Modules of `transport/` that are not a face or the stack: the rendering both share.
const TRANSPORT_SHARED: &[&str] = &["routes", "status", "reply", "bounded"];

/// External crates the core must not name.
const WIRE_CRATES: &[&str] = &[
    "tonic",
    "axum",
    "http",
    "hyper",
    "tower",
    "tower_http",
    "rdkafka",
];

/// The layer of a module path (`["core", "service"]` is `core`).
fn layer_of(module: &[String]) -> Option<&'static str> {
    let first = module.first()?.as_str();
    if first == "transport" {
        return Some(match module.get(1).map(String::as_str) {
            Some("http") => "transport::http",
            Some("grpc") => "transport::grpc",
            Some("tls") => "transport::tls",
            Some("stack") => "transport::stack",
            Some(m) if TRANSPORT_SHARED.contains(&m) => "transport::shared",
            // `transport` itself (mod.rs) declares its children: it is the face's folder.
            _ => return None,
        });
    }
    LAYERS
        .iter()
        .map(|(name, _)| *name)
        .find(|name| *name == first)
}

fn allowed(layer: &str) -> &'static [&'static str] {
    LAYERS
        .iter()
        .find(|(name, _)| *name == layer)
        .map(|(_, may)| *may)
        .unwrap_or_else(|| panic!("layer {layer} is not in LAYERS"))
}

/// The module a source file is: `src/core/service.rs` is `core::service`, `src/spool/mod.rs`
/// is `spool`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_owned());
    }
    parts
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.expect("read src").into_path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect()
}

/// Every `crate::…` path (its segments after `crate`) and every first segment of a `use`,
/// with its line.
#[derive(Default)]
struct Paths {
    crate_paths: Vec<(usize, Vec<String>)>,
    use_roots: Vec<(usize, String)>,
}

impl Paths {
    /// The leaves of a `use` tree below `prefix`: `crate::{a::b, c}` gives `a::b` and `c`.
    fn use_tree(&mut self, tree: &syn::UseTree, prefix: &mut Vec<String>) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(&p.tree, prefix);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.leaf(prefix, Some(&n.ident), n.ident.span()),
            syn::UseTree::Rename(r) => self.leaf(prefix, Some(&r.ident), r.ident.span()),
            syn::UseTree::Glob(g) => self.leaf(prefix, None, g.star_token.span),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(t, prefix);
                }
            }
        }
    }

    fn leaf(&mut self, prefix: &[String], name: Option<&syn::Ident>, span: proc_macro2::Span) {
        let mut full: Vec<String> = prefix.to_vec();
        if let Some(n) = name {
            full.push(n.to_string());
        }
        let line = span.start().line;
        if let Some(root) = full.first() {
            self.use_roots.push((line, root.clone()));
        }
        if full.first().is_some_and(|s| s == "crate") {
            self.crate_paths.push((line, full[1..].to_vec()));
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        // `use ::tonic::…` has the crate as its first segment all the same.
        let mut prefix = Vec::new();
        self.use_tree(&u.tree, &mut prefix);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if segments.first().is_some_and(|s| s == "crate") {
            let line = p.segments[0].ident.span().start().line;
            self.crate_paths.push((line, segments[1..].to_vec()));
        }
        syn::visit::visit_path(self, p);
    }
}

/// Everything wrong with `src/` by the table, one line per offending path.
fn violations(src: &Path) -> Vec<String> {
    let mut files = rust_files(src);
    files.sort();
    let mut found = Vec::new();
    for file in &files {
        let module = module_of(src, file);
        let Some(layer) = layer_of(&module) else {
            continue; // lib.rs, main.rs, transport/mod.rs: they only declare or start
        };
        let text = std::fs::read_to_string(file).expect("read source");
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut paths = Paths::default();
        paths.visit_file(&ast);
        let shown = file.display();
        for (line, path) in &paths.crate_paths {
            let Some(target) = layer_of(path) else {
                continue; // crate root items (re-exports) and `crate::transport` itself
            };
            if target != layer && !allowed(layer).contains(&target) {
                found.push(format!(
                    "{shown}:{line}: `crate::{}` is in {target}, but {layer} may import only {:?}",
                    path.join("::"),
                    allowed(layer)
                ));
            }
        }
        if layer == "core" {
            for (line, root) in &paths.use_roots {
                if WIRE_CRATES.contains(&root.as_str()) {
                    found.push(format!(
                        "{shown}:{line}: the core uses `{root}`: it names no wire or Kafka crate"
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn every_import_points_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(
        found.is_empty(),
        "imports against the layers (tests/layers.rs, ARCHITECTURE.md):\n{}",
        found.join("\n")
    );
}

/// The table is a ladder: following "may import" never comes back to where it started.
#[test]
fn the_layer_table_has_no_circle() {
    fn visit(layer: &'static str, path: &mut Vec<&'static str>, done: &mut BTreeMap<&str, bool>) {
        assert!(
            !path.contains(&layer),
            "the layers circle: {} -> {layer}",
            path.join(" -> ")
        );
        if done.contains_key(layer) {
            return;
        }
        path.push(layer);
        for next in allowed(layer) {
            visit(next, path, done);
        }
        path.pop();
        done.insert(layer, true);
    }
    let mut done = BTreeMap::new();
    for (layer, _) in LAYERS {
        visit(layer, &mut Vec::new(), &mut done);
    }
}

/// The check itself catches what it is for: a core file that imports the spool, a sink, a
/// face, or tonic, in any spelling `use` allows.
#[test]
fn a_wrong_way_import_is_named_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("core")).unwrap();
    std::fs::create_dir_all(src.join("spool")).unwrap();
    std::fs::write(
        src.join("core/service.rs"),
        "use crate::core::event::Event;\n\
         use crate::{config, spool::Spool};\n\
         use tonic::Status;\n\
         fn f() { let _ = crate::transport::http::rest::router; }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("spool/mod.rs"),
        "use crate::core::error::Error;\nuse crate::sink::Stored;\n",
    )
    .unwrap();
    let found = violations(src);
    let lines: Vec<&str> = found
        .iter()
        .map(|f| f.rsplit_once('/').map_or(f.as_str(), |(_, tail)| tail))
        .collect();
    assert_eq!(found.len(), 4, "{found:#?}");
    assert!(lines[0].starts_with("service.rs:2: `crate::spool::Spool` is in spool"));
    assert!(lines[1].starts_with("service.rs:4: `crate::transport::http::rest::router`"));
    assert!(lines[2].starts_with("service.rs:3: the core uses `tonic`"));
    assert!(lines[3].starts_with("mod.rs:2: `crate::sink::Stored` is in sink"));
}
