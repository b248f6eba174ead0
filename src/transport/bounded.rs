//! JSON arrays decoded with a ceiling on their length. A batch of empty events `{}` costs 3
//! bytes of body per event and far more once decoded, so a body within the size limit could
//! take gigabytes before the batch's count were checked. Here at most `max` elements are
//! decoded; past that the rest are only counted (serde's `IgnoredAny`, nothing allocated), so
//! the refusal still says how many there were.
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, SeqAccess, Visitor};

use crate::core::error::Error;
use crate::core::validate;

/// Why a bounded array did not decode.
#[derive(Debug)]
pub enum ArrayError {
    /// It has this many elements, more than the ceiling.
    TooMany(usize),
    /// It is not a JSON array of `T`.
    Json(serde_json::Error),
}

/// A batch's events from `json`, refused as validation refuses an over-long batch
/// (`events: has N events, over the limit…`) or as malformed, `what` saying what was expected.
pub fn events<T: DeserializeOwned>(json: &[u8], max: usize, what: &str) -> Result<Vec<T>, Error> {
    json_array(json, max).map_err(|e| match e {
        ArrayError::TooMany(n) => Error::InvalidArgument(validate::too_many_events(n, max)),
        ArrayError::Json(e) => Error::Malformed(format!("{what}: {e}")),
    })
}

/// `json` as an array of at most `max` elements of `T`.
pub fn json_array<T: DeserializeOwned>(json: &[u8], max: usize) -> Result<Vec<T>, ArrayError> {
    // Over text when it is UTF-8 (checked once, not string by string), else over the bytes
    // so that the error is serde_json's (as REST's bodies, #26).
    match std::str::from_utf8(json) {
        Ok(text) => array_from(serde_json::Deserializer::from_str(text), max, json.len()),
        Err(_) => array_from(serde_json::Deserializer::from_slice(json), max, json.len()),
    }
}

fn array_from<'de, T: DeserializeOwned, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    max: usize,
    len: usize,
) -> Result<Vec<T>, ArrayError> {
    let mut total = None;
    let seed = Seed {
        max,
        total: &mut total,
        capacity: first_capacity(len),
        element: PhantomData,
    };
    let decoded = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match (decoded, total) {
        (_, Some(n)) => Err(ArrayError::TooMany(n)),
        (Ok(v), None) => Ok(v),
        (Err(e), None) => Err(ArrayError::Json(e)),
    }
}

/// An array of at most `max` elements of `T` as one value inside a larger document (a
/// field's value): decoded in the same pass as the document around it. Past `max` it is
/// counted and `total` set, and it decodes to an empty list.
pub struct Seed<'t, T> {
    pub max: usize,
    /// Set when the array is over `max`: its whole length.
    pub total: &'t mut Option<usize>,
    /// The list's first capacity (at most `max` is taken): [`first_capacity`] of the text.
    pub capacity: usize,
    pub element: PhantomData<T>,
}

/// A first capacity for the list of a JSON text `len` bytes long: as many elements as fit
/// at 64 bytes each (a seed event takes about 120), at most 256. serde_json gives no length
/// for an array, and growing a list of 100 events from empty copied each about twice, some
/// 370 instructions an event (#26). Too small, the list grows as before; the cap keeps a
/// batch of a few large events from reserving room for hundreds (each ~300 bytes decoded).
pub fn first_capacity(len: usize) -> usize {
    (len / 64).min(256)
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Seed<'_, T> {
    type Value = Vec<T>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Seed<'_, T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let first = seq.size_hint().unwrap_or(self.capacity);
        let mut out = Vec::with_capacity(first.min(self.max));
        while out.len() < self.max {
            match seq.next_element()? {
                Some(x) => out.push(x),
                None => return Ok(out),
            }
        }
        if seq.next_element::<IgnoredAny>()?.is_none() {
            return Ok(out);
        }
        let mut n = out.len() + 1;
        drop(out);
        while seq.next_element::<IgnoredAny>()?.is_some() {
            n += 1;
        }
        *self.total = Some(n);
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A first guess, never a large reservation: a body of a few large events must not
    /// reserve room for hundreds of decoded ones.
    #[test]
    fn the_first_capacity_follows_the_body_up_to_a_cap() {
        assert_eq!(first_capacity(0), 0);
        assert_eq!(first_capacity(14_000), 218);
        assert_eq!(first_capacity(10 << 20), 256);
    }

    #[test]
    fn decodes_up_to_the_ceiling_and_counts_past_it() {
        let three = json_array::<u8>(b"[1,2,3]", 3).unwrap();
        assert_eq!(three, [1, 2, 3]);
        assert!(json_array::<u8>(b"[]", 3).unwrap().is_empty());
        assert!(matches!(
            json_array::<u8>(b"[1,2,3,4,5]", 3),
            Err(ArrayError::TooMany(5))
        ));
        // Elements past the ceiling are counted whatever they hold, not decoded as T.
        let e = json_array::<u8>(b"[1,2,3,{\"x\":[1]},\"s\"]", 3);
        assert!(matches!(e, Err(ArrayError::TooMany(5))), "{e:?}");
        assert!(matches!(
            json_array::<u8>(b"[1,\"x\"]", 3),
            Err(ArrayError::Json(_))
        ));
        assert!(matches!(
            json_array::<u8>(b"{}", 3),
            Err(ArrayError::Json(_))
        ));
        assert!(matches!(
            json_array::<u8>(b"[1] x", 3),
            Err(ArrayError::Json(_))
        ));
    }
}
