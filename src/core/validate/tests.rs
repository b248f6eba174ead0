//! The rules' own tests: every rule names its field, all violations reported together, the
//! accepted forms, normalising, `data`'s policy and the batch's paths and limits.
use super::*;

const LIMITS: Limits = Limits {
    max_data_depth: 4,
    max_number_length: 30,
    max_event_size: 2048,
    max_batch_events: 3,
};

/// Every string over a small alphabet (plain characters, `/`, and characters that make
/// or break a URI-reference), up to four long: where the shortcut says valid, the parser
/// agrees.
#[test]
fn a_plain_path_is_a_uri_reference() {
    let alphabet = [
        'a', 'Z', '9', '-', '.', '_', '~', '/', ':', '?', '#', '%', ' ', '[',
    ];
    let mut plain = 0;
    let mut words = vec![String::new()];
    for _ in 0..4 {
        words = words
            .iter()
            .flat_map(|w| alphabet.iter().map(move |c| format!("{w}{c}")))
            .collect();
        for w in &words {
            if is_plain_path(w) {
                plain += 1;
                assert!(fluent_uri::UriRef::parse(w.as_str()).is_ok(), "{w:?}");
            }
        }
    }
    assert!(plain > 4000, "{plain}");
    assert!(!is_plain_path("a:b") && !is_plain_path("a b") && !is_plain_path("%41"));
}

fn valid() -> CloudEvent {
    CloudEvent {
        r#type: "user.created".into(),
        source: "user-service".into(),
        ..Default::default()
    }
}

fn violations(ev: CloudEvent) -> Vec<FieldViolation> {
    match check_event(
        ev.into(),
        "event",
        &Context::limits_only(&LIMITS),
        Utc::now(),
    ) {
        Ok(_) => Vec::new(),
        Err(v) => v,
    }
}

fn fields(ev: CloudEvent) -> Vec<String> {
    violations(ev).into_iter().map(|v| v.field).collect()
}

#[test]
fn minimal_event_gets_id_and_time() {
    let before = Utc::now();
    let c = check_event(
        valid().into(),
        "event",
        &Context::limits_only(&LIMITS),
        Utc::now(),
    )
    .unwrap();
    let id = uuid::Uuid::parse_str(&c.event.id).unwrap();
    assert_eq!(id.get_version_num(), 7);
    assert!(c.event.time >= before);
    assert_eq!(c.size(), c.event.to_structured_json().len());
}

#[test]
fn the_size_bound_is_never_below_the_count() {
    let state = std::cell::Cell::new(0x2545_f491_4f6c_dd1d_u64);
    let next = || {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    };
    // Strings heavy in what JSON escapes longest (controls as \u00XX), quotes, and
    // multi-byte characters.
    let alphabet = ["\u{1}", "\"", "\\", "a", "é", "\u{1f600}", "\n", "\u{7f}"];
    let text = |max: u64| -> String {
        (0..next() % max)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect()
    };
    // The worst case: every string all controls, each written as \u00XX.
    let worst = "\u{1}".repeat(50);
    let mut e = Event::for_test(&worst);
    (e.source, e.ty, e.subject) = (worst.clone(), worst.clone(), Some(worst.clone()));
    e.extensions.insert("ext".into(), worst.clone());
    assert!(structured_size_bound(&e) >= structured_size(&e));
    for i in 0..2_000 {
        let mut e = Event::for_test(&text(40));
        e.source = text(60);
        e.ty = text(20);
        e.subject = (i % 2 == 0).then(|| text(30));
        e.datacontenttype = (i % 3 == 0).then(|| text(10));
        e.dataschema = (i % 5 == 0).then(|| text(10));
        for _ in 0..next() % 4 {
            e.extensions.insert(text(8), text(30));
        }
        e.data = match i % 3 {
            0 => Data::None,
            1 => Data::Binary((0..next() % 50).map(|b| b as u8).collect()),
            _ => Data::Json(
                serde_json::value::RawValue::from_string(serde_json::to_string(&text(50)).unwrap())
                    .unwrap()
                    .into(),
            ),
        };
        let count = structured_size(&e);
        assert!(structured_size_bound(&e) >= count, "{count}: {e:?}");
    }
}

/// Each row: a change to a valid event, and the field path that must be reported. A table:
/// long because every rule has a row, not because it does much.
#[test]
fn every_rule_names_its_field() {
    type Case = (&'static str, fn(&mut CloudEvent), &'static str);
    let cases: &[Case] = &[
        ("missing type", |e| e.r#type.clear(), "event.type"),
        ("missing source", |e| e.source.clear(), "event.source"),
        (
            "type with space",
            |e| e.r#type = "user created".into(),
            "event.type",
        ),
        (
            "type too long",
            |e| e.r#type = "a".repeat(MAX_TYPE_LEN + 1),
            "event.type",
        ),
        (
            "source not a URI-ref",
            |e| e.source = "a b".into(),
            "event.source",
        ),
        (
            "source too long",
            |e| e.source = "a".repeat(MAX_URI_LEN + 1),
            "event.source",
        ),
        ("id with space", |e| e.id = "a b".into(), "event.id"),
        (
            "id too long",
            |e| e.id = "a".repeat(MAX_ID_LEN + 1),
            "event.id",
        ),
        (
            "specversion",
            |e| e.specversion = "0.3".into(),
            "event.specversion",
        ),
        (
            "subject control",
            |e| e.subject = "a\u{7}".into(),
            "event.subject",
        ),
        (
            "subject too long",
            |e| e.subject = "a".repeat(MAX_ATTRIBUTE_LEN + 1),
            "event.subject",
        ),
        (
            "content type",
            |e| e.datacontenttype = "not a type".into(),
            "event.datacontenttype",
        ),
        (
            "relative dataschema",
            |e| e.dataschema = "schema.json".into(),
            "event.dataschema",
        ),
        (
            "json object with text content type",
            |e| {
                e.datacontenttype = "text/plain".into();
                e.payload = Some(Payload::Data(pbjson_types::Value::from(1.0).into()));
            },
            "event.data",
        ),
        (
            "NaN data",
            |e| e.payload = Some(Payload::Data(pbjson_types::Value::from(f64::NAN).into())),
            "event.data",
        ),
        (
            "time out of range",
            |e| {
                e.time = Some(pbjson_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                })
            },
            "event.time",
        ),
        (
            "uppercase extension",
            |e| {
                e.extensions.insert("Key".into(), "v".into());
            },
            "event.extensions[Key]",
        ),
        (
            "long extension name",
            |e| {
                e.extensions.insert("a".repeat(21), "v".into());
            },
            "event.extensions[aaaaaaaaaaaaaaaaaaaaa]",
        ),
        (
            "reserved extension",
            |e| {
                e.extensions.insert("subject".into(), "v".into());
            },
            "event.extensions[subject]",
        ),
        (
            "empty extension value",
            |e| {
                e.extensions.insert("traceparent".into(), String::new());
            },
            "event.extensions[traceparent]",
        ),
        (
            "too large",
            |e| {
                e.payload = Some(Payload::Data(
                    pbjson_types::Value::from("x".repeat(4096)).into(),
                ))
            },
            "event",
        ),
    ];
    for (name, change, field) in cases {
        let mut ev = valid();
        change(&mut ev);
        let got = fields(ev);
        assert_eq!(got, vec![field.to_string()], "case {name}");
    }
}

#[test]
fn all_violations_are_reported_together() {
    let ev = CloudEvent {
        id: "bad id".into(),
        ..Default::default()
    };
    assert_eq!(fields(ev), vec!["event.id", "event.source", "event.type"]);
}

#[test]
fn accepted_forms() {
    let mut ev = valid();
    ev.source = "https://example.com/users?x=1#frag".into();
    ev.dataschema = "urn:example:schema".into();
    ev.datacontenttype = "application/cloudevents+json; charset=utf-8".into();
    ev.payload = Some(Payload::Data(
        pbjson_types::Value::from(vec![pbjson_types::Value::from(1.0)]).into(),
    ));
    ev.extensions.insert("partitionkey".into(), "k1".into());
    assert!(violations(ev).is_empty());

    let mut ev = valid();
    ev.datacontenttype = "text/plain".into();
    ev.payload = Some(Payload::Data(
        pbjson_types::Value::from("plain text").into(),
    ));
    assert!(violations(ev).is_empty());

    let mut ev = valid();
    ev.datacontenttype = "image/png".into();
    ev.payload = Some(Payload::DataBase64(vec![0, 1, 2]));
    assert!(violations(ev).is_empty());

    // Every type docs/openapi.yaml calls JSON takes an array: `*/json`, `*/...+json` in
    // any case, with parameters (Schemathesis found `0/+JSON` refused).
    for ct in [
        "0/+JSON",
        "a/b+c+json",
        "text/JSON",
        "application/x+Json; v=1",
    ] {
        let mut ev = valid();
        ev.datacontenttype = ct.into();
        ev.payload = Some(Payload::Data(
            pbjson_types::Value::from(vec![pbjson_types::Value::from(1.0)]).into(),
        ));
        assert!(violations(ev).is_empty(), "{ct}");
    }
    let mut ev = valid();
    ev.datacontenttype = "application/jsonx".into();
    ev.payload = Some(Payload::Data(pbjson_types::Value::from(vec![]).into()));
    assert_eq!(fields(ev), vec!["event.data"]);
}

fn raw(json: &str) -> Incoming {
    Incoming {
        event: valid(),
        raw_data: Some(
            serde_json::value::RawValue::from_string(json.into())
                .unwrap()
                .into(),
        ),
    }
}

#[test]
fn data_policy_depth_numbers_and_unicode() {
    let ok = |t: &str| data_policy(t, &LIMITS);
    // LIMITS: depth 4, numbers of 30 characters.
    assert_eq!(ok(r#"{"a":[{"b":[1]}]}"#), Ok(()));
    let deep = ok(r#"{"a":[{"b":[[1]]}]}"#).unwrap_err();
    assert_eq!(deep, "nesting deeper than 4 (limits.max_data_depth)");
    // Brackets inside strings are text, not nesting.
    assert_eq!(ok(r#"["[[[[[[{{{{", "\"[[[["]"#), Ok(()));
    assert_eq!(ok(&"1".repeat(30)), Ok(()));
    assert_eq!(ok("-1.5e+300"), Ok(()));
    let long = ok(&format!("[{}]", "9".repeat(31))).unwrap_err();
    assert!(long.contains("number of 31 characters"), "{long}");
    // Digits in strings and keys are not numbers.
    assert_eq!(ok(&format!(r#"{{"{0}":"{0}"}}"#, "7".repeat(99))), Ok(()));
    // A surrogate pair is one character; either half alone is not Unicode.
    assert_eq!(ok(r#""\ud83d\ude00 \u00e9 \\ud800""#), Ok(()));
    for lone in [
        r#""\ud800""#,
        r#""x\uDBFFy""#,
        r#""\udc00""#,
        r#"{"\ud800\u0041":1}"#,
    ] {
        let e = ok(lone).unwrap_err();
        assert!(e.contains("lone surrogate"), "{lone}: {e}");
    }
}

#[test]
fn raw_json_data_is_kept_exactly() {
    let text = r#"{"z":1.0,"a":[1e3,12345678901234567890],"m":{"y":-0}}"#;
    let c = check_event(
        raw(text),
        "event",
        &Context::limits_only(&LIMITS),
        Utc::now(),
    )
    .unwrap();
    match &c.event.data {
        Data::Json(r) => assert_eq!(r.get(), text),
        other => panic!("{other:?}"),
    }
    // The content-type rule applies to raw data too: a string is fine as text/plain.
    let mut ok = raw(r#""hello""#);
    ok.event.datacontenttype = "text/plain".into();
    assert!(check_event(ok, "event", &Context::limits_only(&LIMITS), Utc::now()).is_ok());
    let mut bad = raw("[1]");
    bad.event.datacontenttype = "text/plain".into();
    let v = check_event(bad, "event", &Context::limits_only(&LIMITS), Utc::now())
        .err()
        .unwrap();
    assert_eq!(v[0].field, "event.data");
    let mut both = raw("1");
    both.event.payload = Some(Payload::DataBase64(vec![1]));
    let v = check_event(both, "event", &Context::limits_only(&LIMITS), Utc::now())
        .err()
        .unwrap();
    assert_eq!(v[0].field, "event.data");
}

#[test]
fn batch_paths_and_limits() {
    let now = Utc::now();
    let err = check_batch(vec![], &Context::limits_only(&LIMITS), now)
        .err()
        .unwrap();
    assert_eq!(err[0].field, "events");
    let err = check_batch(vec![valid().into(); 4], &Context::limits_only(&LIMITS), now)
        .err()
        .unwrap();
    assert_eq!(err[0].field, "events");
    assert!(err[0].description.contains("limit of 3"));

    let mut bad = valid();
    bad.r#type.clear();
    let err = check_batch(
        vec![valid().into(), bad.clone().into(), bad.into()],
        &Context::limits_only(&LIMITS),
        now,
    )
    .err()
    .unwrap();
    let fields: Vec<_> = err.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(fields, vec!["events[1].type", "events[2].type"]);
    assert_eq!(
        check_batch(vec![valid().into(); 3], &Context::limits_only(&LIMITS), now)
            .unwrap()
            .len(),
        3
    );
}
