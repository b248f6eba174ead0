//! The validation rules: turns an incoming event (the wire `CloudEvent`, plus the exact JSON
//! text of `data` when it came over REST) into a normalized [`Event`] or into every rule it
//! breaks, each named by field path. Ingest and `Validate` both call this, so a dry run checks
//! exactly what ingest checks. The rules are listed in docs/api.md ("Validation rules"); the
//! data contracts they consult (schemas, required attributes, topics) live in `contracts`.
use chrono::{DateTime, Utc};

use crate::config::TypesPolicy;
use crate::core::contracts::{MAX_SCHEMA_VIOLATIONS, Registry, TypeContract};
use crate::core::error::FieldViolation;
use crate::core::event::{Data, Event, JsonText, NotJson, SPEC_VERSION};
use crate::proto::CloudEvent;
use crate::proto::cloud_event::Payload;

pub const MAX_ID_LEN: usize = 256;
pub const MAX_TYPE_LEN: usize = 256;
pub const MAX_URI_LEN: usize = 2048;
pub const MAX_ATTRIBUTE_LEN: usize = 1024;
pub const MAX_EXTENSION_NAME_LEN: usize = 20;

/// Attribute names an extension may not take.
pub const RESERVED: &[&str] = &[
    "id",
    "source",
    "specversion",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
];

/// The limits that validation enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_event_size: usize,
    pub max_batch_events: usize,
    pub max_data_depth: usize,
    pub max_number_length: usize,
}

/// An event as it arrived. gRPC carries `data` as a `google.protobuf.Value` inside `event`
/// (in its wire bytes), written as JSON into `raw_data` when the event is taken in (`From`);
/// REST keeps the exact JSON text the client sent in `raw_data` (then `event.payload` is
/// empty), so numbers, key order and large integers are stored as written.
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    pub event: CloudEvent,
    pub raw_data: Option<JsonText>,
}

impl From<CloudEvent> for Incoming {
    /// A gRPC client's event: its `data` (a `google.protobuf.Value` in wire bytes) written as
    /// JSON text into `raw_data`, where REST's arrives, so the rules and the event read one
    /// form. Left in `event.payload` when it has none: `data_rule` says why.
    fn from(mut event: CloudEvent) -> Self {
        let raw_data = match &event.payload {
            Some(Payload::Data(wire)) => JsonText::of_wire(wire).ok(),
            _ => None,
        };
        if raw_data.is_some() {
            event.payload = None;
        }
        Self { event, raw_data }
    }
}

/// What validation needs besides the event: the limits, the registry in force, and whom to
/// tell when an event breaks its type's schema (metrics).
pub struct Context<'a> {
    pub limits: &'a Limits,
    pub types: &'a Registry,
    pub on_schema_violation: &'a (dyn Fn(&str) + Sync),
}

impl<'a> Context<'a> {
    /// Limits only: an open registry with no entries, nothing reported.
    pub fn limits_only(limits: &'a Limits) -> Self {
        static EMPTY: std::sync::LazyLock<Registry> = std::sync::LazyLock::new(Registry::empty);
        Self {
            limits,
            types: &EMPTY,
            on_schema_violation: &|_| {},
        }
    }
}

/// A valid event; its size in the CloudEvents JSON format is counted when asked for
/// ([`Checked::size`]), the size rule first trying a bound that needs no counting.
pub struct Checked {
    pub event: Event,
}

impl Checked {
    /// The event's size in the CloudEvents JSON format, counted (the dry run reports it).
    pub fn size(&self) -> usize {
        structured_size(&self.event)
    }
}

/// At most this many violations are listed for one request (event or batch); the rest are
/// counted in a last entry. A request full of invalid fields (815,129 bad extensions fit in
/// 10 MiB) would otherwise cost memory per violation and answer with an error larger than the
/// request.
pub const MAX_VIOLATIONS: usize = 100;

/// Where an event sits in its request, as its violations name it: a field (`event`) or an
/// item of a list (`events[3]`). Written out only when a violation names it: a batch wrote
/// each item's `events[i]` up front, about 460 instructions an event (#26).
#[derive(Clone, Copy)]
pub enum Place<'p> {
    Field(&'p str),
    Item(&'p str, usize),
}

impl std::fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Field(name) => f.write_str(name),
            Place::Item(list, i) => write!(f, "{list}[{i}]"),
        }
    }
}

/// The violations of one event as rules (or a decoder) find them: fields named under
/// `prefix`, at most [`MAX_VIOLATIONS`] kept and the rest counted.
pub struct Violations<'p> {
    prefix: Place<'p>,
    list: Vec<FieldViolation>,
    /// Found past [`MAX_VIOLATIONS`]: counted, not kept.
    omitted: usize,
}

impl<'p> Violations<'p> {
    pub fn new(prefix: &'p str) -> Self {
        Self::at(Place::Field(prefix))
    }

    pub fn at(prefix: Place<'p>) -> Self {
        Self {
            prefix,
            list: Vec::new(),
            omitted: 0,
        }
    }

    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        if self.list.len() >= MAX_VIOLATIONS {
            self.omitted += 1;
            return;
        }
        let field = if field.is_empty() {
            self.prefix.to_string()
        } else {
            format!("{}.{field}", self.prefix)
        };
        self.list.push(FieldViolation::new(field, description));
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// What was found: the violations kept and how many more there were.
    pub fn finish(self) -> Found {
        (self.list, self.omitted)
    }
}

/// The violations of a whole batch under one cap, counted under `events` past it.
#[derive(Default)]
pub struct BatchViolations {
    list: Vec<FieldViolation>,
    omitted: usize,
}

impl BatchViolations {
    /// Adds one event's violations, as far as the cap has room.
    pub fn absorb(&mut self, (list, more): Found) {
        let room = MAX_VIOLATIONS.saturating_sub(self.list.len());
        self.omitted += more + list.len().saturating_sub(room);
        self.list.extend(list.into_iter().take(room));
    }

    /// The batch's violations, `None` when no event had any.
    pub fn into_violations(self) -> Option<Vec<FieldViolation>> {
        (!self.list.is_empty()).then(|| with_omitted((self.list, self.omitted), "events"))
    }
}

/// The entry that stands for violations found past the cap, named by `field` (the event, or
/// `events` for a batch).
fn omitted_entry(field: &str, omitted: usize) -> FieldViolation {
    FieldViolation::new(
        field,
        format!("and {omitted} more violations, not listed (the first {MAX_VIOLATIONS} are)"),
    )
}

/// How many violations an [`omitted_entry`] stands for; None for any other violation.
pub fn omitted_count(v: &FieldViolation) -> Option<usize> {
    let tail = format!("more violations, not listed (the first {MAX_VIOLATIONS} are)");
    let n = v.description.strip_prefix("and ")?.strip_suffix(&tail)?;
    n.trim().parse().ok()
}

/// A failed check: the violations kept and how many more there were.
pub type Found = (Vec<FieldViolation>, usize);

/// The violations kept, then (when any were dropped) the entry counting the rest.
pub fn with_omitted((mut list, omitted): Found, field: &str) -> Vec<FieldViolation> {
    if omitted > 0 {
        list.push(omitted_entry(field, omitted));
    }
    list
}

fn is_visible_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// A rule on the event as it arrived: reads it and pushes every violation it finds. Rules
/// change nothing; [`normalise`] does, once all of them passed.
type Rule = fn(&Incoming, &mut Violations<'_>);

/// Every rule on the arriving event, in the order their violations are listed.
const RULES: &[Rule] = &[
    id_rule,
    source_rule,
    specversion_rule,
    type_rule,
    subject_rule,
    time_rule,
    datacontenttype_rule,
    dataschema_rule,
    data_rule,
    extensions_rule,
];

/// A rule on the normalised event (id assigned, time set, data encoded, size known), with the
/// registry entry its type matched. Checks that need the final event are of this kind: size,
/// the data contract; authorization next.
type EventRule = fn(&Checked, &Context<'_>, Option<&TypeContract>, &mut Violations<'_>);

const EVENT_RULES: &[EventRule] = &[
    size_rule,
    data_policy_rule,
    registered_rule,
    contract_attributes_rule,
    schema_rule,
];

/// Checks one event. `prefix` is its field path in the request (`event`, `events[3]`); `now`
/// becomes `time` when the event has none.
pub fn check_event(
    incoming: Incoming,
    prefix: &str,
    ctx: &Context<'_>,
    now: DateTime<Utc>,
) -> Result<Checked, Vec<FieldViolation>> {
    check_event_counted(incoming, Place::Field(prefix), ctx, now)
        .map_err(|found| with_omitted(found, prefix))
}

fn check_event_counted(
    incoming: Incoming,
    place: Place<'_>,
    ctx: &Context<'_>,
    now: DateTime<Utc>,
) -> Result<Checked, Found> {
    let mut v = Violations::at(place);
    for rule in RULES {
        rule(&incoming, &mut v);
    }
    if !v.is_empty() {
        return Err(v.finish());
    }
    let contract = ctx.types.lookup(&incoming.event.r#type);
    let event = normalise(incoming, contract, now);
    let checked = Checked { event };
    for rule in EVENT_RULES {
        rule(&checked, ctx, contract, &mut v);
    }
    if v.is_empty() {
        Ok(checked)
    } else {
        Err(v.finish())
    }
}

/// The valid event with every default filled in: a UUIDv7 (time-ordered) id when the client
/// sent none, `now` when it sent no time, `data` encoded once as the JSON the sinks write, and
/// from its type's contract the `dataschema` (when the event has none) and the topic.
/// Called only after every [`RULES`] entry passed.
fn normalise(incoming: Incoming, contract: Option<&TypeContract>, now: DateTime<Utc>) -> Event {
    let Incoming {
        event: ev,
        raw_data,
    } = incoming;
    let id = if ev.id.is_empty() {
        uuid::Uuid::now_v7().to_string()
    } else {
        ev.id
    };
    let time = ev
        .time
        .and_then(|ts| DateTime::<Utc>::try_from(ts).ok())
        .unwrap_or(now);
    let data = match (raw_data, ev.payload) {
        (Some(raw), _) => Data::Json(raw),
        (None, None) => Data::None,
        (None, Some(Payload::DataBase64(b))) => Data::Binary(b),
        (None, Some(Payload::Data(value))) => Data::Json(
            JsonText::of_wire(&value).expect("data_rule refused values JSON cannot hold"),
        ),
    };
    Event {
        id,
        source: ev.source,
        ty: ev.r#type,
        subject: (!ev.subject.is_empty()).then_some(ev.subject),
        time,
        datacontenttype: (!ev.datacontenttype.is_empty()).then_some(ev.datacontenttype),
        dataschema: (!ev.dataschema.is_empty())
            .then_some(ev.dataschema)
            .or_else(|| contract.and_then(|c| c.dataschema.clone())),
        data,
        extensions: ev.extensions.into_iter().collect(),
        topic: contract.and_then(|c| c.topic.clone()),
        forwarded: None,
        auth: None,
    }
}

/// `id`: optional (one is assigned), else printable ASCII of bounded length.
fn id_rule(i: &Incoming, v: &mut Violations<'_>) {
    let id = &i.event.id;
    if id.is_empty() {
        return;
    }
    if id.len() > MAX_ID_LEN {
        v.add("id", format!("must be at most {MAX_ID_LEN} characters"));
    } else if !is_visible_ascii(id) {
        v.add(
            "id",
            "must be printable ASCII without spaces or control characters",
        );
    }
}

/// `source`: required, a URI-reference of bounded length.
fn source_rule(i: &Incoming, v: &mut Violations<'_>) {
    let source = &i.event.source;
    if source.is_empty() {
        v.add("source", "is required and must not be empty");
    } else if source.len() > MAX_URI_LEN {
        v.add(
            "source",
            format!("must be at most {MAX_URI_LEN} characters"),
        );
    } else if !is_plain_path(source) && fluent_uri::UriRef::parse(source.as_str()).is_err() {
        v.add(
            "source",
            "must be a URI-reference (RFC 3986), for example `user-service` or `https://example.com/users`",
        );
    }
}

/// Unreserved characters and `/` only (`user-service`, `/users/api`): always a valid
/// URI-reference, answered without the parser (about 280 instructions an event, #26). RFC
/// 3986 §4.2: without `:`, `?`, `#` or `%` such text is a relative reference whose path
/// segments (and, after a leading `//`, its reg-name authority) are all unreserved
/// characters. A unit test holds it to fluent_uri's answer.
fn is_plain_path(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/'))
}

/// `specversion`: "1.0" or omitted.
fn specversion_rule(i: &Incoming, v: &mut Violations<'_>) {
    let sv = &i.event.specversion;
    if !sv.is_empty() && sv != SPEC_VERSION {
        v.add(
            "specversion",
            format!("must be \"{SPEC_VERSION}\" (or omitted)"),
        );
    }
}

/// `type`: required, bounded, a restricted alphabet (it becomes a header and a metric label).
fn type_rule(i: &Incoming, v: &mut Violations<'_>) {
    let ty = &i.event.r#type;
    if ty.is_empty() {
        v.add("type", "is required and must not be empty");
    } else if ty.len() > MAX_TYPE_LEN {
        v.add("type", format!("must be at most {MAX_TYPE_LEN} characters"));
    } else if !ty
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-:/+".contains(&b))
    {
        v.add(
            "type",
            "may contain only letters, digits and . _ - : / +, for example `user.created`",
        );
    }
}

/// `subject`: optional, bounded, no control characters.
fn subject_rule(i: &Incoming, v: &mut Violations<'_>) {
    let s = &i.event.subject;
    if s.len() > MAX_ATTRIBUTE_LEN {
        v.add(
            "subject",
            format!("must be at most {MAX_ATTRIBUTE_LEN} characters"),
        );
    } else if has_control(s) {
        v.add("subject", "must not contain control characters");
    }
}

/// `time`: optional (now is used), a timestamp chrono can hold.
fn time_rule(i: &Incoming, v: &mut Violations<'_>) {
    if let Some(ts) = i.event.time
        && let Err(e) = DateTime::<Utc>::try_from(ts)
    {
        v.add("time", format!("is not a valid timestamp: {e}"));
    }
}

/// The parsed `datacontenttype`, when present and valid.
/// Whether a media type is JSON: `*/json`, or any `*/...+json` (the structured syntax suffix,
/// RFC 6839), in any case, as docs/openapi.yaml's pattern has it. Not mime's `suffix()`: it
/// has none for `a/+json` and only the part after the first `+` for `a/b+c+json`, which the
/// document calls JSON (Schemathesis sent `0/+JSON` with an array `data`, and was refused).
pub fn is_json_type(m: &mime::Mime) -> bool {
    // The essence (`type/subtype+suffix`, lowercased): mime's `subtype()` stops at a `+`.
    let sub = m.essence_str().split_once('/').map_or("", |(_, sub)| sub);
    sub == "json" || sub.ends_with("+json")
}

fn content_type(ev: &CloudEvent) -> Option<Result<mime::Mime, mime::FromStrError>> {
    (!ev.datacontenttype.is_empty()).then(|| ev.datacontenttype.parse::<mime::Mime>())
}

/// `datacontenttype`: optional, an RFC 2046 media type.
fn datacontenttype_rule(i: &Incoming, v: &mut Violations<'_>) {
    if let Some(Err(_)) = content_type(&i.event) {
        v.add(
            "datacontenttype",
            "must be an RFC 2046 media type, for example `application/json`",
        );
    }
}

/// `dataschema`: optional, an absolute URI of bounded length.
fn dataschema_rule(i: &Incoming, v: &mut Violations<'_>) {
    let s = &i.event.dataschema;
    if s.is_empty() {
        return;
    }
    if s.len() > MAX_URI_LEN {
        v.add(
            "dataschema",
            format!("must be at most {MAX_URI_LEN} characters"),
        );
    } else if fluent_uri::Uri::parse(s.as_str()).is_err() {
        v.add(
            "dataschema",
            "must be an absolute URI (RFC 3986), for example `https://example.com/schema.json`",
        );
    }
}

/// `data` / `data_base64`: at most one of them; a JSON value other than a string only with a
/// JSON content type (or none); numbers JSON can hold (no NaN or infinities).
fn data_rule(i: &Incoming, v: &mut Violations<'_>) {
    let json_content = match content_type(&i.event) {
        Some(Ok(m)) => is_json_type(&m),
        // No content type means JSON; a broken one is reported by its own rule.
        None | Some(Err(_)) => true,
    };
    let non_json_value = |is_string: bool, v: &mut Violations<'_>| {
        if !json_content && !is_string {
            v.add(
                "data",
                "is a JSON value but datacontenttype is not JSON; send a string, use data_base64, or set a JSON datacontenttype",
            );
        }
    };
    match (&i.raw_data, &i.event.payload) {
        (Some(_), Some(_)) => v.add(
            "data",
            "data and data_base64 are exclusive: send one of them",
        ),
        (Some(raw), None) => non_json_value(raw.get().starts_with('"'), v),
        (None, None) | (None, Some(Payload::DataBase64(_))) => {}
        // gRPC's data that has no JSON text (`From<CloudEvent>` wrote the others).
        (None, Some(Payload::Data(value))) => match JsonText::of_wire(value) {
            Ok(text) => non_json_value(text.get().starts_with('"'), v),
            Err(NotJson::NonFinite) => {
                non_json_value(false, v);
                v.add(
                    "data",
                    "is not valid JSON: NaN and Infinity cannot be represented in JSON",
                );
            }
            Err(NotJson::Malformed(why)) => {
                v.add("data", format!("is not a google.protobuf.Value: {why}"))
            }
        },
    }
}

/// `data` as the topic's consumers will parse it: nested at most `limits.max_data_depth` deep,
/// no number literal longer than `limits.max_number_length`, valid Unicode only (a lone
/// surrogate escape such as `"\ud800"` is not). Ordinary consumers fail on such data
/// (recursion limits, numbers parsed as doubles, strict UTF-16), so it is refused here rather
/// than stored. Checked on the encoded JSON, so REST's exact text and gRPC's
/// `google.protobuf.Value` meet the same rule.
fn data_policy_rule(
    c: &Checked,
    ctx: &Context<'_>,
    _: Option<&TypeContract>,
    v: &mut Violations<'_>,
) {
    if let Data::Json(raw) = &c.event.data
        && let Err(why) = data_policy(raw.get(), ctx.limits)
    {
        v.add("data", why);
    }
}

/// One pass over JSON text serde_json has already found well formed, tracking only what the
/// policy needs: bracket depth, number literal lengths and `\u` escapes. serde_json offers
/// none of the three for `RawValue` (it keeps the text unparsed, without a depth limit, and
/// does not judge escapes); parsing into `serde_json::Value` would allocate every node and
/// stop at its own fixed depth of 128 with an error naming a position, not the limit.
fn data_policy(text: &str, limits: &Limits) -> Result<(), String> {
    let b = text.as_bytes();
    let hex = |at: usize| {
        b.get(at..at + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u16::from_str_radix(h, 16).ok())
    };
    let lone = |at: usize| {
        format!(
            "holds a lone surrogate escape (\\u{}) at byte {at}: only valid Unicode is stored",
            text.get(at + 2..at + 6).unwrap_or("")
        )
    };
    let (mut depth, mut i) = (0usize, 0usize);
    while i < b.len() {
        match b[i] {
            b'[' | b'{' => {
                depth += 1;
                if depth > limits.max_data_depth {
                    return Err(format!(
                        "nesting deeper than {} (limits.max_data_depth)",
                        limits.max_data_depth
                    ));
                }
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'"' => {
                i += 1;
                while let Some(&ch) = b.get(i) {
                    match ch {
                        b'"' => break,
                        b'\\' if b.get(i + 1) == Some(&b'u') => {
                            let at = i;
                            let unit = hex(i + 2).unwrap_or(0);
                            i += 6;
                            if (0xD800..0xDC00).contains(&unit) {
                                let pair = b.get(i..i + 2) == Some(b"\\u")
                                    && hex(i + 2).is_some_and(|u| (0xDC00..0xE000).contains(&u));
                                if !pair {
                                    return Err(lone(at));
                                }
                                i += 6;
                            } else if (0xDC00..0xE000).contains(&unit) {
                                return Err(lone(at));
                            }
                        }
                        b'\\' => i += 2,
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while b
                    .get(i)
                    .is_some_and(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                {
                    i += 1;
                }
                if i - start > limits.max_number_length {
                    return Err(format!(
                        "holds a number of {} characters, over the limit of {} (limits.max_number_length)",
                        i - start,
                        limits.max_number_length
                    ));
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// `extensions`: CloudEvents attribute names, not a context attribute, bounded non-empty
/// values without control characters.
fn extensions_rule(i: &Incoming, v: &mut Violations<'_>) {
    for (name, value) in &i.event.extensions {
        let field = format!("extensions[{name}]");
        if name.is_empty()
            || name.len() > MAX_EXTENSION_NAME_LEN
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            v.add(
                &field,
                format!(
                    "extension names must be 1-{MAX_EXTENSION_NAME_LEN} characters of a-z and 0-9"
                ),
            );
        } else if RESERVED.contains(&name.as_str()) {
            v.add(
                &field,
                "is a CloudEvents context attribute; set the field itself, not an extension",
            );
        }
        if value.is_empty() {
            v.add(&field, "must not be empty (omit the extension instead)");
        } else if value.len() > MAX_ATTRIBUTE_LEN {
            v.add(
                &field,
                format!("must be at most {MAX_ATTRIBUTE_LEN} characters"),
            );
        } else if has_control(value) {
            v.add(&field, "must not contain control characters");
        }
    }
}

/// The whole event, in the CloudEvents JSON format, within `limits.max_event_size`.
fn size_rule(c: &Checked, ctx: &Context<'_>, _: Option<&TypeContract>, v: &mut Violations<'_>) {
    let limit = ctx.limits.max_event_size;
    // Counted only when the bound cannot answer: counting writes the whole event once more
    // (about 2K instructions an event, #26).
    if structured_size_bound(&c.event) <= limit {
        return;
    }
    let size = c.size();
    if size > limit {
        v.add(
            "",
            format!(
                "event is {size} bytes in the CloudEvents JSON format, over the limit of {limit} bytes (limits.max_event_size)"
            ),
        );
    }
}

/// With `types.policy: registered`, the type must match a registry entry.
fn registered_rule(
    _: &Checked,
    ctx: &Context<'_>,
    contract: Option<&TypeContract>,
    v: &mut Violations<'_>,
) {
    if contract.is_none() && ctx.types.policy == TypesPolicy::Registered {
        v.add(
            "type",
            "not a registered event type (types.policy is registered; GET /api/v1/types lists them)",
        );
    }
}

/// The attributes the type's contract requires: its `datacontenttype` (same media type,
/// parameters aside) and its `dataschema` (filled in when absent, so only a different one
/// is refused).
fn contract_attributes_rule(
    c: &Checked,
    _: &Context<'_>,
    contract: Option<&TypeContract>,
    v: &mut Violations<'_>,
) {
    let Some(contract) = contract else { return };
    let ty = &c.event.ty;
    if let Some(want) = &contract.datacontenttype {
        let essence = |s: &str| s.parse::<mime::Mime>().map(|m| m.essence_str().to_owned());
        let same = match &c.event.datacontenttype {
            Some(got) => essence(got).ok() == essence(want).ok(),
            None => false,
        };
        if !same {
            v.add(
                "datacontenttype",
                format!("must be `{want}` for events of type `{ty}`"),
            );
        }
    }
    if let (Some(want), Some(got)) = (&contract.dataschema, &c.event.dataschema)
        && want != got
    {
        v.add(
            "dataschema",
            format!("must be `{want}` for events of type `{ty}` (or omitted)"),
        );
    }
}

/// `data` matches the JSON Schema of the type's contract: every violation, by its path inside
/// `data`, with the keyword's message. Binary data cannot match a JSON Schema; absent data is
/// checked as `null`.
fn schema_rule(
    c: &Checked,
    ctx: &Context<'_>,
    contract: Option<&TypeContract>,
    v: &mut Violations<'_>,
) {
    let Some((pattern, schema)) = contract.and_then(|c| Some((&c.pattern, c.schema.as_ref()?)))
    else {
        return;
    };
    let ty = &c.event.ty;
    let value = match &c.event.data {
        Data::Json(raw) => match serde_json::from_str::<serde_json::Value>(raw.get()) {
            Ok(value) => value,
            Err(e) => {
                v.add(
                    "data",
                    format!("cannot be checked against the schema of `{pattern}`: {e}"),
                );
                (ctx.on_schema_violation)(ty);
                return;
            }
        },
        Data::None => serde_json::Value::Null,
        Data::Binary(_) => {
            v.add(
                "data",
                format!("is binary (data_base64), but events of type `{ty}` must carry JSON data matching the schema of `{pattern}`"),
            );
            (ctx.on_schema_violation)(ty);
            return;
        }
    };
    let (found, more) = schema.violations(&value);
    if found.is_empty() {
        return;
    }
    (ctx.on_schema_violation)(ty);
    for sv in found {
        v.add(&format!("data{}", sv.path), sv.message);
    }
    if more > 0 {
        v.add(
            "data",
            format!(
                "and {more} more schema violations, not listed (the first {MAX_SCHEMA_VIOLATIONS} are)"
            ),
        );
    }
}

/// Length of the event's CloudEvents JSON encoding, counted without building it.
fn structured_size(event: &Event) -> usize {
    // Written by the direct writer, the bytes the sinks store: serde's form (which a unit
    // test holds the writer to) would read `data` once more to pass it through.
    // Grown as it is written (not sized by the bound: up to 6x the text for hostile strings).
    let mut out = Vec::with_capacity(512);
    event.write_structured_json(&mut out);
    out.len()
}

/// An upper bound on [`structured_size`] from the fields' lengths alone, without writing
/// anything: serde_json writes each byte of a string in at most 6 (`\u001f`), a raw `data`
/// as it is, `data_base64` in 4 per 3; every member adds its quotes, colon and comma, and
/// the braces, `specversion` and `time` (at most 33 characters: chrono writes a year beyond
/// 9999 in up to 7) stay under 96. A test holds it above the count for hostile strings.
fn structured_size_bound(event: &Event) -> usize {
    let member = |key: &str, value_len: usize| 6 * (key.len() + value_len) + 6;
    let mut n = 96 + member("id", event.id.len());
    n += member("source", event.source.len()) + member("type", event.ty.len());
    if let Some(s) = &event.subject {
        n += member("subject", s.len());
    }
    if let Some(s) = &event.datacontenttype {
        n += member("datacontenttype", s.len());
    }
    if let Some(s) = &event.dataschema {
        n += member("dataschema", s.len());
    }
    for (k, v) in &event.extensions {
        n += member(k, v.len());
    }
    n + match &event.data {
        Data::None => 0,
        Data::Json(raw) => raw.get().len() + 8,
        Data::Binary(b) => b.len().div_ceil(3) * 4 + 17,
    }
}

/// A batch of `n` events when at most `max` are taken. The decoders raise it too, before a
/// single event is decoded, so the count is refused alike wherever it is noticed.
pub fn too_many_events(n: usize, max: usize) -> Vec<FieldViolation> {
    vec![FieldViolation::new(
        "events",
        format!("has {n} events, over the limit of {max} per batch (limits.max_batch_events)"),
    )]
}

/// Checks a whole batch: the count, then every event. All violations of every event are
/// returned together; the batch is valid only if every event is.
pub fn check_batch(
    events: Vec<Incoming>,
    ctx: &Context<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<Checked>, Vec<FieldViolation>> {
    let limits = ctx.limits;
    if events.is_empty() {
        return Err(vec![FieldViolation::new(
            "events",
            "must contain at least one event",
        )]);
    }
    if events.len() > limits.max_batch_events {
        return Err(too_many_events(events.len(), limits.max_batch_events));
    }
    let mut ok = Vec::with_capacity(events.len());
    let mut violations = BatchViolations::default();
    for (i, ev) in events.into_iter().enumerate() {
        match check_event_counted(ev, Place::Item("events", i), ctx, now) {
            Ok(c) => ok.push(c),
            Err(found) => violations.absorb(found),
        }
    }
    match violations.into_violations() {
        None => Ok(ok),
        Some(v) => Err(v),
    }
}

#[cfg(test)]
mod tests;
