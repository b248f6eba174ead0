//! The gRPC message codec: prost's encoding and decoding, with one difference. tonic-prost
//! answers a message that does not decode (truncated fields, bad wire types, invalid UTF-8 in
//! a string, an overlong varint) with INTERNAL, as if the server were at fault; here it is
//! the client's mistake, `Error::Malformed`, which `status.rs` renders as INVALID_ARGUMENT
//! with prost's description of what was wrong. The generated services and clients use it
//! (`build.rs` sets it as their codec).
//!
//! It also counts a batch's events before decoding them: an `IngestBatchRequest` of empty
//! events costs 2 bytes per event on the wire and a few hundred once decoded, so a 10 MiB
//! request would take gigabytes before `check_batch` could refuse it for its count.
use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Buf;
use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstEncoder};

use crate::core::error::Error;
use crate::proto::IngestBatchRequest;

/// The most events an `IngestBatchRequest` may carry to be decoded at all; 0 until a gateway
/// is built. Process-wide because tonic's generated code builds codecs with `Default`, so a
/// codec cannot carry one gateway's config: every gateway raises it to its
/// `limits.max_batch_events` (the binary runs one, so it is exactly that limit; tests that run
/// several in one process get the largest, and `check_batch` still applies each one's own).
static MAX_BATCH_EVENTS: AtomicUsize = AtomicUsize::new(0);

/// Batches with more than `max` events are refused before they are decoded.
pub fn admit_batches_of(max: usize) {
    MAX_BATCH_EVENTS.fetch_max(max, Ordering::Relaxed);
}

/// How many `events` (field 1) an encoded `IngestBatchRequest` holds: a walk over its
/// top-level keys with prost's own wire-format primitives, nothing allocated. `None` when the
/// bytes do not parse; the real decode then says why.
fn count_events(mut bytes: &[u8]) -> Option<usize> {
    use prost::encoding::{DecodeContext, decode_key, skip_field};
    let mut n = 0;
    while !bytes.is_empty() {
        let (tag, wire_type) = decode_key(&mut bytes).ok()?;
        n += usize::from(tag == 1);
        skip_field(wire_type, tag, &mut bytes, DecodeContext::default()).ok()?;
    }
    Some(n)
}

/// One message as the gRPC services decode it: a batch over the ceiling is refused by its
/// count, anything prost cannot decode is `Error::Malformed`. (Public for the fuzz targets.)
pub fn decode<U: Message + Default + 'static>(bytes: &[u8]) -> Result<U, Error> {
    let max = MAX_BATCH_EVENTS.load(Ordering::Relaxed);
    if max > 0
        && TypeId::of::<U>() == TypeId::of::<IngestBatchRequest>()
        && let Some(n) = count_events(bytes)
        && n > max
    {
        return Err(Error::InvalidArgument(
            crate::core::validate::too_many_events(n, max),
        ));
    }
    U::decode(bytes)
        .map_err(|e| Error::Malformed(format!("the protobuf message does not decode: {e}")))
}

#[derive(Debug, Clone, Copy)]
pub struct StrictCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(PhantomData)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct StrictDecoder<U>(PhantomData<U>);

impl<U: Message + Default + 'static> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // The message split off tonic's buffer, not copied (`BytesMut::split_to`).
        let message = buf.copy_to_bytes(buf.remaining());
        decode::<U>(&message).map(Some).map_err(Status::from)
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
