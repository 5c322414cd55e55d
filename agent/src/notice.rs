//! GBDS-style notification records: one per status change of a transaction. The transaction
//! processor (`gbds`) appends them to the outbox; the notifier sink POSTs each to every endpoint.
//!
//! Plain data, like [`super::results`]: the sinks read these without linking the processor. The
//! wire body is exactly [`Notification`] (DECISIONS §6); anything more a site may want (the
//! person's key, the candidates of a search) travels in [`NoticeRecord::extra`] and is sent only
//! to an endpoint with `extra_fields = true`.

use serde::{Deserialize, Serialize};

/// The `kind` of a notification record in the outbox.
pub const GBDS_NOTICE: &str = "gbds_notice";

/// The JSON body a notified system receives (field names and values fixed by the GBDS text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// `ENROLL`, `UPDATE`, `SEARCH` or `TREAT_EXCEPTION`.
    pub operation: String,
    pub tguid: String,
    /// `ENROLLED`, `FAILED`, `PENDING`, `EXCEPTION`, `MATCH`, `NOT_MATCH`, `PERSON_NOT_FOUND`,
    /// `REVERSE_LATENT_MATCH`, or `OK` (a treatment taken).
    pub status: String,
    /// Only with `TREAT_EXCEPTION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub treatment: Option<String>,
    /// Only with `REVERSE_LATENT_MATCH`: the unsolved entry the face matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uguid: Option<String>,
}

/// One stored notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoticeRecord {
    /// Always [`GBDS_NOTICE`].
    pub kind: String,
    /// Index of this status change within its transaction (0, 1, …): with `tguid`, the
    /// de-duplication key of the notification (a re-POST after a crash carries the same).
    pub seq: u32,
    /// When the status changed (ms since the Unix epoch).
    pub at_ms: u64,
    pub notification: Notification,
    /// Fields added at the top level for endpoints with `extra_fields = true`.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl NoticeRecord {
    pub fn new(seq: u32, at_ms: u64, notification: Notification) -> Self {
        NoticeRecord {
            kind: GBDS_NOTICE.into(),
            seq,
            at_ms,
            notification,
            extra: serde_json::Map::new(),
        }
    }

    /// `<tguid>/<seq>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.notification.tguid, self.seq)
    }

    /// The body POSTed: exactly the notification, or with `extra` merged in at the top level
    /// (never replacing one of the notification's own fields).
    pub fn body(&self, extra_fields: bool) -> Vec<u8> {
        // Serialized from the struct, so the fields keep the text's order.
        let mut body = serde_json::to_vec(&self.notification).expect("plain strings serialize");
        if !extra_fields {
            return body;
        }
        let own = ["operation", "tguid", "status", "treatment", "uguid"];
        for (k, v) in self
            .extra
            .iter()
            .filter(|(k, _)| !own.contains(&k.as_str()))
        {
            body.pop(); // the closing brace
            body.push(b',');
            body.extend(serde_json::to_vec(k).expect("a string serializes"));
            body.push(b':');
            body.extend(serde_json::to_vec(v).expect("a JSON value serializes"));
            body.push(b'}');
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn treat() -> NoticeRecord {
        let mut r = NoticeRecord::new(
            2,
            1_796_280_000_000,
            Notification {
                operation: "TREAT_EXCEPTION".into(),
                tguid: "5f0c6d0e-8a4b-4c1e-9d35-2b7f3f7a9b10".into(),
                status: "OK".into(),
                treatment: Some("SAME_FINGERS".into()),
                uguid: None,
            },
        );
        r.extra.insert("key".into(), "alice".into());
        r.extra.insert("status".into(), "not this one".into());
        r
    }

    #[test]
    fn the_body_is_exactly_the_notification_unless_extra_fields() {
        let r = treat();
        assert_eq!(
            String::from_utf8(r.body(false)).unwrap(),
            r#"{"operation":"TREAT_EXCEPTION","tguid":"5f0c6d0e-8a4b-4c1e-9d35-2b7f3f7a9b10","status":"OK","treatment":"SAME_FINGERS"}"#
        );
        let with: serde_json::Value = serde_json::from_slice(&r.body(true)).unwrap();
        assert_eq!(with["key"], "alice");
        assert_eq!(
            with["status"], "OK",
            "extra never replaces a field of the notification"
        );
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let r = treat();
        let bytes = serde_json::to_vec(&r).unwrap();
        let back: NoticeRecord = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.key(), "5f0c6d0e-8a4b-4c1e-9d35-2b7f3f7a9b10/2");
    }
}
