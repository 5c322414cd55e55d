//! The vendor's sign rule (DECISIONS §1) and verification of received signatures.
//!
//! Signing: every parameter except `sign` with a non-empty value, sorted by key (byte order),
//! joined as `k=v&...` with raw values, then `&key=<secret>`; MD5, upper-case hex.
//! Verifying: constant-time compare, a time window around local time, and a replay cache of
//! `(app_id, random, timestamp)` seen inside that window.

use std::collections::HashMap;
use std::sync::Mutex;

use md5::{Digest, Md5};
use rand::Rng;
use subtle::ConstantTimeEq;

/// Computes `sign` over `params` (any order; `sign` itself and empty values are skipped).
pub fn sign(params: &[(&str, &str)], secret: &str) -> String {
    let mut kept: Vec<&(&str, &str)> = params
        .iter()
        .filter(|(k, v)| *k != "sign" && !v.is_empty())
        .collect();
    kept.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut h = Md5::new();
    for (i, (k, v)) in kept.iter().enumerate() {
        if i > 0 {
            h.update(b"&");
        }
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
    }
    // With no parameters at all the string is just "key=<secret>"; the rule's "&" joins pairs.
    if !kept.is_empty() {
        h.update(b"&");
    }
    h.update(b"key=");
    h.update(secret.as_bytes());
    hex::encode_upper(h.finalize())
}

/// A fresh `random` parameter: 8 characters of digits and letters (the rule allows 6–10).
pub fn random_token() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("missing parameter `{0}`")]
    Missing(&'static str),
    #[error("malformed parameter `{field}`: {reason}")]
    Malformed {
        field: &'static str,
        reason: &'static str,
    },
    #[error("unknown app_id")]
    UnknownAppId,
    #[error("timestamp {timestamp} is {skew} s away from local time (window {window} s)")]
    OutsideWindow {
        timestamp: u64,
        skew: u64,
        window: u64,
    },
    #[error("signature does not match")]
    Forged,
    #[error("replayed request (app_id, random, timestamp seen before)")]
    Replayed,
    #[error("replay cache full; refusing until entries expire")]
    ReplayCacheFull,
}

impl SignError {
    /// Stable label for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            SignError::Missing(_) => "missing",
            SignError::Malformed { .. } => "malformed",
            SignError::UnknownAppId => "unknown_app_id",
            SignError::OutsideWindow { .. } => "outside_window",
            SignError::Forged => "forged",
            SignError::Replayed => "replayed",
            SignError::ReplayCacheFull => "replay_cache_full",
        }
    }
}

/// Checks signatures of received messages (callbacks, the simulator's CONNECT).
pub struct Verifier {
    window_secs: u64,
    max_entries: usize,
    /// `(app_id, random, timestamp)` → Unix second after which the entry may be forgotten.
    seen: Mutex<HashMap<(String, String, u64), u64>>,
}

impl Verifier {
    /// `window_secs`: how far `timestamp` may be from local time (default 300);
    /// `max_entries`: bound of the replay cache (fails closed when full of live entries).
    pub fn new(window_secs: u64, max_entries: usize) -> Self {
        Self {
            window_secs,
            max_entries,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Verifies `params` (which include `app_id`, `timestamp`, `random` and `sign`) against
    /// `secret` at Unix time `now`, and remembers it against replay.
    pub fn verify(&self, params: &[(&str, &str)], secret: &str, now: u64) -> Result<(), SignError> {
        let get = |name: &'static str| {
            params
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| *v)
                .filter(|v| !v.is_empty())
                .ok_or(SignError::Missing(name))
        };
        let app_id = get("app_id")?;
        let random = get("random")?;
        let ts_text = get("timestamp")?;
        let given = get("sign")?;
        if !(6..=10).contains(&random.len()) || !random.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(SignError::Malformed {
                field: "random",
                reason: "6-10 digits and letters",
            });
        }
        let timestamp: u64 = ts_text
            .parse()
            .ok()
            .filter(|_| ts_text.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(SignError::Malformed {
                field: "timestamp",
                reason: "Unix seconds",
            })?;
        let skew = timestamp.abs_diff(now);
        if skew > self.window_secs {
            return Err(SignError::OutsideWindow {
                timestamp,
                skew,
                window: self.window_secs,
            });
        }
        let expected = sign(params, secret);
        // Case-insensitive hex would let two spellings of one signature pass the replay key check;
        // the rule says upper case, so compare the exact bytes in constant time.
        if !bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
            return Err(SignError::Forged);
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let key = (app_id.to_owned(), random.to_owned(), timestamp);
        if seen.get(&key).is_some_and(|&until| until >= now) {
            return Err(SignError::Replayed);
        }
        if seen.len() >= self.max_entries {
            seen.retain(|_, until| *until >= now);
            if seen.len() >= self.max_entries {
                return Err(SignError::ReplayCacheFull);
            }
        }
        // A replay is only possible while the timestamp is inside the window.
        seen.insert(key, timestamp + self.window_secs);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR: &[(&str, &str)] = &[
        ("app_id", "2039dds"),
        ("content", "newproductmask"),
        ("environment", "test"),
        ("product_id", "389238"),
        ("random", "289192"),
        ("timestamp", "1593029283"),
        ("user_id", "29389"),
    ];

    #[test]
    fn golden_vector_from_decisions() {
        assert_eq!(
            sign(VECTOR, "kdsofkdsnflke9382938k"),
            "4AB07ACA8AC43AC0FD83718BF4D740E1"
        );
        // Order of the input does not matter; `sign` and empty values are ignored.
        let mut shuffled: Vec<(&str, &str)> = VECTOR.iter().rev().copied().collect();
        shuffled.push(("sign", "WHATEVER"));
        shuffled.push(("empty", ""));
        assert_eq!(
            sign(&shuffled, "kdsofkdsnflke9382938k"),
            "4AB07ACA8AC43AC0FD83718BF4D740E1"
        );
    }

    fn signed(now: u64, random: &str) -> Vec<(String, String)> {
        let ts = now.to_string();
        let base = [
            ("app_id", "app"),
            ("random", random),
            ("timestamp", ts.as_str()),
            ("keep_alive", "30"),
        ];
        let s = sign(&base, "secret");
        let mut v: Vec<(String, String)> = base
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        v.push(("sign".into(), s));
        v
    }

    fn refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
        v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn verify_accepts_then_rejects_replay() {
        let ver = Verifier::new(300, 100);
        let p = signed(1_700_000_000, "abc123");
        assert_eq!(ver.verify(&refs(&p), "secret", 1_700_000_010), Ok(()));
        assert_eq!(
            ver.verify(&refs(&p), "secret", 1_700_000_020),
            Err(SignError::Replayed)
        );
    }

    #[test]
    fn verify_rejects_forged_wrong_secret_and_window() {
        let ver = Verifier::new(300, 100);
        let mut p = signed(1_700_000_000, "abc124");
        assert_eq!(
            ver.verify(&refs(&p), "other", 1_700_000_000),
            Err(SignError::Forged)
        );
        assert!(matches!(
            ver.verify(&refs(&p), "secret", 1_700_000_301),
            Err(SignError::OutsideWindow { skew: 301, .. })
        ));
        p[3].1 = "60".into(); // keep_alive tampered
        assert_eq!(
            ver.verify(&refs(&p), "secret", 1_700_000_000),
            Err(SignError::Forged)
        );
        let lower: Vec<(String, String)> = signed(1_700_000_000, "abc125")
            .into_iter()
            .map(|(k, v)| {
                if k == "sign" {
                    (k, v.to_lowercase())
                } else {
                    (k, v)
                }
            })
            .collect();
        assert_eq!(
            ver.verify(&refs(&lower), "secret", 1_700_000_000),
            Err(SignError::Forged)
        );
    }

    #[test]
    fn verify_rejects_missing_and_malformed() {
        let ver = Verifier::new(300, 100);
        assert_eq!(
            ver.verify(&[("app_id", "a")], "s", 0),
            Err(SignError::Missing("random"))
        );
        let p = [
            ("app_id", "a"),
            ("random", "12"),
            ("timestamp", "1"),
            ("sign", "X"),
        ];
        assert!(matches!(
            ver.verify(&p, "s", 1),
            Err(SignError::Malformed {
                field: "random",
                ..
            })
        ));
        let p = [
            ("app_id", "a"),
            ("random", "123456"),
            ("timestamp", "+1"),
            ("sign", "X"),
        ];
        assert!(matches!(
            ver.verify(&p, "s", 1),
            Err(SignError::Malformed {
                field: "timestamp",
                ..
            })
        ));
    }

    #[test]
    fn replay_cache_is_bounded_and_expires() {
        let ver = Verifier::new(300, 2);
        let now = 1_700_000_000;
        assert!(ver
            .verify(&refs(&signed(now, "aaaaaa")), "secret", now)
            .is_ok());
        assert!(ver
            .verify(&refs(&signed(now, "bbbbbb")), "secret", now)
            .is_ok());
        assert_eq!(
            ver.verify(&refs(&signed(now, "cccccc")), "secret", now),
            Err(SignError::ReplayCacheFull)
        );
        // Once the first entries are out of the window they make room.
        let later = now + 301;
        assert!(ver
            .verify(&refs(&signed(later, "dddddd")), "secret", later)
            .is_ok());
    }

    #[test]
    fn random_tokens_fit_the_rule() {
        for _ in 0..100 {
            let t = random_token();
            assert_eq!(t.len(), 8);
            assert!(t.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
    }
}
