//! Arbitrary bytes as an outbox segment file: the recovery parser must never panic, and what it
//! accepts must be self-consistent (re-encoding the accepted records gives back the valid prefix).
#![no_main]

use camgate::outbox::segment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The records region alone (what follows a header).
    let scan = segment::parse_records(data);
    assert!(scan.valid_len <= data.len());
    assert_eq!(scan.stop.is_none(), scan.valid_len == data.len());
    let mut again = Vec::new();
    for r in &scan.records {
        segment::encode_record(r, &mut again);
    }
    assert_eq!(&again[..], &data[..scan.valid_len]);

    // A whole file, header included.
    if let Ok(seg) = segment::parse_segment(data) {
        let mut again = segment::encode_header(seg.header.base_offset).to_vec();
        for r in &seg.records {
            segment::encode_record(r, &mut again);
        }
        assert_eq!(&again[..], &data[..seg.valid_len]);
    }
    let _ = segment::decode_record(data);
    if let Ok(name) = std::str::from_utf8(data) {
        let _ = segment::parse_file_name(name);
    }
});
