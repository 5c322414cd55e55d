//! The signature a receiver checks: `X-Camgate-Signature: sha256=<hex>` over
//! `"<X-Camgate-Timestamp>.<body>"`. The timestamp is inside the MAC so that a captured request
//! cannot be replayed later with a fresh timestamp; the receiver bounds the age itself.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// `sha256=` + lowercase hex HMAC-SHA256(`secret`, `"<timestamp_ms>.<body>"`).
pub fn signature(secret: &[u8], timestamp_ms: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts a key of any length");
    mac.update(timestamp_ms.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] =
        br#"{"operation":"ENROLL","tguid":"5f0c6d0e-8a4b-4c1e-9d35-2b7f3f7a9b10","status":"ENROLLED"}"#;
    /// Computed independently:
    /// `hmac.new(b"topsecret", b"1796280000123." + BODY, hashlib.sha256).hexdigest()` (Python 3).
    const GOLDEN: &str = "7e0b892014f186d3f84028b027ab51b33b0e42d314252a999af93b9a918bfbbf";

    #[test]
    fn matches_an_independent_computation() {
        assert_eq!(
            signature(b"topsecret", 1_796_280_000_123, BODY),
            format!("sha256={GOLDEN}")
        );
    }

    #[test]
    fn timestamp_secret_and_body_each_change_it() {
        let base = signature(b"topsecret", 1_796_280_000_123, BODY);
        assert_ne!(signature(b"topsecret", 1_796_280_000_124, BODY), base);
        assert_ne!(signature(b"topsecreT", 1_796_280_000_123, BODY), base);
        assert_ne!(signature(b"topsecret", 1_796_280_000_123, b"{}"), base);
    }
}
