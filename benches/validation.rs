//! What validation costs per event: the seed-sized event through every rule, with no data
//! contract and with a 10-property JSON Schema for its type. `cargo bench --bench validation`
//! prints the figures; the README quotes them.
use chrono::Utc;
use divan::Bencher;
use event_gateway::config::{SchemaSource, TypeEntryConfig, TypesConfig, TypesPolicy};
use event_gateway::core::contracts::Registry;
use event_gateway::core::validate::{Context, Incoming, Limits, check_event};
use event_gateway::proto::CloudEvent;
use serde_json::value::RawValue;

fn main() {
    divan::main();
}

const LIMITS: Limits = Limits {
    max_event_size: 512 * 1024,
    max_batch_events: 1000,
    max_data_depth: 32,
    max_number_length: 100,
};

/// The seed's data with ten properties, as a REST client sends it.
const DATA: &str = r#"{"user_id":"123","email":"user@example.com","name":"Ada Lovelace","age":36,"active":true,"plan":"pro","country":"GB","tags":["a","b"],"created_at":"2026-01-02T03:04:05Z","score":0.75}"#;

fn schema() -> serde_json::Value {
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["user_id", "email"],
        "additionalProperties": false,
        "properties": {
            "user_id": {"type": "string", "pattern": "^[0-9]+$"},
            "email": {"type": "string", "maxLength": 254},
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0},
            "active": {"type": "boolean"},
            "plan": {"enum": ["free", "pro", "enterprise"]},
            "country": {"type": "string", "minLength": 2, "maxLength": 2},
            "tags": {"type": "array", "items": {"type": "string"}},
            "created_at": {"type": "string"},
            "score": {"type": "number", "maximum": 1}
        }
    })
}

fn incoming() -> Incoming {
    Incoming {
        event: CloudEvent {
            r#type: "user.created".into(),
            source: "user-service".into(),
            subject: "user-123".into(),
            ..Default::default()
        },
        raw_data: Some(RawValue::from_string(DATA.into()).unwrap().into()),
    }
}

fn registry(with_schema: bool) -> Registry {
    Registry::load(&TypesConfig {
        policy: TypesPolicy::Open,
        file: None,
        entries: vec![TypeEntryConfig {
            r#type: "user.created".into(),
            schema: with_schema.then(|| SchemaSource::Inline(schema())),
            topic: None,
            datacontenttype: None,
            dataschema: None,
        }],
    })
    .unwrap()
}

fn run(bencher: Bencher, registry: Registry) {
    let ctx = Context {
        limits: &LIMITS,
        types: &registry,
        on_schema_violation: &|_| {},
    };
    bencher
        .with_inputs(incoming)
        .bench_local_values(|i| check_event(i, "event", &ctx, Utc::now()).is_ok());
}

#[divan::bench]
fn envelope_only(bencher: Bencher) {
    run(bencher, registry(false));
}

#[divan::bench]
fn with_10_property_schema(bencher: Bencher) {
    let r = registry(true);
    // The schema accepts the event: the figure is for the path every good event takes.
    let ctx = Context {
        limits: &LIMITS,
        types: &r,
        on_schema_violation: &|_| {},
    };
    assert!(check_event(incoming(), "event", &ctx, Utc::now()).is_ok());
    run(bencher, r);
}
