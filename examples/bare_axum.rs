//! Benchmark ceiling: a bare axum server that reads the same request bodies the gateway gets
//! and answers a small JSON, on the same runtime settings. What it serves per second is the
//! HTTP ceiling for our stack on this machine. `bare_axum ADDR`
//!
//! `bare_axum ADDR --spool DIR` is the floor of a spooled acknowledgement: each body becomes
//! one record in the gateway's own spool (`event_gateway::spool`, the same writer, group
//! commit and fdatasync) and is answered once the spool says it is on disk, with none of
//! the gateway's stack, validation or forwarding. The gap between this and the gateway at
//! `ack=spooled` is what the gateway adds; the gap between this and the bare server is what
//! the disk and the writer cost.
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use event_gateway::core::event::{Data, Event};
use event_gateway::spool::{self, Record, Spool};

/// The gateway's allocator (src/main.rs), so that a floor and the gateway it is set against
/// pay the same malloc and free: with glibc's, the floors read 1.5K to 3.2K instructions a
/// request more than with jemalloc (docs/benchmarks.md, "The floors counted alike").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:18091".into());
    let spool_dir = match args.get(2).map(String::as_str) {
        Some("--spool") => Some(args.get(3).expect("--spool DIR").clone()),
        Some(other) => panic!("unknown argument {other}; usage: bare_axum ADDR [--spool DIR]"),
        None => None,
    };
    let app = match spool_dir {
        None => Router::new().fallback(post(|body: Bytes| async move {
            (
                [("content-type", "application/json")],
                format!(r#"{{"ok":true,"len":{}}}"#, body.len()),
            )
        })),
        Some(dir) => {
            let settings = spool::Settings {
                dir: dir.into(),
                segment_bytes: 64 << 20,
                max_bytes: 1 << 30,
                max_age: None,
                min_room: 0,
            };
            let meter = opentelemetry::global::meter("bare_axum");
            let spool = Spool::open(settings, &meter).expect("open the spool");
            Router::new().fallback(post(move |body: Bytes| spooled(spool.clone(), body)))
        }
    };
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    axum::serve(listener, app).await.unwrap();
}

/// The body kept as the event's data: checked to be JSON (kept raw, as the gateway keeps
/// `data`), never decoded into an event or validated, since this is the floor, not the gateway.
async fn spooled(spool: Arc<Spool>, body: Bytes) -> (StatusCode, String) {
    let data = match String::from_utf8(body.to_vec())
        .ok()
        .and_then(|s| serde_json::value::RawValue::from_string(s).ok())
    {
        Some(raw) => Data::Json(raw.into()),
        None => Data::Binary(body.to_vec()),
    };
    let record = Record {
        spooled_at_ms: spool::now_ms(),
        topic: None,
        trace: Vec::new(),
        event: Event {
            id: uuid::Uuid::now_v7().to_string(),
            source: "bare_axum".into(),
            ty: "bench".into(),
            subject: None,
            time: chrono::Utc::now(),
            datacontenttype: None,
            dataschema: None,
            data,
            extensions: Default::default(),
            topic: None,
            forwarded: None,
            auth: None,
        },
    };
    match spool.append(&[record]).await {
        Ok(position) => (
            StatusCode::ACCEPTED,
            format!(r#"{{"ack":"spooled","position":{position}}}"#),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e:?}")),
    }
}
