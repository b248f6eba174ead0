//! A `google.protobuf.Value` in its wire bytes written as JSON text in one pass, for
//! [`JsonText::of_wire`](super::JsonText::of_wire).
//!
//! Hand-written, not prost's: prost has only the generated tree (pbjson-types' `Value`, a
//! `Struct` a SipHash `HashMap`), which cost a gRPC event about 4K instructions to build,
//! write and drop (#26). This reader takes only the regular shape, each `Value` one known
//! field, each map entry at most one key and one value (in either order; an absent one is
//! prost's default), no key twice in an object, nesting at most [`MAX_DEPTH`], valid UTF-8,
//! finite numbers, and gives up (None) on anything else, so that prost decides every other
//! case with its own rules. What it writes is what prost's tree through `JsonText::of_value`
//! would, except that an object's members keep the order they were sent in (the tree's
//! `HashMap` had none) and that it reads nesting past prost's recursion limit (see
//! [`MAX_DEPTH`]): unit tests hold it to that over random and mangled messages.
use prost::encoding::decode_varint;

use super::{write_json_number, write_json_str};

/// Values nested deeper than this are left to prost, whose recursion limit (100 messages:
/// two a list level, three an object level) refuses them. Below it this reader takes data
/// that prost would not decode (51 lists or 34 objects deep and more), which
/// `limits.max_data_depth` (at most 31) then refuses by name: a bound on the recursion here,
/// not a rule of what is valid.
const MAX_DEPTH: u32 = 100;

/// In an object with more members than this, keys are checked against a hash set of the
/// ones before them rather than one by one.
const LINEAR_KEYS: usize = 16;

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LENGTH_DELIMITED: u64 = 2;

/// A varint: one byte read here (every key of a `Value`, and lengths under 128), longer ones
/// by prost.
#[inline(always)]
fn varint(b: &mut &[u8]) -> Option<u64> {
    match b.split_first() {
        Some((&byte, rest)) if byte < 0x80 => {
            *b = rest;
            Some(u64::from(byte))
        }
        _ => decode_varint(b).ok(),
    }
}

/// The next field's number and wire type.
#[inline(always)]
fn key(b: &mut &[u8]) -> Option<(u64, u64)> {
    let k = varint(b)?;
    Some((k >> 3, k & 7))
}

/// A length-delimited field's bytes.
#[inline(always)]
fn slice<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(varint(b)?).ok()?;
    if len > b.len() {
        return None;
    }
    let (head, rest) = b.split_at(len);
    *b = rest;
    Some(head)
}

/// A key or string's bytes as a JSON string. Printable ASCII without a quote or backslash
/// (nearly every key, most values) is quoted as it is, checked in one pass 16 bytes at a
/// time: it is UTF-8 and needs no escape. Anything else is checked as UTF-8 and written by
/// `write_json_str`.
fn write_str(out: &mut Vec<u8>, b: &[u8]) -> Option<()> {
    let special = |x: u8| !(0x20..0x80).contains(&x) | (x == b'"') | (x == b'\\');
    let any = |chunk: &[u8]| chunk.iter().fold(false, |any, &x| any | special(x));
    let plain = if b.len() < 16 {
        !b.iter().any(|&x| special(x))
    } else {
        !(b.chunks_exact(16).any(any) || any(&b[b.len() - 16..]))
    };
    if plain {
        out.reserve(b.len() + 2);
        out.push(b'"');
        out.extend_from_slice(b);
        out.push(b'"');
    } else {
        write_json_str(out, std::str::from_utf8(b).ok()?);
    }
    Some(())
}

/// The fields of one `Value` message (`b`, without its length) as JSON appended to `out`.
pub(super) fn write_value(out: &mut Vec<u8>, mut b: &[u8], depth: u32) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    if b.is_empty() {
        // No kind set: prost's tree writes it as null.
        out.extend_from_slice(b"null");
        return Some(());
    }
    let field = key(&mut b)?;
    match field {
        // null_value: an enum, whatever its number.
        (1, VARINT) => {
            decode_varint(&mut b).ok()?;
            out.extend_from_slice(b"null");
        }
        (2, FIXED64) => {
            let (bits, rest) = b.split_first_chunk::<8>()?;
            b = rest;
            write_json_number(out, f64::from_le_bytes(*bits))?;
        }
        (3, LENGTH_DELIMITED) => write_str(out, slice(&mut b)?)?,
        (4, VARINT) => {
            let v = decode_varint(&mut b).ok()?;
            out.extend_from_slice(if v != 0 { b"true" } else { b"false" });
        }
        (5, LENGTH_DELIMITED) => write_struct(out, slice(&mut b)?, depth)?,
        (6, LENGTH_DELIMITED) => write_list(out, slice(&mut b)?, depth)?,
        _ => return None,
    }
    // A second field (the last would win, or messages would merge): prost's to decide.
    b.is_empty().then_some(())
}

/// A `Struct`'s fields: entries of `fields` (1), each its key (1) and its value (2).
fn write_struct(out: &mut Vec<u8>, mut b: &[u8], depth: u32) -> Option<()> {
    // The first keys on the stack, compared one by one; past them a hash set of all.
    let mut keys: [&[u8]; LINEAR_KEYS] = [&[]; LINEAR_KEYS];
    let mut n = 0;
    let mut set: Option<hashbrown::HashSet<&[u8]>> = None;
    out.push(b'{');
    while !b.is_empty() {
        if key(&mut b)? != (1, LENGTH_DELIMITED) {
            return None;
        }
        let mut entry = slice(&mut b)?;
        let (mut k, mut v) = (None, None);
        while !entry.is_empty() {
            match key(&mut entry)? {
                (1, LENGTH_DELIMITED) if k.is_none() => k = Some(slice(&mut entry)?),
                (2, LENGTH_DELIMITED) if v.is_none() => v = Some(slice(&mut entry)?),
                _ => return None,
            }
        }
        // An absent key is "" and an absent value null, as prost reads them: prost itself
        // writes neither when it is the default (an empty key, a Value with no kind).
        let (k, v) = (k.unwrap_or(b""), v.unwrap_or(b""));
        // A key sent twice: the last wins in prost's map.
        let repeated = match &mut set {
            Some(set) => !set.insert(k),
            None if n < LINEAR_KEYS => {
                let seen = keys[..n].contains(&k);
                keys[n] = k;
                n += 1;
                seen
            }
            None => {
                let mut all: hashbrown::HashSet<&[u8]> = keys.iter().copied().collect();
                let seen = !all.insert(k);
                set = Some(all);
                seen
            }
        };
        if repeated {
            return None;
        }
        if out.last() != Some(&b'{') {
            out.push(b',');
        }
        write_str(out, k)?;
        out.push(b':');
        write_value(out, v, depth + 1)?;
    }
    out.push(b'}');
    Some(())
}

/// A `ListValue`'s fields: `values` (1), each a `Value`.
fn write_list(out: &mut Vec<u8>, mut b: &[u8], depth: u32) -> Option<()> {
    out.push(b'[');
    while !b.is_empty() {
        if key(&mut b)? != (1, LENGTH_DELIMITED) {
            return None;
        }
        if out.last() != Some(&b'[') {
            out.push(b',');
        }
        write_value(out, slice(&mut b)?, depth + 1)?;
    }
    out.push(b']');
    Some(())
}

#[cfg(test)]
mod tests {
    use super::super::{JsonText, NotJson, RandomValues};
    use crate::proto::WireValue;
    use pbjson_types::value::Kind;
    use pbjson_types::{Struct, Value};
    use prost::Message as _;

    /// What prost's tree and `of_value` make of `bytes` (the verdict before this reader), as
    /// a serde_json value (objects compared without their order), or why it has no JSON.
    fn prost_verdict(bytes: &[u8]) -> Result<serde_json::Value, NotJson> {
        let v = Value::decode(bytes).map_err(|e| NotJson::Malformed(e.to_string()))?;
        let text = JsonText::of_value(&v).ok_or(NotJson::NonFinite)?;
        Ok(serde_json::from_str(text.get()).unwrap())
    }

    fn bytes_of(w: &WireValue) -> &[u8] {
        match w.form() {
            crate::proto::WireForm::Wire(bytes) => bytes,
            crate::proto::WireForm::Tree(_) => panic!("a received value is bytes"),
        }
    }

    /// `bytes` as a CloudEvent's `data` (field 9) as the gateway receives it; None when
    /// that CloudEvent does not decode.
    fn wire(bytes: &[u8]) -> Option<WireValue> {
        let mut ev = vec![0x4a];
        prost::encoding::encode_varint(bytes.len() as u64, &mut ev);
        ev.extend_from_slice(bytes);
        match crate::proto::CloudEvent::decode(ev.as_slice())
            .ok()?
            .payload
        {
            Some(crate::proto::cloud_event::Payload::Data(w)) => Some(w),
            other => panic!("{other:?}"),
        }
    }

    /// Random values, whole and then mangled (bytes flipped, cut, fields and keys repeated):
    /// `of_wire` agrees with prost's tree on every one, and the regular ones take the direct
    /// path with the members in the order sent.
    #[test]
    fn of_wire_agrees_with_prost_on_random_and_mangled_values() {
        let mut values = RandomValues {
            state: 0x2545_f491_4f6c_dd1d,
            numbers: &[0.0, -0.0, 1.0, -2.5, 0.1, 1e300, 9_007_199_254_740_994.0],
            texts: &["", "k", "a\"q", "b\\s", "t\tn", "é 日本 🎉", "x"],
            flat_from: 5,
            members: 20,
            items: 5,
        };
        let (mut direct, mut fallen_back, mut refused) = (0, 0, 0);
        for round in 0..20_000 {
            let v = values.value(0);
            let mut bytes = v.encode_to_vec();
            match round % 4 {
                0 => {}
                1 if !bytes.is_empty() => {
                    let i = values.next() as usize % bytes.len();
                    bytes[i] ^= 1 << (values.next() % 8);
                }
                2 => {
                    let cut = values.next() as usize % (bytes.len() + 1);
                    bytes.truncate(cut);
                }
                _ => {
                    // The message twice: every field sent twice (prost merges them).
                    bytes = [bytes.clone(), bytes].concat();
                }
            }
            // A CloudEvent whose data does not decode is refused before `of_wire`.
            let Some(w) = wire(&bytes) else {
                continue;
            };
            let ours = JsonText::of_wire(&w);
            let theirs = prost_verdict(bytes_of(&w));
            match (&ours, &theirs) {
                (Ok(text), Ok(json)) => {
                    assert_eq!(
                        &serde_json::from_str::<serde_json::Value>(text.get()).unwrap(),
                        json
                    )
                }
                (Err(a), Err(b)) => assert_eq!(a, b),
                _ => panic!("{ours:?} vs {theirs:?} for {bytes:?}"),
            }
            let mut out = Vec::new();
            if super::write_value(&mut out, bytes_of(&w), 0).is_some() {
                direct += 1;
            } else if ours.is_ok() {
                fallen_back += 1;
            } else {
                refused += 1;
            }
        }
        // Every path taken often.
        assert!(
            direct > 5_000 && fallen_back > 1_000 && refused > 300,
            "{direct} {fallen_back} {refused}"
        );
    }

    /// The order sent is kept; a key sent twice and a nesting past prost's limit go to prost,
    /// which keeps the last and refuses the depth.
    #[test]
    fn members_keep_their_order_and_prost_decides_the_rest() {
        // The inner object has one member: prost would write two in its HashMap's order.
        let json = r#"{"zeta":1,"alpha":[true,null,"x",-0.0],"mid":{"b":2.5}}"#;
        let v: Value = serde_json::from_str(json).unwrap();
        let mut bytes = Vec::new();
        // Encoded by hand in the order above: a HashMap's order is not the text's.
        fn entry(k: &str, v: &Value) -> Vec<u8> {
            let mut e = Vec::new();
            prost::encoding::string::encode(1, &k.to_string(), &mut e);
            prost::encoding::message::encode(2, v, &mut e);
            e
        }
        let Some(Kind::StructValue(s)) = &v.kind else {
            panic!()
        };
        let mut fields = Vec::new();
        for k in ["zeta", "alpha", "mid"] {
            let e = entry(k, &s.fields[k]);
            prost::encoding::bytes::encode(1, &e, &mut fields);
        }
        prost::encoding::bytes::encode(5, &fields, &mut bytes);
        let w = wire(&bytes).unwrap();
        assert_eq!(
            JsonText::of_wire(&w).unwrap().get(),
            r#"{"zeta":1,"alpha":[true,null,"x",0],"mid":{"b":2.5}}"#
        );

        // "k" twice: prost keeps the last.
        let mut twice = Vec::new();
        prost::encoding::bytes::encode(1, &entry("k", &Value::from(1.0)), &mut twice);
        prost::encoding::bytes::encode(1, &entry("k", &Value::from(2.0)), &mut twice);
        let mut bytes = Vec::new();
        prost::encoding::bytes::encode(5, &twice, &mut bytes);
        assert_eq!(
            JsonText::of_wire(&wire(&bytes).unwrap()).unwrap().get(),
            r#"{"k":2}"#
        );

        // 200 lists deep: past prost's recursion limit, refused with prost's reason.
        let mut deep = Value::from(1.0);
        for _ in 0..200 {
            deep = Value::from(vec![deep]);
        }
        match JsonText::of_wire(&wire(&deep.encode_to_vec()).unwrap()) {
            Err(NotJson::Malformed(why)) => assert!(why.contains("recursion"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            JsonText::of_wire(&Value::from(f64::NAN).into()),
            Err(NotJson::NonFinite)
        );
    }

    /// Map entries as prost and other encoders write them: an empty key or a Value with no
    /// kind left out (prost writes no default), the value before the key; a key repeated past
    /// the first 16 (the hash set's check); and nesting past prost's limit, the one place
    /// this reader takes what prost would not.
    #[test]
    fn entries_in_every_shape_and_the_depth_past_prosts() {
        use prost::encoding::bytes;
        let direct = |bytes: &[u8]| {
            let mut out = Vec::new();
            super::write_value(&mut out, bytes, 0).map(|()| String::from_utf8(out).unwrap())
        };
        let object = |entries: &[Vec<u8>]| {
            let mut fields = Vec::new();
            for e in entries {
                bytes::encode(1, e, &mut fields);
            }
            let mut v = Vec::new();
            bytes::encode(5, &fields, &mut v);
            v
        };
        // {"": null} as prost writes it: an entry with neither field.
        let v = Value {
            kind: Some(Kind::StructValue(Struct {
                fields: [(String::new(), Value { kind: None })].into(),
            })),
        };
        let encoded = v.encode_to_vec();
        assert_eq!(direct(&encoded).as_deref(), Some(r#"{"":null}"#));
        assert!(prost_verdict(&encoded).is_ok_and(|j| j == serde_json::json!({"": null})));

        // The value (2) before the key (1).
        let mut entry = Vec::new();
        bytes::encode(2, &Value::from(true).encode_to_vec(), &mut entry);
        bytes::encode(1, &b"k".to_vec(), &mut entry);
        assert_eq!(direct(&object(&[entry])).as_deref(), Some(r#"{"k":true}"#));

        // 20 keys, the 19th a repeat of the 2nd: prost's, the last value kept.
        let entries: Vec<Vec<u8>> = (0..20)
            .map(|i| {
                let name = if i == 18 {
                    "k1".to_string()
                } else {
                    format!("k{i}")
                };
                let mut e = Vec::new();
                bytes::encode(1, &name.into_bytes(), &mut e);
                bytes::encode(2, &Value::from(f64::from(i)).encode_to_vec(), &mut e);
                e
            })
            .collect();
        let repeated = object(&entries);
        assert_eq!(direct(&repeated), None);
        let text = JsonText::of_wire(&wire(&repeated).unwrap()).unwrap();
        let json: serde_json::Value = serde_json::from_str(text.get()).unwrap();
        assert_eq!(json["k1"], 18);
        assert_eq!(json.as_object().unwrap().len(), 19);
        // Without the repeat, the order sent.
        let distinct = object(&entries[..18]);
        let text = direct(&distinct).unwrap();
        assert!(text.starts_with(r#"{"k0":0,"k1":1,"k2":2,"#) && text.ends_with(r#""k17":17}"#));

        // 60 lists deep: past prost's limit (50 lists), read here and written.
        let mut deep = Value::encode_to_vec(&Value::from(1.0));
        for _ in 0..60 {
            let mut list = Vec::new();
            bytes::encode(1, &deep, &mut list);
            deep = Vec::new();
            bytes::encode(6, &list, &mut deep);
        }
        assert!(prost_verdict(&deep).is_err());
        let text = JsonText::of_wire(&wire(&deep).unwrap()).unwrap();
        assert_eq!(text.get(), format!("{}1{}", "[".repeat(60), "]".repeat(60)));
    }
}
