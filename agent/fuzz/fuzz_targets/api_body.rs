//! Arbitrary bytes as what the transactions API and processor read: request bodies (JSON and
//! multipart, every submission kind, treatments, reviews), path segments, a stored pictures
//! file and a stored transaction. None may panic; what the pictures decoder accepts re-encodes to
//! the same bytes, and a submission never carries more pictures than the limit.
#![no_main]

use camgate::api::body::{
    approval, percent_decode, submission_json, submission_multipart, treatment, Kind, Limits,
};
use camgate::gbds::service::Submission;
use camgate::gbds::store::{decode_images, encode_images};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_images: 3,
    max_image_bytes: 4096,
};

fn images(s: &Submission) -> usize {
    match s {
        Submission::Enroll { images, .. }
        | Submission::Update { images, .. }
        | Submission::Search { images, .. } => images.len(),
    }
}

fuzz_target!(|data: &[u8]| {
    for kind in [Kind::Enroll, Kind::Update("k".into()), Kind::Search] {
        if let Ok(s) = submission_json(kind.clone(), data, LIMITS) {
            assert!(images(&s) <= LIMITS.max_images);
        }
        if let Ok(s) = submission_multipart(kind, data, "XyZ", LIMITS) {
            assert!(images(&s) <= LIMITS.max_images);
        }
    }
    let _ = treatment(data);
    let _ = approval(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = percent_decode(text);
    }
    if let Ok(imgs) = decode_images(data) {
        assert_eq!(encode_images(&imgs), data);
    }
    let _ = camgate::gbds::tx::Tx::parse(data);
});
