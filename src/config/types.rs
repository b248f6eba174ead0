//! `types.*`: the event-type registry's policy, file and entries.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `types.policy`: what happens to an event whose type matches no registry entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypesPolicy {
    /// Accepted, with the envelope checks only.
    #[default]
    Open,
    /// Refused: `event.type: not a registered event type`.
    Registered,
}

/// An entry's JSON Schema: a file path (relative to the file that declares the entry: the
/// types file, or the working directory for `types.entries`), or the schema itself, inline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SchemaSource {
    File(PathBuf),
    Inline(serde_json::Value),
}

/// One registry entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeEntryConfig {
    /// An exact event type, or a glob (`billing.*`); the most specific entry wins.
    pub r#type: String,
    /// The JSON Schema (draft 2020-12 or draft-07, by `$schema`) that `data` must match.
    #[serde(default)]
    pub schema: Option<SchemaSource>,
    /// The Kafka topic for these events (default: `kafka.topic`).
    #[serde(default)]
    pub topic: Option<String>,
    /// The `datacontenttype` these events must carry.
    #[serde(default)]
    pub datacontenttype: Option<String>,
    /// The `dataschema` URI these events must carry; filled in when an event has none.
    #[serde(default)]
    pub dataschema: Option<String>,
}

/// `types`: the event-type registry (data contracts).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TypesConfig {
    pub policy: TypesPolicy,
    /// A YAML file `{entries: [...]}` of more entries, reloaded (with the schema files) when
    /// it changes; a reload that fails keeps the registry in force.
    pub file: Option<PathBuf>,
    pub entries: Vec<TypeEntryConfig>,
}

impl TypesConfig {
    /// The `types.*` rules, each naming its key.
    pub(super) fn check(&self, errors: &mut Vec<String>) {
        for (i, e) in self.entries.iter().enumerate() {
            if e.topic.as_ref().is_some_and(|t| t.trim().is_empty()) {
                errors.push(format!("types.entries[{i}].topic must not be empty"));
            }
        }
    }
}
