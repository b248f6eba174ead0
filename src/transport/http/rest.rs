//! JSON REST transcoding: one POST route per RPC, as the contract's `google.api.http`
//! annotations declare. Bodies follow the proto3 JSON mapping (lowerCamelCase and original
//! field names, pbjson's decoders for timestamps and bytes) with one deliberate difference:
//! `data` is kept as the exact JSON text the client sent (see [`RestEvent`]). Requests go to
//! the same core [`Gateway`] the gRPC service calls; replies are encoded with pbjson. What
//! only this adapter can refuse (unknown route, wrong method, wrong media type) is a
//! [`Rejection`]; body size and decoding failures are the core's [`Error`]s like every other.
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::collections::HashMap;
use tower::ServiceExt as _;
use tower_http::decompression::{DecompressionBody, RequestDecompression};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::core::error::Error;
use crate::core::service::AckRequest;
use crate::core::service::Gateway;
use crate::core::validate::Incoming;
use crate::proto::CloudEvent;
use crate::proto::cloud_event::Payload;
use crate::transport::bounded;
use crate::transport::http::cloudevents::{self, Mode};
use crate::transport::http::json as reply_json;
use crate::transport::reply::{
    ack_request, batch_reply, event_reply, is_spooled, types_reply, validate_reply,
};
use crate::transport::routes::{
    ROUTE_INGEST_BATCH, ROUTE_INGEST_EVENT, ROUTE_TYPES, ROUTE_VALIDATE, Rejection,
    method_not_allowed,
};
use crate::transport::stack;
use crate::transport::status::{is_grpc, respond};

#[derive(Clone)]
struct RestState {
    gateway: Arc<Gateway>,
    max_body: usize,
}

/// The `Content-Encoding`s request bodies may use (tower-http decompresses them while the body
/// is read, so `max_body` counts decompressed bytes: a gzip bomb stops at the limit; see
/// [`read_compressed`]).
pub const SUPPORTED_ENCODINGS: &str = "gzip, deflate, zstd";

/// The REST routes; requests with a body over `max_body` bytes (decompressed) get 413.
pub fn router(gateway: Arc<Gateway>, max_body: usize) -> Router {
    Router::new()
        .route(ROUTE_INGEST_EVENT, post(ingest_event))
        .route(ROUTE_INGEST_BATCH, post(ingest_batch))
        .route(ROUTE_VALIDATE, post(validate))
        .route(ROUTE_TYPES, get(list_types))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(RestState { gateway, max_body })
}

/// The REST body of one event: the fields of `eventgateway.v1.CloudEvent` under their proto3
/// JSON names, decoded with pbjson's own decoders for `time` and `data_base64`. It exists so
/// that `data` stays the exact JSON text the client sent: pbjson would parse it into a
/// `google.protobuf.Value`, whose numbers are doubles (integers beyond 2^53 refused) and whose
/// objects come back with sorted keys, and would spend an allocation on every node. A test
/// holds these fields to the proto's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestEvent {
    id: Option<String>,
    source: Option<String>,
    specversion: Option<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
    subject: Option<String>,
    time: Option<pbjson_types::Timestamp>,
    datacontenttype: Option<String>,
    dataschema: Option<String>,
    data: Option<Box<RawValue>>,
    /// `BytesValue`'s JSON form is a bytes field's (base64, standard or URL-safe alphabet), so
    /// its public deserializer decodes exactly as pbjson does for the generated types.
    #[serde(alias = "dataBase64")]
    data_base64: Option<pbjson_types::BytesValue>,
    extensions: Option<HashMap<String, String>>,
}

impl From<RestEvent> for Incoming {
    fn from(e: RestEvent) -> Self {
        Incoming {
            event: CloudEvent {
                id: e.id.unwrap_or_default(),
                source: e.source.unwrap_or_default(),
                specversion: e.specversion.unwrap_or_default(),
                r#type: e.ty.unwrap_or_default(),
                subject: e.subject.unwrap_or_default(),
                time: e.time,
                datacontenttype: e.datacontenttype.unwrap_or_default(),
                dataschema: e.dataschema.unwrap_or_default(),
                payload: e.data_base64.map(|b| Payload::DataBase64(b.value.into())),
                extensions: e.extensions.unwrap_or_default(),
            },
            raw_data: e.data.map(Into::into),
        }
    }
}

/// The REST body of `IngestBatch`: `{"events": [...], "ack": ...}`, decoded in one pass with
/// `events` decoded no further than `limits.max_batch_events` (see `transport::bounded`).
/// A visitor rather than a derive because the ceiling is a setting: taking `events` as its
/// JSON text first and decoding it after (as before) read every event's bytes twice, about
/// 2.4K instructions per event (#26). Unknown and repeated fields are refused as the derive
/// refused them.
struct RestBatch {
    events: Vec<RestEvent>,
    /// `IngestBatchRequest.ack`: the body is the whole request (`body: "*"`).
    ack: Option<AckField>,
}

impl RestBatch {
    fn decode(body: &[u8], max: usize) -> Result<Self, Error> {
        let capacity = bounded::first_capacity(body.len());
        match std::str::from_utf8(body) {
            Ok(text) => Self::decode_from(serde_json::Deserializer::from_str(text), max, capacity),
            Err(_) => Self::decode_from(serde_json::Deserializer::from_slice(body), max, capacity),
        }
    }

    /// [`Self::decode`] over text (see [`parse_json`]) or bytes.
    fn decode_from<'de, R: serde_json::de::Read<'de>>(
        mut de: serde_json::Deserializer<R>,
        max: usize,
        capacity: usize,
    ) -> Result<Self, Error> {
        let mut total = None;
        let decoded = serde::de::DeserializeSeed::deserialize(
            BatchSeed {
                max,
                capacity,
                total: &mut total,
            },
            &mut de,
        )
        .and_then(|batch| de.end().map(|()| batch));
        match (decoded, total) {
            (_, Some(n)) => Err(Error::InvalidArgument(
                crate::core::validate::too_many_events(n, max),
            )),
            (Ok(batch), None) => Ok(batch),
            (Err(e), None) => Err(Error::Malformed(format!("invalid JSON body: {e}"))),
        }
    }
}

struct BatchSeed<'t> {
    max: usize,
    capacity: usize,
    total: &'t mut Option<usize>,
}

impl<'de> serde::de::DeserializeSeed<'de> for BatchSeed<'_> {
    type Value = RestBatch;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<RestBatch, D::Error> {
        const FIELDS: &[&str] = &["events", "ack"];
        d.deserialize_struct("RestBatch", FIELDS, self)
    }
}

impl<'de> serde::de::Visitor<'de> for BatchSeed<'_> {
    type Value = RestBatch;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object with `events` (an array of events) and optionally `ack`")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RestBatch, A::Error> {
        use serde::de::Error as _;
        let (mut events, mut ack) = (None, None);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "events" if events.is_some() => return Err(A::Error::duplicate_field("events")),
                "events" => {
                    events = Some(map.next_value_seed(OptionalEvents(bounded::Seed {
                        max: self.max,
                        total: &mut *self.total,
                        capacity: self.capacity,
                        element: std::marker::PhantomData,
                    }))?)
                }
                "ack" if ack.is_some() => return Err(A::Error::duplicate_field("ack")),
                "ack" => ack = Some(map.next_value::<Option<AckField>>()?),
                other => return Err(A::Error::unknown_field(other, &["events", "ack"])),
            }
        }
        Ok(RestBatch {
            events: events.flatten().unwrap_or_default(),
            ack: ack.flatten(),
        })
    }
}

/// `events` may be `null`, as an absent field.
struct OptionalEvents<'t>(bounded::Seed<'t, RestEvent>);

impl<'de> serde::de::DeserializeSeed<'de> for OptionalEvents<'_> {
    type Value = Option<Vec<RestEvent>>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> serde::de::Visitor<'de> for OptionalEvents<'_> {
    type Value = Option<Vec<RestEvent>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of events")
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        serde::de::DeserializeSeed::deserialize(self.0, d).map(Some)
    }
}

/// The body's `ack`: the proto3 JSON enum names (`ACK_MODE_SPOOLED`) or numbers, and the short
/// forms the query parameter takes (`spooled`, `stored`, `default`), in any case, so that a
/// body and a query string say the same thing the same way.
struct AckField(crate::proto::AckMode);

impl<'de> Deserialize<'de> for AckField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use crate::proto::AckMode;
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = AckField;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an `ack`: stored, spooled or default (or ACK_MODE_STORED, ACK_MODE_SPOOLED, ACK_MODE_UNSPECIFIED)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AckField, E> {
                match v.to_ascii_lowercase().as_str() {
                    "stored" | "ack_mode_stored" => Ok(AckField(AckMode::Stored)),
                    "spooled" | "ack_mode_spooled" => Ok(AckField(AckMode::Spooled)),
                    "" | "default" | "ack_mode_unspecified" => Ok(AckField(AckMode::Unspecified)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<AckField, E> {
                i32::try_from(v)
                    .ok()
                    .and_then(|n| AckMode::try_from(n).ok())
                    .map(AckField)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<AckField, E> {
                u64::try_from(v)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
                    .and_then(|v| self.visit_u64(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// The acknowledgement a REST request asks for: the `ack` query parameter (`stored`,
/// `spooled`; the transcoding of the request's `ack` field), else the body's `ack` (batch),
/// else RFC 7240 `Prefer: respond-async` (spooled), else the server default. Also whether
/// `respond-async` was asked for, to answer `Preference-Applied`.
fn ack_of(
    headers: &HeaderMap,
    query: Option<&str>,
    body: Option<crate::proto::AckMode>,
) -> Result<(AckRequest, bool), Error> {
    let prefer_async = headers
        .get_all(http::header::HeaderName::from_static("prefer"))
        .iter()
        .filter_map(|v| v.to_str().ok())
        // RFC 7240: comma-separated preferences, each `token[=value][; params]`. Too small a
        // grammar for a crate; only the token's name matters here.
        .flat_map(|v| v.split(','))
        .any(|p| {
            p.split([';', '='])
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("respond-async"))
        });
    let mut from_query = None;
    for (k, v) in form_urlencoded(query.unwrap_or("")) {
        if k == "ack" {
            from_query = Some(match v.to_ascii_lowercase().as_str() {
                "stored" | "ack_mode_stored" => AckRequest::Stored,
                "spooled" | "ack_mode_spooled" => AckRequest::Spooled,
                "" | "default" | "ack_mode_unspecified" => AckRequest::Default,
                _ => {
                    return Err(Error::InvalidArgument(vec![
                        crate::core::error::FieldViolation::new(
                            "ack",
                            format!("`{v}` is not an acknowledgement level: use stored or spooled"),
                        ),
                    ]));
                }
            });
        }
    }
    let from_body = body.map(|b| ack_request(b as i32));
    if let (Some(q), Some(b)) = (from_query, from_body)
        && q != b
        && b != AckRequest::Default
    {
        return Err(Error::InvalidArgument(vec![
            crate::core::error::FieldViolation::new(
                "ack",
                "the query parameter and the body name different acknowledgement levels",
            ),
        ]));
    }
    let ack = from_query
        .filter(|a| *a != AckRequest::Default)
        .or(from_body.filter(|a| *a != AckRequest::Default))
        .unwrap_or(if prefer_async {
            AckRequest::Spooled
        } else {
            AckRequest::Default
        });
    Ok((ack, prefer_async))
}

/// `k=v` pairs of a query string, percent-decoded.
fn form_urlencoded(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let dec = |x: &str| {
            percent_encoding::percent_decode_str(&x.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (dec(k), dec(v))
    })
}

/// 202 for a spooled reply (with `Preference-Applied` when `respond-async` was asked for),
/// else 200.
fn acked(mut response: Response, spooled: bool, prefer_async: bool) -> Response {
    if spooled {
        *response.status_mut() = http::StatusCode::ACCEPTED;
        if prefer_async {
            response.headers_mut().insert(
                http::header::HeaderName::from_static("preference-applied"),
                HeaderValue::from_static("respond-async"),
            );
        }
    }
    response
}

/// `POST /api/v1/events`: one event as the contract's JSON, in structured mode (the
/// CloudEvents JSON format) or in binary mode (`ce-*` headers, the body is the data); a
/// batch-mode body is taken as `IngestBatch`.
async fn ingest_event(State(s): State<RestState>, req: Request) -> Result<Response, Rejection> {
    let mode = cloudevents::mode(req.headers());
    if mode == Mode::Batch {
        return ingest_batch(State(s), req).await;
    }
    let principal = stack::principal(req.extensions().get())?;
    let (ack, prefer_async) = ack_of(req.headers(), req.uri().query(), None)?;
    let incoming = decode_one(mode, req, s.max_body).await?;
    let ingested = s
        .gateway
        .ingest_event(&principal, Some(incoming), ack)
        .await
        .map_err(|e| rename_for(mode, e))?;
    let reply = event_reply(ingested);
    let spooled = is_spooled(reply.ack);
    Ok(acked(
        json_bytes(reply_json::event_response(&reply)),
        spooled,
        prefer_async,
    ))
}

/// `POST /api/v1/events/batch`: `{"events": [...]}`, or a batch-mode body (a JSON array of
/// events in the CloudEvents JSON format, `application/cloudevents-batch+json`).
async fn ingest_batch(State(s): State<RestState>, req: Request) -> Result<Response, Rejection> {
    let principal = stack::principal(req.extensions().get())?;
    let headers = req.headers().clone();
    let query = req.uri().query().map(str::to_owned);
    let (mut ack, prefer_async) = ack_of(&headers, query.as_deref(), None)?;
    let max = s.gateway.limits().max_batch_events;
    let events = match cloudevents::mode(req.headers()) {
        Mode::Batch => {
            let body = read_body(req, s.max_body).await?;
            cloudevents::decode_batch(&body, max)?
        }
        Mode::Json => {
            let body = json_body(req, s.max_body).await?;
            let batch = RestBatch::decode(&body, max)?;
            if let Some(AckField(a)) = batch.ack {
                ack = ack_of(&headers, query.as_deref(), Some(a))?.0;
            }
            batch.events.into_iter().map(Incoming::from).collect()
        }
        Mode::Binary | Mode::Structured => return Err(one_event_to_batch(&req)),
    };
    let items = s.gateway.ingest_batch(&principal, events, ack).await?;
    let reply = batch_reply(items);
    let spooled = is_spooled(reply.ack);
    Ok(acked(
        json_bytes(reply_json::batch_response(&reply)),
        spooled,
        prefer_async,
    ))
}

/// `POST /api/v1/events/validate`: one event, in any single-event mode.
async fn validate(State(s): State<RestState>, req: Request) -> Result<Response, Rejection> {
    let mode = cloudevents::mode(req.headers());
    let principal = stack::principal(req.extensions().get())?;
    let incoming = decode_one(mode, req, s.max_body).await?;
    let validated = s
        .gateway
        .validate(&principal, Some(incoming))
        .map_err(|e| rename_for(mode, e))?;
    Ok(json(&validate_reply(validated)))
}

/// One event from a request in a single-event mode; a batch-mode body is refused (routes
/// that take batches look for them first).
async fn decode_one(mode: Mode, req: Request, max_body: usize) -> Result<Incoming, Rejection> {
    match mode {
        Mode::Json => Ok(decode::<RestEvent>(req, max_body).await?.into()),
        Mode::Structured => Ok(cloudevents::decode_structured(
            &read_body(req, max_body).await?,
        )?),
        Mode::Binary => {
            let headers = req.headers().clone();
            let body = read_body(req, max_body).await?;
            Ok(cloudevents::decode_binary(&headers, body)?)
        }
        Mode::Batch => Err(Rejection::UnsupportedMediaType {
            found: cloudevents::BATCH_MEDIA_TYPE.into(),
            expected: "one event: application/json, application/cloudevents+json, or binary mode",
        }),
    }
}

/// Binary mode names violations by header; the other modes by field.
fn rename_for(mode: Mode, e: Error) -> Error {
    if mode == Mode::Binary {
        cloudevents::binary_field_names(e)
    } else {
        e
    }
}

fn one_event_to_batch(req: &Request) -> Rejection {
    Rejection::UnsupportedMediaType {
        found: req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)")
            .to_owned(),
        expected: "{\"events\": [...]} as application/json, or application/cloudevents-batch+json; a single event (binary or structured mode) goes to POST /api/v1/events",
    }
}

async fn list_types(State(s): State<RestState>) -> Response {
    let (policy, listing) = s.gateway.list_types();
    json(&types_reply(policy, listing))
}

/// Unknown paths: a JSON 404 for HTTP clients; gRPC clients get UNIMPLEMENTED as gRPC expects.
pub async fn fallback(req: Request) -> Response {
    let rejection = Rejection::NotFound {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
    };
    respond(is_grpc(req.headers()), rejection)
}

fn json<T: Serialize>(value: &T) -> Response {
    json_bytes(serde_json::to_vec(value).expect("replies always serialize"))
}

/// A JSON reply's bytes as a 200 `application/json` response.
fn json_bytes(body: Vec<u8>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// `application/json`, or any `+json` type such as `application/cloudevents+json`.
fn check_content_type(headers: &HeaderMap) -> Result<(), Rejection> {
    let expected = "Content-Type: application/json";
    let Some(raw) = headers.get(header::CONTENT_TYPE) else {
        return Err(Rejection::UnsupportedMediaType {
            found: "(none)".into(),
            expected,
        });
    };
    if cloudevents::is_plain_json(raw.as_bytes()) {
        return Ok(());
    }
    let text = raw.to_str().unwrap_or("(not text)");
    let ok = text
        .parse::<mime::Mime>()
        .is_ok_and(|m| m.type_() == mime::APPLICATION && crate::core::validate::is_json_type(&m));
    if ok {
        Ok(())
    } else {
        Err(Rejection::UnsupportedMediaType {
            found: text.to_owned(),
            expected,
        })
    }
}

async fn read_body(req: Request, max_body: usize) -> Result<Bytes, Rejection> {
    let progress = req.extensions().get::<stack::BodyRead>().cloned();
    let read = read_body_within(req, max_body).await;
    if let Some(p) = progress {
        p.done();
    }
    read
}

async fn read_body_within(req: Request, max_body: usize) -> Result<Bytes, Rejection> {
    match req.headers().get(header::CONTENT_ENCODING) {
        Some(enc) if !enc.as_bytes().eq_ignore_ascii_case(b"identity") => {
            // Boxed: inline, its state (the decompressor's) made every request's future larger,
            // for every request to allocate and move.
            return Box::pin(read_compressed(req, max_body)).await;
        }
        _ => {}
    }
    // Refuse by the declared length before reading anything.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared
        && len > max_body as u64
    {
        return Err(too_large(max_body, Some(len)).into());
    }
    collect_within(req.into_body(), max_body).await
}

/// A body with a `Content-Encoding`, decompressed by tower-http's `RequestDecompression` as
/// it is read, so that `max_body` counts decompressed bytes. Called here, on the one request
/// that needs it, rather than as a layer of the REST routes, which every request paid for
/// as a boxed service cloned per request (#26). Its inner service hands the request's
/// (decompressing) body back as the reply's, and the encoding header when it is one
/// tower-http passed through unread: unknown, refused here with a reply that names the
/// supported ones (tower-http's own 415 has an empty body).
async fn read_compressed(req: Request, max_body: usize) -> Result<Bytes, Rejection> {
    let pass_back = tower::service_fn(|req: http::Request<DecompressionBody<axum::body::Body>>| {
        let (parts, body) = req.into_parts();
        let mut back = http::Response::new(body);
        if let Some(enc) = parts.headers.get(header::CONTENT_ENCODING) {
            back.headers_mut()
                .insert(header::CONTENT_ENCODING, enc.clone());
        }
        std::future::ready(Ok::<_, std::convert::Infallible>(back))
    });
    let Ok(back) = RequestDecompression::new(pass_back)
        .pass_through_unaccepted(true)
        .oneshot(req)
        .await;
    if let Some(enc) = back.headers().get(header::CONTENT_ENCODING) {
        return Err(Rejection::UnsupportedEncoding {
            found: String::from_utf8_lossy(enc.as_bytes()).into_owned(),
            supported: SUPPORTED_ENCODINGS,
        });
    }
    collect_within(axum::body::Body::new(back.into_body()), max_body).await
}

fn too_large(max_body: usize, size: Option<u64>) -> Error {
    Error::TooLarge {
        what: "request body".into(),
        limit: max_body as u64,
        size,
    }
}

/// The whole of `body`, or TooLarge once past `max_body` bytes (without a length, as when
/// chunked or compressed, it reads at most the limit and stops there).
async fn collect_within(body: axum::body::Body, max_body: usize) -> Result<Bytes, Rejection> {
    match Limited::new(body, max_body).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(too_large(max_body, None).into())
        }
        Err(e) => Err(Error::Malformed(format!(
            "could not read the request body (or decompress it): {e}"
        ))
        .into()),
    }
}

async fn decode<T: DeserializeOwned>(req: Request, max_body: usize) -> Result<T, Rejection> {
    parse_json(&json_body(req, max_body).await?)
}

/// The body of a request that must be JSON.
async fn json_body(req: Request, max_body: usize) -> Result<Bytes, Rejection> {
    check_content_type(req.headers())?;
    read_body(req, max_body).await
}

/// `body` decoded as JSON. Over text when the body is UTF-8, checked once in one pass:
/// serde_json over bytes checks each string it reads on its own (about 90 instructions a
/// string, #26). A body that is not UTF-8 is decoded over its bytes all the same, so that
/// the error is serde_json's, naming the place.
fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Rejection> {
    match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(body),
    }
    .map_err(|e| Error::Malformed(format!("invalid JSON body: {e}")).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// serde names every accepted field when it meets an unknown one: they must be the proto's
    /// fields (original names) plus the lowerCamelCase alias of `data_base64`.
    #[test]
    fn rest_event_fields_are_the_protos() {
        let err = serde_json::from_str::<RestEvent>(r#"{"no_such_field":1}"#)
            .err()
            .unwrap()
            .to_string();
        let listed: std::collections::BTreeSet<String> = err
            .split('`')
            .skip(3)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        let pool = prost_reflect::DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let msg = pool
            .get_message_by_name("eventgateway.v1.CloudEvent")
            .expect("CloudEvent");
        let mut proto: std::collections::BTreeSet<String> =
            msg.fields().map(|f| f.name().to_owned()).collect();
        proto.insert("dataBase64".into());
        assert_eq!(listed, proto, "{err}");
    }

    #[test]
    fn a_batch_body_decodes_in_one_pass_as_the_derive_did() {
        let ok = |body: &str| RestBatch::decode(body.as_bytes(), 3).unwrap();
        let err = |body: &str| match RestBatch::decode(body.as_bytes(), 3) {
            Err(e) => e.to_string(),
            Ok(b) => panic!("{body} decoded to {} events", b.events.len()),
        };
        let b = ok(
            r#"{"events":[{"type":"a","source":"s"},{"type":"b","source":"s"}],"ack":"spooled"}"#,
        );
        assert_eq!(b.events.len(), 2);
        assert!(matches!(
            b.ack,
            Some(AckField(crate::proto::AckMode::Spooled))
        ));
        assert_eq!(b.events[1].ty.as_deref(), Some("b"));
        for empty in [
            r#"{}"#,
            r#"{"events":null}"#,
            r#"{"events":[]}"#,
            r#"{"ack":null}"#,
        ] {
            let b = ok(empty);
            assert!(b.events.is_empty() && b.ack.is_none(), "{empty}");
        }
        assert!(err(r#"{"events":[],"extra":1}"#).contains("unknown field `extra`"));
        assert!(err(r#"{"events":[],"events":[]}"#).contains("duplicate field `events`"));
        assert!(err(r#"{"events":[{"nope":1}]}"#).contains("unknown field `nope`"));
        assert!(err(r#"{"events":{}}"#).contains("expected an array"));
        assert!(err(r#"{"events":[]} x"#).contains("trailing characters"));
        assert!(err(r#"[]"#).contains("invalid JSON body"));
        // An object, as the contract says: not the array form a derive would also take.
        assert!(err(r#"[[{"type":"a","source":"s"}],"spooled"]"#).contains("invalid type"));
        // Over the ceiling: counted, whatever the rest holds, and refused by count.
        let over = err(r#"{"events":[{},{},{},{"x":[1]},5]}"#);
        assert!(over.contains("has 5 events, over the limit of 3"), "{over}");
    }

    /// Bodies are decoded over text when they are UTF-8; one that is not is refused as
    /// before, with serde_json's error naming the place, whether the bad byte is in a
    /// string or not.
    #[test]
    fn a_body_that_is_not_utf8_is_malformed_with_the_place_named() {
        let in_string = b"{\"events\":[{\"type\":\"a\xff\",\"source\":\"s\"}]}";
        let e = RestBatch::decode(in_string, 3).err().unwrap().to_string();
        assert!(
            e.contains("invalid unicode code point at line 1 column 22"),
            "{e}"
        );
        let outside = b"{\"events\":[]\xff}";
        let e = RestBatch::decode(outside, 3).err().unwrap().to_string();
        assert!(e.contains("invalid JSON body"), "{e}");
        let single = b"{\"type\":\"\xc3\",\"source\":\"s\"}";
        let e = parse_json::<RestEvent>(single).err().unwrap();
        assert!(
            format!("{e:?}").contains("invalid unicode code point"),
            "{e:?}"
        );
        let fine = parse_json::<RestEvent>("{\"type\":\"é\",\"source\":\"s\"}".as_bytes());
        assert_eq!(fine.ok().unwrap().ty.as_deref(), Some("é"));
    }

    #[test]
    fn data_is_kept_as_sent() {
        let text = r#"{"type":"t","source":"s","data":{"b":1.0,"a":12345678901234567890}}"#;
        let e: RestEvent = serde_json::from_str(text).unwrap();
        let incoming = Incoming::from(e);
        assert_eq!(
            incoming.raw_data.unwrap().get(),
            r#"{"b":1.0,"a":12345678901234567890}"#
        );
        let e: RestEvent = serde_json::from_str(r#"{"dataBase64":"AAE=","data":null}"#).unwrap();
        let incoming = Incoming::from(e);
        assert!(incoming.raw_data.is_none());
        assert_eq!(
            incoming.event.payload,
            Some(Payload::DataBase64(vec![0, 1]))
        );
    }
}
