//! `google.protobuf.Value` as this crate holds it: a gRPC client's `CloudEvent.data` kept
//! as the wire bytes it arrived in; a value built here (`EventType.schema`, from the types
//! file) kept as pbjson-types' tree.
//!
//! Why not the generated type throughout: prost decoded every `data` into pbjson-types'
//! `Value` tree, a `Struct` a SipHash `HashMap` of boxed values, only for the core to write it
//! out as JSON and drop it: about 4K instructions a gRPC event, a fifth of a stream's (#26).
//! Kept as bytes, decoding is a copy, and the core writes the JSON from the bytes in one pass
//! (`core::event::JsonText::of_wire`), falling back to [`WireValue::to_value`] for what that
//! pass does not take (a repeated field, a key sent twice). The Value's own fields are read
//! by prost's readers for their types (wire types, lengths); what is inside a `string_value`,
//! `struct_value` or `list_value` (UTF-8, nesting, the objects and lists themselves) is read,
//! and refused if malformed, by the core, which names the event's `data` in the error.
//! `build.rs` maps `.google.protobuf.Value` here.
use bytes::{Buf, BufMut};
use prost::DecodeError;
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint};

/// A `google.protobuf.Value`.
#[derive(Clone)]
pub struct WireValue(Repr);

#[derive(Clone)]
enum Repr {
    /// The known fields of a received message in the order sent: each key in its shortest
    /// form, each field's contents as sent (a number or bool re-encoded as prost read it);
    /// unknown fields dropped, as prost drops them.
    Wire(Vec<u8>),
    /// A value built here, serialized as pbjson-types serializes it (no decoding, so no
    /// recursion limit on the way out: a types file's schema may nest deeper than prost reads).
    Tree(pbjson_types::Value),
}

/// What a [`WireValue`] holds ([`WireValue::form`]).
pub enum Form<'a> {
    /// A received message's fields.
    Wire(&'a [u8]),
    /// A value built here.
    Tree(&'a pbjson_types::Value),
}

impl WireValue {
    /// Its bytes as received, or the tree it was built from.
    pub fn form(&self) -> Form<'_> {
        match &self.0 {
            Repr::Wire(bytes) => Form::Wire(bytes),
            Repr::Tree(value) => Form::Tree(value),
        }
    }

    /// The value as pbjson-types' tree: a received message decoded by prost with its every
    /// rule (the last of repeated fields wins, a map's last duplicate key wins, nesting at
    /// most 100 messages deep).
    pub fn to_value(&self) -> Result<pbjson_types::Value, DecodeError> {
        match &self.0 {
            Repr::Wire(bytes) => prost::Message::decode(bytes.as_slice()),
            Repr::Tree(value) => Ok(value.clone()),
        }
    }

    /// A received message's bytes, a built value's encoded (for merging into it).
    fn wire_mut(&mut self) -> &mut Vec<u8> {
        if let Repr::Tree(value) = &self.0 {
            self.0 = Repr::Wire(prost::Message::encode_to_vec(value));
        }
        match &mut self.0 {
            Repr::Wire(bytes) => bytes,
            Repr::Tree(_) => unreachable!("made Wire above"),
        }
    }
}

impl Default for WireValue {
    fn default() -> Self {
        WireValue(Repr::Wire(Vec::new()))
    }
}

impl From<pbjson_types::Value> for WireValue {
    fn from(value: pbjson_types::Value) -> Self {
        WireValue(Repr::Tree(value))
    }
}

/// Equal when they are the same value: trees compared as trees (a map's order aside), bytes
/// that do not decode as bytes.
impl PartialEq for WireValue {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Repr::Wire(a), Repr::Wire(b)) if a == b => true,
            _ => match (self.to_value(), other.to_value()) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            },
        }
    }
}

impl std::fmt::Debug for WireValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.to_value() {
            Ok(v) => v.fmt(f),
            Err(e) => write!(f, "WireValue({e})"),
        }
    }
}

impl prost::Message for WireValue {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match &self.0 {
            Repr::Wire(bytes) => buf.put_slice(bytes),
            Repr::Tree(value) => value.encode_raw(buf),
        }
    }

    /// `google.protobuf.Value`'s fields: `null_value` (1, an enum), `number_value` (2, a
    /// double), `string_value` (3), `bool_value` (4), `struct_value` (5), `list_value` (6).
    /// Each read by prost's own reader for its type (wire type and length checked as for the
    /// generated type), then written back; others skipped, as prost skips unknown fields.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        use prost::encoding::{bytes as length_delimited, double, uint64};
        let out = self.wire_mut();
        match tag {
            1 | 4 => {
                let mut v = 0;
                uint64::merge(wire_type, &mut v, buf, ctx)?;
                encode_key(tag, wire_type, out);
                encode_varint(v, out);
            }
            2 => {
                let mut v = 0.0;
                double::merge(wire_type, &mut v, buf, ctx)?;
                encode_key(tag, wire_type, out);
                out.put_f64_le(v);
            }
            3 | 5 | 6 => {
                // The length and the bytes copied as they are when the buffer holds them in
                // one piece (tonic's always does): one copy, no allocation but the list's.
                let chunk = buf.chunk();
                let mut rest = chunk;
                if wire_type == WireType::LengthDelimited
                    && let Ok(len) = prost::encoding::decode_varint(&mut rest)
                    && len <= rest.len() as u64
                {
                    let n = chunk.len() - rest.len() + len as usize;
                    out.reserve(n + 1);
                    encode_key(tag, wire_type, out);
                    out.extend_from_slice(&chunk[..n]);
                    buf.advance(n);
                    return Ok(());
                }
                // Otherwise (or to say why not) prost's reader, through a copy.
                let mut v = bytes::Bytes::new();
                length_delimited::merge(wire_type, &mut v, buf, ctx)?;
                encode_key(tag, wire_type, out);
                encode_varint(v.len() as u64, out);
                out.extend_from_slice(&v);
            }
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx)?,
        }
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        match &self.0 {
            Repr::Wire(bytes) => bytes.len(),
            Repr::Tree(value) => value.encoded_len(),
        }
    }

    fn clear(&mut self) {
        *self = WireValue::default();
    }
}

/// The JSON form is the Value's own (any JSON value), through pbjson-types: the types reply
/// writes a schema this way (a tree, never decoded); clients and tests build events from JSON.
impl serde::Serialize for WireValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Repr::Tree(value) => value.serialize(s),
            Repr::Wire(_) => self
                .to_value()
                .map_err(serde::ser::Error::custom)?
                .serialize(s),
        }
    }
}

impl<'de> serde::Deserialize<'de> for WireValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        pbjson_types::Value::deserialize(d).map(WireValue::from)
    }
}

#[cfg(test)]
mod tests {
    use super::WireValue;
    use prost::Message as _;

    /// A CloudEvent decodes with its `data` as the Value's bytes, and encodes back to the same
    /// message; a `Value` with a field of the wrong wire type is refused as prost refuses it.
    #[test]
    fn data_round_trips_as_bytes_and_bad_wire_types_are_refused() {
        let value: pbjson_types::Value =
            serde_json::from_str(r#"{"a":[1,"x",true,null],"b":{"c":2.5}}"#).unwrap();
        let ev = crate::proto::CloudEvent {
            r#type: "t".into(),
            payload: Some(crate::proto::cloud_event::Payload::Data(
                value.clone().into(),
            )),
            ..Default::default()
        };
        let bytes = ev.encode_to_vec();
        let back = crate::proto::CloudEvent::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, ev);
        assert_eq!(back.encode_to_vec(), bytes);
        let Some(crate::proto::cloud_event::Payload::Data(data)) = back.payload else {
            panic!("data")
        };
        assert_eq!(data.to_value().unwrap(), value);

        // data (field 9) holding a Value whose string_value (3) is a varint.
        let bad = [0x4a, 0x02, 0x18, 0x01];
        assert!(crate::proto::CloudEvent::decode(&bad[..]).is_err());
        // ... and one with an unknown field (7), skipped.
        let unknown = [0x4a, 0x04, 0x38, 0x01, 0x20, 0x01];
        let ev = crate::proto::CloudEvent::decode(&unknown[..]).unwrap();
        let Some(crate::proto::cloud_event::Payload::Data(data)) = ev.payload else {
            panic!("data")
        };
        assert_eq!(data.to_value().unwrap(), pbjson_types::Value::from(true));
        // A truncated length.
        let short = [0x4a, 0x03, 0x1a, 0x05, b'a'];
        assert!(crate::proto::CloudEvent::decode(&short[..]).is_err());
    }

    /// A value built here (a types file's schema) serializes as its tree, whatever its
    /// depth: decoding it back through prost would stop at 100 messages.
    #[test]
    fn a_built_value_serializes_at_any_depth() {
        let mut json = serde_json::json!("leaf");
        for _ in 0..200 {
            json = serde_json::json!({ "a": [json] });
        }
        let value: WireValue = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&value).unwrap(), json);
        assert_eq!(value.encoded_len(), value.encode_to_vec().len());
    }
}
