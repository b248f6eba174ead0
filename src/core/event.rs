//! The validated, normalized event every sink receives, and its CloudEvents encodings: the JSON
//! format (structured mode, used by the local log and Kafka structured mode) and the attribute
//! list that Kafka binary mode turns into `ce_*` headers. Built only by `validate`.
use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::proto::{WireForm, WireValue};

mod wire;

/// The CloudEvents spec version this gateway speaks.
pub const SPEC_VERSION: &str = "1.0";

/// The payload, kept in the form the sinks write.
#[derive(Debug, Clone)]
pub enum Data {
    None,
    /// A JSON value, already encoded (numbers written as the client sent them, integral
    /// values without a fraction).
    Json(JsonText),
    /// Raw bytes (`data_base64`).
    Binary(Vec<u8>),
}

/// The text of one well-formed JSON value: a REST client's `data` as serde_json found it
/// (a `RawValue`), or a gRPC client's `google.protobuf.Value` as [`JsonText::of_value`]
/// wrote it. Not `RawValue` itself: serde_json makes one from text only by parsing it again,
/// and writing a `Value` through its serializer took about 1.2K instructions a stream event
/// (#26); this type can be made only by those two, so its text needs no second look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(String);

impl JsonText {
    /// The JSON text.
    pub fn get(&self) -> &str {
        &self.0
    }

    /// `value` as JSON, as a JSON client would have written it: the proto3 mapping keeps
    /// numbers as doubles, so integral values within ±2^53 are written as integers (`123`, not
    /// `123.0`), others as serde_json writes a double; an object's members in the order the
    /// decoded map holds them. None when it holds a number JSON has not (NaN, an infinity).
    /// A unit test holds it to serde_json's serializer over random values.
    pub fn of_value(value: &pbjson_types::Value) -> Option<JsonText> {
        let mut out = Vec::with_capacity(64);
        write_json_value(&mut out, value)?;
        Some(Self::written(out))
    }

    /// A gRPC client's `data`, a `google.protobuf.Value` still in its wire bytes, as JSON:
    /// written straight from the bytes ([`wire`]), an object's members in the order sent.
    /// What that pass does not take (a field sent twice, a key sent twice, an unknown field,
    /// anything malformed, a number JSON has not) is decoded by prost with its every rule and
    /// written by [`JsonText::of_value`]. The one thing the pass takes that prost would not
    /// is nesting past prost's recursion limit, which `limits.max_data_depth` refuses anyway.
    /// A value built here (a tree) is written by [`JsonText::of_value`].
    pub fn of_wire(value: &WireValue) -> Result<JsonText, NotJson> {
        let tree = match value.form() {
            WireForm::Tree(tree) => return Self::of_value(tree).ok_or(NotJson::NonFinite),
            WireForm::Wire(bytes) => {
                let mut out = Vec::with_capacity(bytes.len() + 16);
                if wire::write_value(&mut out, bytes, 0).is_some() {
                    return Ok(Self::written(out));
                }
                value
                    .to_value()
                    .map_err(|e| NotJson::Malformed(e.to_string()))?
            }
        };
        Self::of_value(&tree).ok_or(NotJson::NonFinite)
    }

    /// Text the direct writers wrote: only whole UTF-8 strings and ASCII.
    fn written(mut out: Vec<u8>) -> JsonText {
        // Kept at the capacity it grew to unless that wastes more than 1 KiB: shrinking a
        // small value's text to fit was a realloc, about 400 instructions; a large one's
        // would otherwise hold up to twice its size while it waits to be stored.
        if out.capacity() - out.len() > 1024 {
            out.shrink_to_fit();
        }
        JsonText(String::from_utf8(out).expect("JSON written from strings is UTF-8"))
    }
}

/// Why a gRPC client's `data` has no JSON text ([`JsonText::of_wire`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotJson {
    /// It holds NaN or an infinity.
    NonFinite,
    /// It is not a `google.protobuf.Value` (prost's reason).
    Malformed(String),
}

impl From<Box<RawValue>> for JsonText {
    fn from(raw: Box<RawValue>) -> Self {
        JsonText(Box::<str>::from(raw).into())
    }
}

/// [`JsonText::of_value`]'s text appended to `out`, written directly: the keys and strings
/// through [`write_json_str`], the numbers by `itoa` and `zmij`, which serde_json's own writer
/// uses.
fn write_json_value(out: &mut Vec<u8>, v: &pbjson_types::Value) -> Option<()> {
    use pbjson_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => out.extend_from_slice(b"null"),
        Some(Kind::BoolValue(b)) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Some(Kind::StringValue(s)) => write_json_str(out, s),
        Some(Kind::NumberValue(n)) => write_json_number(out, *n)?,
        Some(Kind::StructValue(s)) => {
            out.push(b'{');
            for (i, (k, v)) in s.fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_str(out, k);
                out.push(b':');
                write_json_value(out, v)?;
            }
            out.push(b'}');
        }
        Some(Kind::ListValue(l)) => {
            out.push(b'[');
            for (i, v) in l.values.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_value(out, v)?;
            }
            out.push(b']');
        }
    }
    Some(())
}

/// A `Value`'s number as JSON: integral values within ±2^53 as integers, others as serde_json
/// writes a double. None for NaN and the infinities, which JSON has not.
fn write_json_number(out: &mut Vec<u8>, n: f64) -> Option<()> {
    if !n.is_finite() {
        return None;
    } else if n.fract() == 0.0 && n.abs() <= MAX_SAFE_INTEGER {
        out.extend_from_slice(itoa::Buffer::new().format(n as i64).as_bytes());
    } else {
        out.extend_from_slice(zmij::Buffer::new().format_finite(n).as_bytes());
    }
    Some(())
}

/// 2^53: integral doubles up to it are written as integers.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_992.0;

/// A valid CloudEvent with every default filled in (id, time, specversion).
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub source: String,
    pub ty: String,
    pub subject: Option<String>,
    pub time: DateTime<Utc>,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    pub data: Data,
    pub extensions: BTreeMap<String, String>,
    /// Where it goes: its type's topic from the registry, or None for the sink's default. Not
    /// a CloudEvents attribute: never part of the encodings.
    pub topic: Option<std::sync::Arc<str>>,
    /// The request headers `kafka.forward_headers` names, as (name, value) in the order the
    /// request carried them: each of the request's Kafka records gets them as headers. Not a
    /// CloudEvents attribute; one list shared by every event of a request.
    pub forwarded: Option<Forwarded>,
    /// The CloudEvents Auth Context (`authtype`, `authid`) the gateway stamps on the event
    /// (`auth::stamp`). Kept beside `extensions`, not in the map: two allocated keys and
    /// values a map entry each, then freed, were about 900 instructions an event (#26). The
    /// encodings write it among the extensions, in name order ([`Event::extensions_all`]);
    /// an event read back from the spool has it in `extensions` instead, which encodes alike.
    pub auth: Option<AuthContext>,
}

/// Forwarded request headers ([`Event::forwarded`]).
pub type Forwarded = std::sync::Arc<[(String, String)]>;

/// The Auth Context the gateway stamps on an event ([`Event::auth`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthContext {
    /// `authtype`: `api_key`, `service_account` or `unauthenticated`.
    pub authtype: &'static str,
    /// `authid`: the principal's id; None (no `authid`) when unauthenticated.
    pub authid: Option<std::sync::Arc<str>>,
}

impl Event {
    /// The event's extensions with its Auth Context ([`Event::auth`]) among them, in name
    /// order: what the encodings write. `auth::stamp` removed any `authtype` or `authid` the
    /// client sent from the map, so a name comes once.
    pub fn extensions_all(&self) -> impl Iterator<Item = (&str, &str)> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        debug_assert!(
            self.auth.is_none()
                || !(self.extensions.contains_key("authtype")
                    || self.extensions.contains_key("authid")),
            "an Auth Context both beside and in the extensions would be written twice"
        );
        fn pairs<'a>(
            r: std::collections::btree_map::Range<'a, String, String>,
        ) -> impl Iterator<Item = (&'a str, &'a str)> {
            r.map(|(k, v)| (k.as_str(), v.as_str()))
        }
        let authid = self
            .auth
            .as_ref()
            .and_then(|a| a.authid.as_deref())
            .map(|id| ("authid", id));
        let authtype = self.auth.as_ref().map(|a| ("authtype", a.authtype));
        // "authid" < "authidx" < "authtype": names can sit between the two. The map holds
        // the two names themselves only when `auth` is None (an event read back from the
        // spool), hence the included bounds: then the map is written whole, in order.
        let map = &self.extensions;
        pairs(map.range::<str, _>((Unbounded, Excluded("authid"))))
            .chain(authid)
            .chain(pairs(
                map.range::<str, _>((Included("authid"), Excluded("authtype"))),
            ))
            .chain(authtype)
            .chain(pairs(
                map.range::<str, _>((Included("authtype"), Unbounded)),
            ))
    }

    /// How many names [`Event::extensions_all`] yields.
    pub fn extensions_len(&self) -> usize {
        self.extensions.len()
            + self
                .auth
                .as_ref()
                .map_or(0, |a| 1 + usize::from(a.authid.is_some()))
    }

    /// `time` in RFC 3339 with a `Z` suffix, as the CloudEvents JSON format writes it.
    pub fn time_rfc3339(&self) -> String {
        let mut out = Vec::with_capacity(30);
        write_rfc3339(&mut out, &self.time, true);
        String::from_utf8(out).expect("RFC 3339 text is ASCII")
    }

    /// The event in the CloudEvents JSON format (one line, no trailing newline).
    pub fn to_structured_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.write_structured_json(&mut out);
        out
    }

    /// [`Self::to_structured_json`] appended to `out`: the bytes the `Serialize` impl below
    /// writes (a unit test holds the two together), written directly. Through serde_json
    /// every key and value went through its escaper, which reads a string byte by byte
    /// through a table (about 160 instructions a string, 15 strings an event: a sixth of a
    /// batch event's cost, #26); the keys here are constants, and a value is checked for
    /// anything to escape in one pass the compiler vectorizes, serde_json escaping the rest.
    pub fn write_structured_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"specversion\":\"");
        out.extend_from_slice(SPEC_VERSION.as_bytes());
        out.extend_from_slice(b"\",\"id\":");
        write_json_str(out, &self.id);
        out.extend_from_slice(b",\"source\":");
        write_json_str(out, &self.source);
        out.extend_from_slice(b",\"type\":");
        write_json_str(out, &self.ty);
        if let Some(s) = &self.subject {
            out.extend_from_slice(b",\"subject\":");
            write_json_str(out, s);
        }
        // RFC 3339 text holds nothing JSON escapes.
        out.extend_from_slice(b",\"time\":\"");
        write_rfc3339(out, &self.time, true);
        out.push(b'"');
        if let Some(s) = &self.datacontenttype {
            out.extend_from_slice(b",\"datacontenttype\":");
            write_json_str(out, s);
        }
        if let Some(s) = &self.dataschema {
            out.extend_from_slice(b",\"dataschema\":");
            write_json_str(out, s);
        }
        match &self.auth {
            // The common case, only the Auth Context: written without chaining through the
            // map's ranges (about 100 instructions an event, #26).
            Some(a) if self.extensions.is_empty() => {
                if let Some(id) = &a.authid {
                    out.extend_from_slice(b",\"authid\":");
                    write_json_str(out, id);
                }
                // The `authtype` values are constants JSON need not escape.
                out.extend_from_slice(b",\"authtype\":\"");
                out.extend_from_slice(a.authtype.as_bytes());
                out.push(b'"');
            }
            _ => {
                for (k, v) in self.extensions_all() {
                    out.push(b',');
                    write_json_str(out, k);
                    out.push(b':');
                    write_json_str(out, v);
                }
            }
        }
        match &self.data {
            Data::None => {}
            // serde_json writes a RawValue as its text, unchanged.
            Data::Json(raw) => {
                out.extend_from_slice(b",\"data\":");
                out.extend_from_slice(raw.get().as_bytes());
            }
            Data::Binary(b) => {
                out.extend_from_slice(b",\"data_base64\":");
                write_json_str(out, &base64_encode(b));
            }
        }
        out.push(b'}');
    }

    /// Context attributes other than `data`, as (name, value) pairs, for Kafka `ce_*` headers.
    /// `datacontenttype` is not among them: binary mode carries it as `content-type`.
    pub fn binary_attributes(&self) -> Vec<(&str, std::borrow::Cow<'_, str>)> {
        use std::borrow::Cow;
        let mut out: Vec<(&str, Cow<'_, str>)> = vec![
            ("specversion", Cow::Borrowed(SPEC_VERSION)),
            ("id", Cow::Borrowed(&self.id)),
            ("source", Cow::Borrowed(&self.source)),
            ("type", Cow::Borrowed(&self.ty)),
            ("time", Cow::Owned(self.time_rfc3339())),
        ];
        if let Some(s) = &self.subject {
            out.push(("subject", Cow::Borrowed(s)));
        }
        if let Some(s) = &self.dataschema {
            out.push(("dataschema", Cow::Borrowed(s)));
        }
        for (k, v) in self.extensions_all() {
            out.push((k, Cow::Borrowed(v)));
        }
        out
    }

    /// The content type binary mode writes: `datacontenttype`, else JSON for JSON data, else
    /// octet-stream for bytes.
    pub fn effective_content_type(&self) -> Option<&str> {
        match (&self.datacontenttype, &self.data) {
            (Some(ct), _) => Some(ct),
            (None, Data::Json(_)) => Some("application/json"),
            (None, Data::Binary(_)) => Some("application/octet-stream"),
            (None, Data::None) => None,
        }
    }

    /// The payload bytes binary mode writes as the record value.
    pub fn data_bytes(&self) -> Option<&[u8]> {
        match &self.data {
            Data::None => None,
            Data::Json(raw) => Some(raw.get().as_bytes()),
            Data::Binary(b) => Some(b),
        }
    }
}

/// The CloudEvents JSON format through serde: the reference [`Event::write_structured_json`]
/// is held to by a unit test, byte for byte. The gateway itself writes (and counts) events
/// with the direct writer; this impl reads `data` once more to hand it to serde_json.
impl Serialize for Event {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut m = ser.serialize_map(None)?;
        m.serialize_entry("specversion", SPEC_VERSION)?;
        m.serialize_entry("id", &self.id)?;
        m.serialize_entry("source", &self.source)?;
        m.serialize_entry("type", &self.ty)?;
        if let Some(s) = &self.subject {
            m.serialize_entry("subject", s)?;
        }
        m.serialize_entry("time", &self.time_rfc3339())?;
        if let Some(s) = &self.datacontenttype {
            m.serialize_entry("datacontenttype", s)?;
        }
        if let Some(s) = &self.dataschema {
            m.serialize_entry("dataschema", s)?;
        }
        for (k, v) in self.extensions_all() {
            m.serialize_entry(k, v)?;
        }
        match &self.data {
            Data::None => {}
            // Borrowed, as serde_json writes a RawValue: its text, unchanged.
            Data::Json(text) => m.serialize_entry(
                "data",
                serde_json::from_str::<&RawValue>(text.get()).map_err(serde::ser::Error::custom)?,
            )?,
            Data::Binary(b) => m.serialize_entry("data_base64", &base64_encode(b))?,
        }
        m.end()
    }
}

impl Event {
    /// Reads back what [`Event::to_structured_json`] wrote (the spool keeps events in this
    /// form). `data` stays the exact JSON text; `topic` is not part of the format and comes
    /// back as None. Only for the gateway's own output: it checks the shape, not the rules.
    pub fn from_structured_json(bytes: &[u8]) -> Result<Event, String> {
        use std::collections::HashMap;
        let mut m: HashMap<String, Box<RawValue>> =
            serde_json::from_slice(bytes).map_err(|e| format!("not a JSON object: {e}"))?;
        fn take(
            m: &mut HashMap<String, Box<RawValue>>,
            name: &str,
        ) -> Result<Option<String>, String> {
            m.remove(name)
                .map(|raw| {
                    serde_json::from_str::<String>(raw.get())
                        .map_err(|_| format!("`{name}` is not a string"))
                })
                .transpose()
        }
        let mut text = |name: &str| take(&mut m, name);
        let required = |v: Option<String>, name: &str| v.ok_or(format!("`{name}` is missing"));
        let _specversion = text("specversion")?;
        let id = required(text("id")?, "id")?;
        let source = required(text("source")?, "source")?;
        let ty = required(text("type")?, "type")?;
        let subject = text("subject")?;
        let time = required(text("time")?, "time")?;
        let time = DateTime::parse_from_rfc3339(&time)
            .map_err(|e| format!("`time`: {e}"))?
            .with_timezone(&Utc);
        let datacontenttype = text("datacontenttype")?;
        let dataschema = text("dataschema")?;
        let base64 = text("data_base64")?;
        let data = match (m.remove("data"), base64) {
            (Some(raw), None) => Data::Json(raw.into()),
            (None, Some(b64)) => {
                use base64::Engine as _;
                Data::Binary(
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|e| format!("`data_base64`: {e}"))?,
                )
            }
            (None, None) => Data::None,
            (Some(_), Some(_)) => return Err("both `data` and `data_base64`".into()),
        };
        let extensions = m
            .into_iter()
            .map(|(k, raw)| {
                serde_json::from_str::<String>(raw.get())
                    .map(|v| (k.clone(), v))
                    .map_err(|_| format!("extension `{k}` is not a string"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Event {
            id,
            source,
            ty,
            subject,
            time,
            datacontenttype,
            dataschema,
            data,
            extensions,
            topic: None,
            forwarded: None,
            auth: None,
        })
    }
}

/// `t` in RFC 3339 appended to `out`, in UTC with 0, 3, 6 or 9 digits of fraction as it
/// needs, as chrono's `SecondsFormat::AutoSi` writes it: ending `Z` (the CloudEvents format)
/// or `+00:00` when `z` is false (what pbjson writes for a Timestamp). A unit test holds the
/// two together.
///
/// Why not chrono alone: its formatter goes through `core::fmt` a field at a time, about 700
/// instructions an event (humantime's, tried, 530), a tenth of a batch event's cost (#26).
/// Events of one second (most often a batch's, which all take `now`) share the text up to
/// the seconds: each thread keeps the last second's, made by chrono, and writes the fraction
/// itself. Leap seconds and years outside 0000-9999 go to chrono whole.
pub fn write_rfc3339(out: &mut Vec<u8>, t: &DateTime<Utc>, z: bool) {
    use std::cell::Cell;
    thread_local! {
        /// The last second written and its `YYYY-MM-DDTHH:MM:SS`.
        static LAST: Cell<(i64, [u8; 19])> = const { Cell::new((i64::MIN, [0; 19])) };
    }
    let (secs, nanos) = (t.timestamp(), t.timestamp_subsec_nanos());
    let whole = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, z);
    if nanos >= 1_000_000_000 {
        out.extend_from_slice(whole(t).as_bytes());
        return;
    }
    let seconds = LAST.with(|last| {
        let (at, text) = last.get();
        if at == secs {
            return Some(text);
        }
        let text: [u8; 19] = t
            .to_rfc3339_opts(SecondsFormat::Secs, true)
            .as_bytes()
            .get(..19)?
            .try_into()
            .ok()?;
        last.set((secs, text));
        Some(text)
    });
    // A year of more than four digits (or a sign) does not fit the 19 bytes' shape.
    let Some(seconds) = seconds.filter(|text| text[4] == b'-') else {
        out.extend_from_slice(whole(t).as_bytes());
        return;
    };
    out.extend_from_slice(&seconds);
    let (fraction, digits) = if nanos == 0 {
        (0, 0)
    } else if nanos % 1_000_000 == 0 {
        (nanos / 1_000_000, 3)
    } else if nanos % 1_000 == 0 {
        (nanos / 1_000, 6)
    } else {
        (nanos, 9)
    };
    if digits > 0 {
        let mut buf = itoa::Buffer::new();
        let text = buf.format(fraction).as_bytes();
        out.push(b'.');
        out.extend(std::iter::repeat_n(b'0', digits - text.len()));
        out.extend_from_slice(text);
    }
    out.extend_from_slice(if z { b"Z" } else { b"+00:00" });
}

/// `s` as a JSON string appended to `out`, as serde_json writes it: quoted as is when no
/// byte needs escaping (no control character, quote or backslash), else through serde_json.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if is_plain(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(out, s).expect("a str always serializes");
    }
}

/// True when no byte of `b` needs a JSON escape: 16 bytes at a time without a branch per
/// byte (the compiler makes vector compares of it), the tail as the last 16 bytes again
/// (overlapping), byte by byte only when shorter than 16.
#[inline]
fn is_plain(b: &[u8]) -> bool {
    let escapes = |x: u8| (x < 0x20) | (x == b'"') | (x == b'\\');
    let any = |chunk: &[u8]| chunk.iter().fold(false, |any, &x| any | escapes(x));
    if b.len() < 16 {
        return !b.iter().any(|&x| escapes(x));
    }
    !(b.chunks_exact(16).any(any) || any(&b[b.len() - 16..]))
}

/// Standard base64 with padding, as the CloudEvents JSON format's `data_base64` requires.
fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Random `google.protobuf.Value`s for the JSON writers' tests ([`JsonText::of_value`] here,
/// the wire reader's in `wire`): xorshift64, the same values in every run.
#[cfg(test)]
pub(crate) struct RandomValues {
    pub state: u64,
    pub numbers: &'static [f64],
    pub texts: &'static [&'static str],
    /// From this depth on, only scalars.
    pub flat_from: u32,
    /// Up to this many members (less one) in an object, and items in a list.
    pub members: u64,
    pub items: u64,
}

#[cfg(test)]
impl RandomValues {
    pub fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    pub fn value(&mut self, depth: u32) -> pbjson_types::Value {
        use pbjson_types::value::Kind;
        use pbjson_types::{ListValue, Struct};
        let (n, t) = (self.numbers, self.texts);
        let kind = match self.next() % if depth >= self.flat_from { 5 } else { 7 } {
            0 => Kind::NullValue(0),
            1 => Kind::BoolValue(self.next().is_multiple_of(2)),
            2 => Kind::StringValue(t[self.next() as usize % t.len()].into()),
            3 => Kind::NumberValue(n[self.next() as usize % n.len()]),
            4 => Kind::NumberValue(f64::from_bits(self.next() >> 2)),
            5 => Kind::StructValue(Struct {
                fields: (0..self.next() % self.members)
                    .map(|i| {
                        let k = format!("{}{i}", t[self.next() as usize % t.len()]);
                        (k, self.value(depth + 1))
                    })
                    .collect(),
            }),
            _ => Kind::ListValue(ListValue {
                values: (0..self.next() % self.items)
                    .map(|_| self.value(depth + 1))
                    .collect(),
            }),
        };
        pbjson_types::Value { kind: Some(kind) }
    }
}

#[cfg(test)]
impl Event {
    /// A minimal event for unit tests: type `t`, source `s`, no data, no topic.
    pub(crate) fn for_test(id: &str) -> Event {
        Event {
            id: id.into(),
            source: "s".into(),
            ty: "t".into(),
            subject: None,
            time: chrono::Utc::now(),
            datacontenttype: None,
            dataschema: None,
            data: Data::None,
            extensions: Default::default(),
            topic: None,
            forwarded: None,
            auth: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_chrono_writes_them() {
        let check = |secs: i64, nanos: u32| {
            let Some(t) = DateTime::<Utc>::from_timestamp(secs, nanos) else {
                return;
            };
            for z in [true, false] {
                let mut ours = Vec::new();
                write_rfc3339(&mut ours, &t, z);
                assert_eq!(
                    String::from_utf8(ours).unwrap(),
                    t.to_rfc3339_opts(SecondsFormat::AutoSi, z),
                    "{secs}s {nanos}ns"
                );
            }
        };
        // Each fraction width (one second after another, as the cache of the last second
        // meets them), the epoch, the edges of four-digit years, leap years, the turn of
        // centuries, a leap second, times before 1970 and after 9999.
        let nanos = [
            0,
            1,
            999_999_999,
            5_000_000,
            120_000_000,
            7_000,
            123_456_000,
            1_500_000_000,
        ];
        let secs = [
            0,
            -1,
            59,
            951_782_400,   // 2000-02-29
            4_107_542_400, // 2100-03-01
            1_700_000_000,
            253_402_300_799, // 9999-12-31T23:59:59
            253_402_300_800,
            -62_135_596_800, // 0001-01-01
            -62_167_219_200, // 0000-01-01
            -62_167_219_201, // -0001-12-31T23:59:59
            i64::from(i32::MAX),
        ];
        for s in secs {
            for n in nanos {
                check(s, n);
            }
        }
        // And a spread of times between 1900 and 2300, each second of the day and each width.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let secs = (x % 12_623_040_000) as i64 - 2_208_988_800;
            let nanos = match x >> 60 {
                0..=3 => 0,
                4..=7 => (x >> 20) as u32 % 1000 * 1_000_000,
                8..=11 => (x >> 20) as u32 % 1_000_000 * 1000,
                _ => (x >> 20) as u32 % 1_000_000_000,
            };
            check(secs, nanos);
        }
    }

    fn event(data: Data) -> Event {
        Event {
            id: "id-1".into(),
            source: "svc".into(),
            ty: "t.created".into(),
            subject: Some("s".into()),
            time: DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123Z")
                .unwrap()
                .into(),
            datacontenttype: None,
            dataschema: None,
            data,
            extensions: BTreeMap::from([("partitionkey".into(), "k".into())]),
            topic: None,
            forwarded: None,
            auth: None,
        }
    }

    #[test]
    fn structured_json_is_cloudevents_format() {
        let raw = RawValue::from_string(r#"{"a":1,"b":[true,null,"x"]}"#.into()).unwrap();
        let json = String::from_utf8(event(Data::Json(raw.into())).to_structured_json()).unwrap();
        assert_eq!(
            json,
            r#"{"specversion":"1.0","id":"id-1","source":"svc","type":"t.created","subject":"s","time":"2026-01-02T03:04:05.123Z","partitionkey":"k","data":{"a":1,"b":[true,null,"x"]}}"#
        );
    }

    /// The direct writer and the `Serialize` impl (which the size count uses) write the same
    /// bytes, for values that need escaping and values that do not.
    #[test]
    fn the_direct_writer_writes_what_serde_writes() {
        let texts = [
            "",
            "plain",
            "a\"quote",
            "back\\slash",
            "tab\there",
            "\u{1}\u{1f}\u{7f}",
            "é ü 日本 🎉",
            "a long value past sixteen bytes with a \" late in it",
            "a long value past sixteen bytes, all of it plain text",
            "</script>",
        ];
        let datas = || {
            [
                Data::None,
                Data::Json(
                    RawValue::from_string(r#"{"a": [1, "x\n"]}"#.into())
                        .unwrap()
                        .into(),
                ),
                Data::Binary(b"\x00\xffbytes".to_vec()),
            ]
        };
        // Every length around the 16-byte steps, with one byte to escape at every place.
        for len in 0..40 {
            for at in 0..=len {
                for bad in ['"', '\\', '\n', '\u{1f}'] {
                    let mut t: String = "a".repeat(len);
                    if at < len {
                        t.replace_range(at..at + 1, &bad.to_string());
                    }
                    let mut out = Vec::new();
                    write_json_str(&mut out, &t);
                    assert_eq!(out, serde_json::to_vec(&t).unwrap(), "{t:?}");
                }
            }
        }
        for (i, t) in texts.iter().enumerate() {
            for data in datas() {
                let mut e = event(data);
                e.id = (*t).into();
                e.source = texts[(i + 1) % texts.len()].into();
                e.ty = texts[(i + 2) % texts.len()].into();
                e.subject = (i % 2 == 0).then(|| texts[(i + 3) % texts.len()].into());
                e.datacontenttype = (i % 3 == 0).then(|| (*t).into());
                e.dataschema = (i % 3 == 1).then(|| (*t).into());
                e.extensions.insert(format!("ext{i}"), (*t).into());
                let serde = serde_json::to_vec(&e).unwrap();
                assert_eq!(
                    String::from_utf8(e.to_structured_json()).unwrap(),
                    String::from_utf8(serde).unwrap()
                );
            }
        }
    }

    /// The Auth Context sits beside the map but is written among the extensions in name
    /// order, as if it were in the map: whatever names come before, between and after its two.
    #[test]
    fn the_auth_context_is_written_among_the_extensions_in_name_order() {
        let names = [
            "a",
            "authi",
            "authid0",
            "authidx",
            "authtypf",
            "authtype0",
            "z",
        ];
        for mask in 0u32..(1 << names.len()) {
            for authid in [None, Some("svc-1")] {
                let mut e = event(Data::None);
                e.extensions.clear();
                for (i, n) in names.iter().enumerate() {
                    if mask & (1 << i) != 0 {
                        e.extensions.insert((*n).into(), format!("v{i}"));
                    }
                }
                let mut in_map = e.clone();
                in_map
                    .extensions
                    .insert("authtype".into(), "api_key".into());
                if let Some(id) = authid {
                    in_map.extensions.insert("authid".into(), id.into());
                }
                e.auth = Some(AuthContext {
                    authtype: "api_key",
                    authid: authid.map(Into::into),
                });
                let all: Vec<_> = e.extensions_all().collect();
                let want: Vec<_> = in_map.extensions_all().collect();
                assert_eq!(all, want, "mask {mask:b}");
                assert_eq!(e.extensions_len(), want.len());
                assert_eq!(e.to_structured_json(), in_map.to_structured_json());
                assert_eq!(serde_json::to_vec(&e).unwrap(), in_map.to_structured_json());
                assert_eq!(e.binary_attributes(), in_map.binary_attributes());
            }
        }
    }

    #[test]
    fn structured_json_reads_back_as_the_same_event() {
        let raw = RawValue::from_string(r#"{"n":12345678901234567890,"s":"é"}"#.into()).unwrap();
        for data in [
            Data::None,
            Data::Json(raw.into()),
            Data::Binary(b"\x00\xffbytes".to_vec()),
        ] {
            let mut e = event(data);
            e.datacontenttype = Some("application/x".into());
            e.dataschema = Some("https://s/1".into());
            // Stamped: read back, the Auth Context is in the map, and writes the same.
            e.auth = Some(AuthContext {
                authtype: "api_key",
                authid: Some("team-a".into()),
            });
            let json = e.to_structured_json();
            let back = Event::from_structured_json(&json).unwrap();
            assert_eq!(back.extensions["authtype"], "api_key");
            assert_eq!(back.to_structured_json(), json);
            assert_eq!(back.time, e.time);
        }
        assert!(Event::from_structured_json(br#"{"id":"x"}"#).is_err());
        assert!(Event::from_structured_json(b"[1]").is_err());
    }

    #[test]
    fn binary_data_is_base64() {
        let json =
            String::from_utf8(event(Data::Binary(b"\x00\x01hello".to_vec())).to_structured_json())
                .unwrap();
        assert!(json.ends_with(r#""data_base64":"AAFoZWxsbw=="}"#), "{json}");
    }

    use serde::ser::SerializeSeq;

    /// The oracle [`JsonText::of_value`] is held to: a `google.protobuf.Value` through
    /// serde_json, as the gateway wrote it before. As a JSON client wrote it: the proto3
    /// mapping keeps numbers as doubles, so integral values within ±2^53 are written as
    /// integers (`123`, not `123.0`). NaN and infinities have no JSON form and are refused.
    struct JsonValue<'a>(&'a pbjson_types::Value);

    impl Serialize for JsonValue<'_> {
        fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
            use pbjson_types::value::Kind;
            match &self.0.kind {
                None | Some(Kind::NullValue(_)) => ser.serialize_unit(),
                Some(Kind::BoolValue(b)) => ser.serialize_bool(*b),
                Some(Kind::StringValue(s)) => ser.serialize_str(s),
                Some(Kind::NumberValue(n)) => {
                    if !n.is_finite() {
                        Err(serde::ser::Error::custom(
                            "NaN and Infinity cannot be represented in JSON",
                        ))
                    } else if n.fract() == 0.0 && n.abs() <= MAX_SAFE_INTEGER {
                        ser.serialize_i64(*n as i64)
                    } else {
                        ser.serialize_f64(*n)
                    }
                }
                Some(Kind::StructValue(s)) => {
                    let mut m = ser.serialize_map(Some(s.fields.len()))?;
                    for (k, v) in &s.fields {
                        m.serialize_entry(k, &JsonValue(v))?;
                    }
                    m.end()
                }
                Some(Kind::ListValue(l)) => {
                    let mut seq = ser.serialize_seq(Some(l.values.len()))?;
                    for v in &l.values {
                        seq.serialize_element(&JsonValue(v))?;
                    }
                    seq.end()
                }
            }
        }
    }

    /// Random values (nesting, strings to escape, numbers integral or not, small and huge):
    /// the direct writer writes what serde_json writes.
    #[test]
    fn the_direct_value_writer_writes_what_serde_writes() {
        use pbjson_types::Value;
        let mut values = RandomValues {
            state: 0x9e37_79b9_7f4a_7c15,
            numbers: &[
                0.0,
                -0.0,
                1.0,
                -2.0,
                1.5,
                0.1,
                1e300,
                -1e-300,
                9_007_199_254_740_992.0,
                9_007_199_254_740_994.0,
                -9_007_199_254_740_992.0,
                123_456_789.25,
                f64::MAX,
                f64::MIN_POSITIVE,
            ],
            texts: &[
                "",
                "plain",
                "a\"q",
                "b\\s",
                "t\tn\n",
                "\u{1}",
                "é 日本 🎉",
                "</script>",
            ],
            flat_from: 4,
            members: 4,
            items: 4,
        };
        for _ in 0..20_000 {
            let v = values.value(0);
            let serde = serde_json::to_string(&JsonValue(&v)).ok();
            let direct = JsonText::of_value(&v).map(|t| t.get().to_owned());
            assert_eq!(direct, serde, "{v:?}");
        }
        let nan = Value::from(f64::NAN);
        assert!(JsonText::of_value(&nan).is_none());
    }

    #[test]
    fn json_value_keeps_integers_integral() {
        let v: pbjson_types::Value =
            serde_json::from_str(r#"[1, -2, 1.5, 9007199254740991, 1e300, {"k": 0}]"#).unwrap();
        let out = serde_json::to_string(&JsonValue(&v)).unwrap();
        assert_eq!(out, r#"[1,-2,1.5,9007199254740991,1e+300,{"k":0}]"#);
        // Integers a double cannot hold exactly are refused when decoded, never rounded.
        assert!(serde_json::from_str::<pbjson_types::Value>("9007199254740993").is_err());
    }

    #[test]
    fn json_value_refuses_nan() {
        let v = pbjson_types::Value::from(f64::NAN);
        assert!(serde_json::to_string(&JsonValue(&v)).is_err());
    }
}
