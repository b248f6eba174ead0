//! Spool recovery from arbitrary bytes: a segment file holding them (after a valid header
//! when the first byte is odd, so the fuzzer reaches the frames), read as recovery reads it.
#![no_main]

use event_gateway::spool::{self, Record, segment};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let mut bytes = Vec::new();
    if first % 2 == 1 {
        bytes.extend_from_slice(&segment::encode_header(1));
        // Now and then a version 1 header: old segments are still read.
        if first % 4 == 3 {
            bytes[..24].copy_from_slice(&segment::encode_header_version(1, 1));
        }
    }
    bytes.extend_from_slice(rest);
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let path = dir.path().join(segment::file_name(1));
    std::fs::write(&path, &bytes).unwrap();
    if let Ok(mut reader) = segment::Reader::open(&spool::RealFs, &path) {
        while let Ok(Some(frame)) = reader.next_frame() {
            if let segment::Frame::Record { payload, .. } = frame {
                let _ = Record::decode(&payload);
            }
        }
        let end = reader.end().cloned();
        if let Some(end) = end {
            assert!(end.valid_len() <= bytes.len() as u64, "{end:?} past the file");
        }
    }
    let _ = spool::read_events(dir.path());
});
