//! Arbitrary bytes as a camera callback body: the first byte picks a boundary length, the next
//! bytes are the boundary (as the Content-Type header would give it), the rest the body. The
//! parser must never panic, an accepted callback must round-trip through the encoder, and the
//! payload's typed event view must never panic either.
#![no_main]

use camgate::hook::callback::{boundary_from_content_type, encode_multipart, parse_callback};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n as usize % 72).min(rest.len());
    let (b, body) = rest.split_at(n);
    let Ok(b) = std::str::from_utf8(b) else {
        return;
    };
    let _ = boundary_from_content_type(&format!("multipart/form-data; boundary={b}"));
    if let Ok(cb) = parse_callback(body, b) {
        let _ = cb.event().map(|v| (v.kind(), v.event_id));
        let mut fields = vec![
            ("app_id", cb.app_id.as_str()),
            ("random", cb.random.as_str()),
            ("timestamp", cb.timestamp.as_str()),
            ("payload", cb.payload.as_str()),
        ];
        if let Some(s) = &cb.sign {
            fields.push(("sign", s.as_str()));
        }
        // Values holding the delimiter cannot round-trip (nor be produced by an encoder), and a
        // boundary with control characters is refused before the parser in the receiver.
        let delim = format!("\r\n--{b}");
        if !b.is_empty()
            && !b.bytes().any(|c| c.is_ascii_control())
            && fields
                .iter()
                .all(|(_, v)| !v.contains(&delim) && !v.starts_with(&delim[2..]))
        {
            let again = parse_callback(&encode_multipart(&fields, b), b);
            assert_eq!(again.as_ref(), Ok(&cb), "round trip");
        }
    }
});
