//! Arbitrary bytes as a gallery log (and as an outbox record read back by the sinks): the parsers
//! must never panic; what the log scan accepts ends at a line end, and every operation it returns
//! survives an encode → decode round trip unchanged.
#![no_main]

use camgate::gallery::log::{decode, encode, scan, Line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for header_seen in [false, true] {
        let s = scan(data, header_seen);
        assert!(s.consumed <= data.len());
        assert!(s.consumed == 0 || data[s.consumed - 1] == b'\n');
        assert!(!(s.torn_tail && s.damage.is_some()));
        for op in &s.ops {
            let line = encode(op);
            match decode(&line[..line.len() - 1]) {
                Ok(Line::Op(again)) => assert_eq!(&*again, op),
                other => panic!("{op:?} re-encoded does not decode: {other:?}"),
            }
        }
    }
    let _ = camgate::results::Stored::parse(data);
});
