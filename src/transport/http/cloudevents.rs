//! The CloudEvents HTTP protocol binding 1.0 on the REST routes: which content mode a request
//! uses (binary, structured, batch), and binary mode's decoding, where the attributes travel
//! as percent-encoded `ce-*` headers and the body is the data. Binary-mode violations are
//! renamed to the header (or `body`) they came from, the way body errors name the field.
use bytes::Bytes;
use http::{HeaderMap, header};
use percent_encoding::percent_decode;
use serde_json::value::RawValue;

use crate::core::error::{Error, FieldViolation};
use crate::core::validate;
use crate::transport::bounded;
// `data` and `data_base64` together are reported by validation, which sees both.
use crate::core::validate::Incoming;
use crate::proto::CloudEvent;
use crate::proto::cloud_event::Payload;

/// The batch format's media type.
pub const BATCH_MEDIA_TYPE: &str = "application/cloudevents-batch+json";

/// Binary mode's marker. A `HeaderName`, not text: a name given as text is parsed and checked
/// on every lookup (about 250 instructions a REST request here, #26).
const CE_SPECVERSION: http::HeaderName = http::HeaderName::from_static("ce-specversion");

/// How a request carries its event(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `application/json`: the contract's proto3 JSON mapping (extensions under `extensions`).
    Json,
    /// `application/cloudevents+json`: the CloudEvents JSON format (extensions at top level).
    Structured,
    /// `ce-*` headers carry the attributes, the body is the data.
    Binary,
    /// The body is a JSON array of structured events (`application/cloudevents-batch+json`).
    Batch,
}

/// `Content-Type: application/json` exactly (any case, no parameters): what nearly every
/// client sends, answered by a byte comparison before anything is parsed.
pub fn is_plain_json(content_type: &[u8]) -> bool {
    content_type.eq_ignore_ascii_case(b"application/json")
}

fn media_type(headers: &HeaderMap) -> Option<mime::Mime> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
}

/// The binding's rule: the content type names structured and batch mode; otherwise a
/// `ce-specversion` header means binary mode; otherwise the body is the contract's JSON.
pub fn mode(headers: &HeaderMap) -> Mode {
    // The common case without parsing (#26: `mime` took about 500 instructions a request).
    if headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| is_plain_json(v.as_bytes()))
        && !headers.contains_key(CE_SPECVERSION)
    {
        return Mode::Json;
    }
    let essence = media_type(headers).map(|m| m.essence_str().to_ascii_lowercase());
    match essence.as_deref() {
        Some(BATCH_MEDIA_TYPE) => Mode::Batch,
        Some("application/cloudevents+json") => Mode::Structured,
        _ if headers.contains_key(CE_SPECVERSION) => Mode::Binary,
        _ => Mode::Json,
    }
}

/// One event in the CloudEvents JSON format: the context attributes by name, `data` kept as
/// the exact JSON text sent, `data_base64` decoded, and every other member an extension
/// attribute (a string, number or boolean; written as its JSON text when not a string).
/// `prefix` names the event in violations (`event`, `events[3]`).
pub fn decode_structured_value(
    members: std::collections::BTreeMap<String, Box<RawValue>>,
    prefix: &str,
) -> Result<Incoming, Vec<FieldViolation>> {
    decode_members(members, prefix).map_err(|found| validate::with_omitted(found, prefix))
}

/// [`decode_structured_value`], with the violations as validation counts them (capped).
fn decode_members(
    members: std::collections::BTreeMap<String, Box<RawValue>>,
    prefix: &str,
) -> Result<Incoming, validate::Found> {
    let mut ev = CloudEvent::default();
    let mut raw_data = None;
    let mut violations = validate::Violations::new(prefix);
    let mut bad = |name: &str, what: &str| violations.add(name, what);
    for (name, raw) in members {
        let text = || serde_json::from_str::<String>(raw.get()).ok();
        match name.as_str() {
            "data" => raw_data = Some(raw),
            "data_base64" => {
                use base64::Engine as _;
                match text().and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok())
                {
                    Some(b) => ev.payload = Some(Payload::DataBase64(b)),
                    None => bad(&name, "must be a base64 string"),
                }
            }
            "time" => match text().map(|t| chrono::DateTime::parse_from_rfc3339(&t)) {
                Some(Ok(t)) => ev.time = Some(t.with_timezone(&chrono::Utc).into()),
                _ => bad(&name, "must be an RFC 3339 timestamp string"),
            },
            _ if string_attribute(&mut ev, &name).is_some() => match text() {
                Some(t) => *string_attribute(&mut ev, &name).expect("checked by the guard") = t,
                None => bad(&name, "must be a string"),
            },
            _ => {
                let value = match serde_json::from_str::<serde_json::Value>(raw.get()) {
                    Ok(serde_json::Value::String(s)) => Some(s),
                    Ok(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                        Some(v.to_string())
                    }
                    _ => None,
                };
                match value {
                    Some(v) => {
                        ev.extensions.insert(name, v);
                    }
                    None => bad(
                        &format!("extensions[{name}]"),
                        "an extension attribute must be a string, number or boolean",
                    ),
                }
            }
        }
    }
    if violations.is_empty() {
        Ok(Incoming {
            event: ev,
            raw_data: raw_data.map(Into::into),
        })
    } else {
        Err(violations.finish())
    }
}

/// A structured-mode body: one event in the CloudEvents JSON format.
pub fn decode_structured(body: &[u8]) -> Result<Incoming, Error> {
    let members = serde_json::from_slice(body).map_err(|e| {
        Error::Malformed(format!(
            "invalid body: expected one event in the CloudEvents JSON format: {e}"
        ))
    })?;
    decode_structured_value(members, "event").map_err(Error::InvalidArgument)
}

/// A batch-mode body: a JSON array of events in the CloudEvents JSON format. Every event's
/// violations are reported together, as `events[i].…`.
/// At most `max` events are decoded (`limits.max_batch_events`); a longer array is refused by
/// its count before any event is.
pub fn decode_batch(body: &[u8], max: usize) -> Result<Vec<Incoming>, Error> {
    let items: Vec<std::collections::BTreeMap<String, Box<RawValue>>> = bounded::events(
        body,
        max,
        "invalid body: expected a JSON array of events in the CloudEvents JSON format",
    )?;
    let mut out = Vec::with_capacity(items.len());
    // One cap for the whole batch, as `check_batch` keeps it.
    let mut violations = validate::BatchViolations::default();
    for (i, members) in items.into_iter().enumerate() {
        match decode_members(members, &format!("events[{i}]")) {
            Ok(incoming) => out.push(incoming),
            Err(found) => violations.absorb(found),
        }
    }
    match violations.into_violations() {
        None => Ok(out),
        Some(v) => Err(Error::InvalidArgument(v)),
    }
}

/// The field of a context attribute that is a plain string (all but `time` and the data),
/// in the CloudEvents JSON format and in binary mode alike.
fn string_attribute<'e>(ev: &'e mut CloudEvent, name: &str) -> Option<&'e mut String> {
    Some(match name {
        "id" => &mut ev.id,
        "source" => &mut ev.source,
        "specversion" => &mut ev.specversion,
        "type" => &mut ev.r#type,
        "subject" => &mut ev.subject,
        "datacontenttype" => &mut ev.datacontenttype,
        "dataschema" => &mut ev.dataschema,
        _ => return None,
    })
}

fn is_json(m: &mime::Mime) -> bool {
    crate::core::validate::is_json_type(m)
}

/// Decodes a binary-mode request: every `ce-*` header (percent-decoded) becomes an attribute
/// or extension, `Content-Type` becomes `datacontenttype`, a JSON body becomes `data` (kept
/// byte for byte) and any other body binary data. Header problems are all reported together;
/// missing attributes are the core's to report (renamed by [`binary_field_names`]).
pub fn decode_binary(headers: &HeaderMap, body: Bytes) -> Result<Incoming, Error> {
    let mut ev = CloudEvent::default();
    let mut violations = Vec::new();
    for name in headers.keys() {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let field = name.as_str();
        let mut values = headers.get_all(name).iter();
        let (Some(raw), None) = (values.next(), values.next()) else {
            violations.push(FieldViolation::new(field, "must be given once"));
            continue;
        };
        let Ok(value) = percent_decode(raw.as_bytes()).decode_utf8() else {
            violations.push(FieldViolation::new(
                field,
                "is not valid UTF-8 once percent-decoded (CloudEvents HTTP binding, 3.1.3.2)",
            ));
            continue;
        };
        let value = value.into_owned();
        match attr {
            "datacontenttype" => violations.push(FieldViolation::new(
                field,
                "binary mode carries datacontenttype as the Content-Type header",
            )),
            _ if string_attribute(&mut ev, attr).is_some() => {
                *string_attribute(&mut ev, attr).expect("checked by the guard") = value;
            }
            "time" => match chrono::DateTime::parse_from_rfc3339(&value) {
                Ok(t) => ev.time = Some(t.with_timezone(&chrono::Utc).into()),
                Err(e) => violations.push(FieldViolation::new(
                    field,
                    format!("must be an RFC 3339 timestamp: {e}"),
                )),
            },
            extension => {
                ev.extensions.insert(extension.to_owned(), value);
            }
        }
    }
    let content_type = media_type(headers);
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        ev.datacontenttype = ct.to_owned();
    }
    let mut raw_data = None;
    if !body.is_empty() {
        if content_type.as_ref().is_some_and(is_json) {
            match std::str::from_utf8(&body)
                .ok()
                .and_then(|s| RawValue::from_string(s.to_owned()).ok())
            {
                Some(raw) => raw_data = Some(raw),
                None => violations.push(FieldViolation::new(
                    "body",
                    "is not valid JSON, but Content-Type says it is",
                )),
            }
        } else {
            ev.payload = Some(Payload::DataBase64(body.to_vec()));
        }
    }
    if violations.is_empty() {
        Ok(Incoming {
            event: ev,
            raw_data: raw_data.map(Into::into),
        })
    } else {
        Err(Error::InvalidArgument(violations))
    }
}

/// Renames the core's field paths for a binary-mode request: `event.type` → `ce-type`,
/// `event.extensions[x]` → `ce-x`, `event.datacontenttype` → `content-type`, `event.data…`
/// → `body…`.
pub fn binary_field_names(e: Error) -> Error {
    match e {
        Error::InvalidArgument(violations) => Error::InvalidArgument(
            violations
                .into_iter()
                .map(|mut v| {
                    v.field = binary_field(&v.field);
                    v
                })
                .collect(),
        ),
        other => other,
    }
}

fn binary_field(field: &str) -> String {
    let Some(rest) = field.strip_prefix("event.") else {
        return field.to_owned();
    };
    if let Some(ext) = rest
        .strip_prefix("extensions[")
        .and_then(|r| r.strip_suffix(']'))
    {
        return format!("ce-{ext}");
    }
    if let Some(path) = rest.strip_prefix("data")
        && (path.is_empty() || path.starts_with(['.', '[']))
    {
        return format!("body{path}");
    }
    match rest {
        "datacontenttype" => "content-type".to_owned(),
        attr => format!("ce-{attr}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn plain_json_takes_the_short_way_to_the_same_answers() {
        let ct = |v: &str| ("content-type", v.to_owned());
        for (pairs, want) in [
            (vec![ct("application/json")], Mode::Json),
            (vec![ct("Application/JSON")], Mode::Json),
            (vec![ct("application/json; charset=utf-8")], Mode::Json),
            (
                vec![ct("application/json"), ("ce-specversion", "1.0".into())],
                Mode::Binary,
            ),
            (vec![ct("application/cloudevents+json")], Mode::Structured),
        ] {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_eq!(mode(&headers(&pairs)), want, "{pairs:?}");
        }
        assert!(is_plain_json(b"APPLICATION/json"));
        assert!(!is_plain_json(b"application/json; charset=utf-8"));
        assert!(!is_plain_json(b"application/jsonx"));
    }

    #[test]
    fn the_mode_follows_the_binding() {
        assert_eq!(
            mode(&headers(&[("content-type", BATCH_MEDIA_TYPE)])),
            Mode::Batch
        );
        assert_eq!(
            mode(&headers(&[
                (
                    "content-type",
                    "application/cloudevents+json; charset=utf-8"
                ),
                ("ce-specversion", "1.0")
            ])),
            Mode::Structured
        );
        assert_eq!(
            mode(&headers(&[
                ("content-type", "application/json"),
                ("ce-specversion", "1.0")
            ])),
            Mode::Binary
        );
        assert_eq!(
            mode(&headers(&[("content-type", "application/json")])),
            Mode::Json
        );
    }

    #[test]
    fn binary_mode_decodes_headers_and_body() {
        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "a%20b"),
            ("ce-type", "user.created"),
            ("ce-source", "svc"),
            ("ce-time", "2026-01-02T03:04:05Z"),
            ("ce-partitionkey", "k%C3%A9"),
            ("content-type", "application/json"),
        ]);
        let i = decode_binary(&h, Bytes::from_static(br#"{"b":1.0,"a":2}"#)).unwrap();
        assert_eq!(i.event.id, "a b");
        assert_eq!(i.event.extensions["partitionkey"], "k\u{e9}");
        assert_eq!(i.event.datacontenttype, "application/json");
        assert_eq!(i.raw_data.unwrap().get(), r#"{"b":1.0,"a":2}"#);
        // Another content type: the body is binary data.
        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-type", "t"),
            ("ce-source", "s"),
            ("content-type", "image/png"),
        ]);
        let i = decode_binary(&h, Bytes::from_static(b"\x89PNG")).unwrap();
        assert_eq!(
            i.event.payload,
            Some(Payload::DataBase64(b"\x89PNG".to_vec()))
        );
    }

    #[test]
    fn binary_mode_errors_name_the_header() {
        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-source", "s"),
            ("ce-subject", "%FF"),
            ("ce-time", "yesterday"),
            ("content-type", "application/json"),
        ]);
        let Err(Error::InvalidArgument(v)) = decode_binary(&h, Bytes::from_static(b"{")) else {
            panic!("expected violations");
        };
        let mut fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
        fields.sort();
        assert_eq!(fields, ["body", "ce-subject", "ce-time"]);
        assert_eq!(
            binary_field("event.extensions[traceparent]"),
            "ce-traceparent"
        );
        assert_eq!(
            binary_field("event.data.items[2].price"),
            "body.items[2].price"
        );
        assert_eq!(binary_field("event.datacontenttype"), "content-type");
        assert_eq!(binary_field("event"), "event");
    }
}

#[cfg(test)]
mod structured_tests {
    use super::*;

    #[test]
    fn the_json_format_takes_extensions_at_the_top_level() {
        let body = br#"{"specversion":"1.0","id":"1","type":"t","source":"s","time":"2026-01-02T03:04:05Z","partitionkey":"k","sequence":7,"sampled":true,"data":{"b":1.0}}"#;
        let i = decode_structured(body).unwrap();
        assert_eq!(i.event.extensions["partitionkey"], "k");
        assert_eq!(i.event.extensions["sequence"], "7");
        assert_eq!(i.event.extensions["sampled"], "true");
        assert_eq!(i.raw_data.unwrap().get(), r#"{"b":1.0}"#);
        let Err(Error::InvalidArgument(v)) = decode_batch(
            br#"[{"type":"t","source":"s"},{"type":5,"source":"s","nested":{"a":1}}]"#,
            10,
        ) else {
            panic!("expected violations");
        };
        let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["events[1].extensions[nested]", "events[1].type"]);
    }
}
