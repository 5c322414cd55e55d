//! Arbitrary bytes as an EKYC record's key and value, read as both request kinds. None may panic;
//! an accepted raw picture holds exactly h·w·3 bytes within the pixel limit, an accepted aligned
//! face exactly 112·112·3, and what is accepted re-encodes to a request that parses the same.
#![no_main]

use camgate::ekyc::messages::{
    insightface_request, insightface_request_value, mtcnn_request, Picture, ALIGNED_SIDE,
};
use libfuzzer_sys::fuzz_target;

const MAX_BYTES: usize = 1 << 16;
const MAX_PIXELS: u64 = 4096;

fuzz_target!(|data: &[u8]| {
    // The first byte splits key from value, so both vary.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (key, value) = rest.split_at((n as usize).min(rest.len()));
    if let Ok(r) = mtcnn_request(Some(key), value, MAX_BYTES, MAX_PIXELS) {
        if let Picture::Bgr { height, width, data } = &r.picture {
            assert!(u64::from(*height) * u64::from(*width) <= MAX_PIXELS);
            assert_eq!(data.len() as u64, u64::from(*height) * u64::from(*width) * 3);
        }
    }
    if let Ok(r) = insightface_request(Some(key), value, MAX_BYTES) {
        for f in [&r.idface, &r.face].into_iter().flatten() {
            assert_eq!(f.0.len(), ALIGNED_SIDE * ALIGNED_SIDE * 3);
        }
        let again = insightface_request_value(r.api, &r.client_id, r.idface.as_ref(), r.face.as_ref());
        let back = insightface_request(Some(key), &again, usize::MAX).expect("re-encoded parses");
        assert_eq!(back, r);
    }
});
