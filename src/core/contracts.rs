//! Data contracts: the event-type registry. Each entry matches event types (exactly, or by a
//! glob such as `billing.*`; the most specific entry wins) and may carry a JSON Schema for
//! `data`, the topic the type goes to, a required `datacontenttype` and a `dataschema` URI.
//! Schemas are compiled once, when the registry is loaded (at startup, and again when a
//! watched file changes), never per request; `$ref` resolves only among the registry's own
//! schema files, never over the network. A reload that fails keeps the registry in force.
//! Part of the core: it knows nothing of transports, and the validation rules consult it.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use globset::{Glob, GlobMatcher};
use serde::Serialize;
use serde_json::Value;

use crate::config::{SchemaSource, TypeEntryConfig, TypesConfig, TypesPolicy};

/// Why a registry could not be loaded; names the file or entry.
#[derive(Debug, thiserror::Error)]
#[error("event types: {0}")]
pub struct ContractError(String);

/// A compiled JSON Schema and where it came from.
pub struct Schema {
    /// The schema as written, for `GET /api/v1/types`.
    pub document: Value,
    /// `inline` or the file it was read from.
    pub origin: String,
    validator: jsonschema::Validator,
}

/// One schema violation: the path inside `data` (`.items[2].price`, empty for `data` itself)
/// and the keyword's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    pub path: String,
    pub message: String,
}

/// Schema violations listed per event; past this, one more line says how many were left out.
/// Without a cap, a 512 KiB array of wrong-typed items would produce about 250,000 violations
/// (tens of MiB of error text) for one event.
pub const MAX_SCHEMA_VIOLATIONS: usize = 20;

impl Schema {
    /// How `data` breaks the schema: the first [`MAX_SCHEMA_VIOLATIONS`] violations, and the
    /// number of the others (counted, not kept: memory stays bounded by the cap).
    pub fn violations(&self, data: &Value) -> (Vec<SchemaViolation>, usize) {
        let mut errors = self.validator.iter_errors(data);
        let listed = errors
            .by_ref()
            .take(MAX_SCHEMA_VIOLATIONS)
            .map(|e| {
                let mut path = String::new();
                for segment in &e.instance_path {
                    match segment {
                        jsonschema::paths::LocationSegment::Property(p) => {
                            path.push('.');
                            path.push_str(&p);
                        }
                        jsonschema::paths::LocationSegment::Index(i) => {
                            path.push_str(&format!("[{i}]"));
                        }
                    }
                }
                let keyword = e.schema_path.as_str().rsplit('/').next().unwrap_or("");
                SchemaViolation {
                    path,
                    message: format!("{e} (schema keyword `{keyword}`)"),
                }
            })
            .collect();
        (listed, errors.count())
    }
}

/// What the registry says about one type pattern.
pub struct TypeContract {
    pub pattern: String,
    /// None for an exact pattern.
    glob: Option<GlobMatcher>,
    pub topic: Option<Arc<str>>,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    pub schema: Option<Schema>,
}

impl TypeContract {
    fn matches(&self, ty: &str) -> bool {
        match &self.glob {
            None => self.pattern == ty,
            Some(g) => g.is_match(ty),
        }
    }

    /// Exact patterns first, then globs with more literal characters first.
    fn specificity(&self) -> (bool, usize) {
        let literal = self
            .pattern
            .chars()
            .filter(|c| !matches!(c, '*' | '?' | '[' | ']' | '{' | '}'))
            .count();
        (self.glob.is_none(), literal)
    }
}

/// The registered types and the policy for the others.
pub struct Registry {
    pub policy: TypesPolicy,
    /// Most specific first.
    contracts: Vec<TypeContract>,
    /// Every schema file read, for the reload watcher.
    files: Vec<PathBuf>,
}

/// One entry as `GET /api/v1/types` lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TypeListing {
    pub pattern: String,
    pub topic: Option<String>,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    pub schema: Option<Value>,
    pub schema_origin: Option<String>,
}

fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', '{'])
}

impl Registry {
    /// An open registry with no entries: every type is accepted, nothing is checked.
    pub fn empty() -> Self {
        Self {
            policy: TypesPolicy::Open,
            contracts: Vec::new(),
            files: Vec::new(),
        }
    }

    /// Reads the inline entries and the types file, reads and compiles every schema.
    pub fn load(config: &TypesConfig) -> Result<Self, ContractError> {
        let mut files = Vec::new();
        let entries = entries_of(config, &mut files)?;
        let documents = schema_documents(&entries, &mut files)?;
        let mut contracts = Vec::with_capacity(entries.len());
        let mut seen = std::collections::HashSet::new();
        for (entry, base, declared_in) in entries {
            if !seen.insert(entry.r#type.clone()) {
                return Err(ContractError(format!(
                    "type pattern `{}` is declared twice (last in {declared_in})",
                    entry.r#type
                )));
            }
            contracts.push(compile_entry(entry, &base, &declared_in, &documents)?);
        }
        // Stable: among equally specific globs the one declared first wins.
        contracts.sort_by_key(|c| std::cmp::Reverse(c.specificity()));
        Ok(Self {
            policy: config.policy,
            contracts,
            files,
        })
    }

    /// The most specific entry matching `ty`.
    pub fn lookup(&self, ty: &str) -> Option<&TypeContract> {
        self.contracts.iter().find(|c| c.matches(ty))
    }

    /// Every topic an entry routes to.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.contracts.iter().filter_map(|c| c.topic.as_deref())
    }

    pub fn listing(&self) -> Vec<TypeListing> {
        self.contracts
            .iter()
            .map(|c| TypeListing {
                pattern: c.pattern.clone(),
                topic: c.topic.as_deref().map(str::to_owned),
                datacontenttype: c.datacontenttype.clone(),
                dataschema: c.dataschema.clone(),
                schema: c.schema.as_ref().map(|s| s.document.clone()),
                schema_origin: c.schema.as_ref().map(|s| s.origin.clone()),
            })
            .collect()
    }
}

/// A schema file's JSON; `what` says what the file is, for the error.
fn read_json(path: &Path, what: &str) -> Result<Value, ContractError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ContractError(format!("cannot read {what} at {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| ContractError(format!("{what} at {} is not JSON: {e}", path.display())))
}

/// The types file: `{entries: [...]}`, the shape of `types.entries`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TypesFile {
    entries: Vec<TypeEntryConfig>,
}

/// YAML through figment's provider (already a dependency for the config), which spares a
/// direct dependency on the deprecated serde_yaml.
fn parse_types_file(text: &str) -> Result<Vec<TypeEntryConfig>, String> {
    use figment::providers::{Format, Yaml};
    figment::Figment::from(Yaml::string(text))
        .extract::<TypesFile>()
        .map(|f| f.entries)
        .map_err(|e| e.to_string())
}

/// The registry in force, swapped whole on reload, and what reloads did.
pub struct Contracts {
    current: ArcSwap<Registry>,
    config: TypesConfig,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

impl Contracts {
    pub fn load(config: &TypesConfig) -> Result<Arc<Self>, ContractError> {
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(Registry::load(config)?),
            config: config.clone(),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        }))
    }

    /// `types_reloads_total` and `types_reload_failures_total`.
    pub fn register_instruments(self: &Arc<Self>, meter: &opentelemetry::metrics::Meter) {
        let this = self.clone();
        meter
            .u64_observable_counter("types_reloads")
            .with_description("Event-type registry reloads that took effect")
            .with_callback(move |o| o.observe(this.reloads.load(Ordering::Relaxed), &[]))
            .build();
        let this = self.clone();
        meter
            .u64_observable_counter("types_reload_failures")
            .with_description("Event-type registry reloads refused (the previous one stays)")
            .with_callback(move |o| o.observe(this.reload_failures.load(Ordering::Relaxed), &[]))
            .build();
    }

    pub fn current(&self) -> arc_swap::Guard<Arc<Registry>> {
        self.current.load()
    }

    /// Loads the files again: on success the new registry takes over; on failure the old one
    /// stays, and the error is logged and counted.
    pub fn reload(&self) -> Result<(), ContractError> {
        match Registry::load(&self.config) {
            Ok(r) => {
                self.current.store(Arc::new(r));
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!("event types reloaded");
                Ok(())
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "event types not reloaded; the previous ones stay in force");
                Err(e)
            }
        }
    }

    /// Watches the types file and every schema file (`watch::poll`), reloading when one
    /// changes. Returns None when there is nothing to watch.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> Option<notify::PollWatcher> {
        let files = self.current().files.clone();
        let this = Arc::downgrade(self);
        crate::config::watch::poll(&files, interval, "event type files", move || {
            if let Some(c) = this.upgrade() {
                let _ = c.reload();
            }
        })
    }
}

/// An entry, the directory its schema paths are relative to, and where it was declared.
type Declared = (TypeEntryConfig, PathBuf, String);

/// The inline entries, then the types file's (whose path joins `files`, to be watched).
fn entries_of(
    config: &TypesConfig,
    files: &mut Vec<PathBuf>,
) -> Result<Vec<Declared>, ContractError> {
    let mut entries: Vec<Declared> = config
        .entries
        .iter()
        .cloned()
        .map(|e| (e, PathBuf::from("."), "types.entries".to_owned()))
        .collect();
    if let Some(path) = &config.file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ContractError(format!("cannot read types.file {}: {e}", path.display()))
        })?;
        let from_file = parse_types_file(&text)
            .map_err(|e| ContractError(format!("types.file {}: {e}", path.display())))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        entries.extend(
            from_file
                .into_iter()
                .map(|e| (e, base.clone(), path.display().to_string())),
        );
        files.push(path.clone());
    }
    Ok(entries)
}

/// Every schema file, read once, registered under its file URI so `$ref`s between them
/// resolve (and nothing else does: no network, no other files). The set is the files the
/// entries name plus every other `*.json` beside them, so shared definitions
/// (`{"$ref": "common.json#/$defs/email"}`) need no entry of their own. Each path read joins
/// `files`.
fn schema_documents(
    entries: &[Declared],
    files: &mut Vec<PathBuf>,
) -> Result<BTreeMap<PathBuf, Value>, ContractError> {
    let mut documents: BTreeMap<PathBuf, Value> = BTreeMap::new();
    for (entry, base, _) in entries {
        if let Some(SchemaSource::File(rel)) = &entry.schema {
            let path = base.join(rel);
            if documents.contains_key(&path) {
                continue;
            }
            let doc = read_json(&path, &format!("the schema of `{}`", entry.r#type))?;
            files.push(path.clone());
            documents.insert(path, doc);
        }
    }
    let dirs: std::collections::BTreeSet<PathBuf> = documents
        .keys()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    for dir in dirs {
        let listing = std::fs::read_dir(&dir).map_err(|e| {
            ContractError(format!(
                "cannot list the schema directory {}: {e}",
                dir.display()
            ))
        })?;
        for neighbour in listing.filter_map(|e| e.ok().map(|e| e.path())) {
            if neighbour.extension().is_none_or(|x| x != "json")
                || documents.contains_key(&neighbour)
            {
                continue;
            }
            let doc = read_json(&neighbour, "a file beside a schema (available to $ref)")?;
            files.push(neighbour.clone());
            documents.insert(neighbour, doc);
        }
    }
    Ok(documents)
}

/// A schema file's URI, the name `$ref`s resolve it by.
fn file_uri(path: &Path) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    format!("file://{}", abs.display())
}

/// One entry checked (type pattern, topic, media type, dataschema URI) and its schema
/// compiled against every document (so its `$ref`s resolve).
fn compile_entry(
    entry: TypeEntryConfig,
    base: &Path,
    declared_in: &str,
    documents: &BTreeMap<PathBuf, Value>,
) -> Result<TypeContract, ContractError> {
    let pattern = entry.r#type.clone();
    if pattern.is_empty() {
        return Err(ContractError(format!(
            "an entry in {declared_in} has an empty `type`"
        )));
    }
    if entry.topic.as_ref().is_some_and(|t| t.trim().is_empty()) {
        return Err(ContractError(format!(
            "`{pattern}`: topic must not be empty"
        )));
    }
    let glob = if is_glob(&pattern) {
        Some(
            Glob::new(&pattern)
                .map_err(|e| ContractError(format!("type pattern `{pattern}` is not a glob: {e}")))?
                .compile_matcher(),
        )
    } else {
        None
    };
    if let Some(ct) = &entry.datacontenttype
        && ct.parse::<mime::Mime>().is_err()
    {
        return Err(ContractError(format!(
            "`{pattern}`: datacontenttype `{ct}` is not a media type"
        )));
    }
    if let Some(ds) = &entry.dataschema
        && fluent_uri::Uri::parse(ds.as_str()).is_err()
    {
        return Err(ContractError(format!(
            "`{pattern}`: dataschema `{ds}` is not an absolute URI"
        )));
    }
    let schema = match &entry.schema {
        None => None,
        Some(source) => Some(compile_schema(&pattern, source, base, documents)?),
    };
    Ok(TypeContract {
        pattern,
        glob,
        topic: entry.topic.map(Arc::from),
        datacontenttype: entry.datacontenttype,
        dataschema: entry.dataschema,
        schema,
    })
}

/// The schema of `pattern`, inline or from its file, compiled with every document
/// registered under its URI.
fn compile_schema(
    pattern: &str,
    source: &SchemaSource,
    base: &Path,
    documents: &BTreeMap<PathBuf, Value>,
) -> Result<Schema, ContractError> {
    let (document, origin, base_uri) = match source {
        SchemaSource::Inline(v) => (v.clone(), "inline".to_owned(), None),
        SchemaSource::File(rel) => {
            let path = base.join(rel);
            (
                documents[&path].clone(),
                path.display().to_string(),
                Some(file_uri(&path)),
            )
        }
    };
    let mut options = jsonschema::options();
    if let Some(b) = base_uri {
        options = options.with_base_uri(b);
    }
    for (path, doc) in documents {
        let resource = jsonschema::Resource::from_contents(doc.clone())
            .map_err(|e| ContractError(format!("schema {}: {e}", path.display())))?;
        options = options.with_resource(file_uri(path), resource);
    }
    let validator = options.build(&document).map_err(|e| {
        ContractError(format!(
            "the schema of `{pattern}` ({origin}) does not compile: {e}"
        ))
    })?;
    Ok(Schema {
        document,
        origin,
        validator,
    })
}
