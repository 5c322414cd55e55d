//! The hook API client (DECISIONS §4): signed, form-encoded `POST https://<camera>/openapi/hook/
//! add|delete|query` over the camera's TLS trust (pinned fingerprint / CA / client cert, as the
//! channel), and the reconciliation of a camera's subscriptions with the configuration.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

use crate::camera::CameraConfig;
use crate::net::https::{HttpsClient, HttpsError};
use crate::net::tls::{self, TlsError};
use crate::sign;

/// Largest answer read from a camera.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HookClientError {
    #[error("camera secret: {0}")]
    Secret(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("hook/{op}: no answer within {limit:?}")]
    Timeout { op: &'static str, limit: Duration },
    #[error("hook/{op}: {source}")]
    Http {
        op: &'static str,
        #[source]
        source: HttpsError,
    },
    #[error("hook/{op}: HTTP status {status}")]
    Status { op: &'static str, status: u16 },
    #[error("hook/{op}: answer is not the expected JSON: {reason}")]
    Answer { op: &'static str, reason: String },
    /// A non-zero `code` (0 is success; 1, 2, 5 generic, 310/311 subscription errors).
    #[error("hook/{op}: camera answered code {code}")]
    Code { op: &'static str, code: i64 },
}

impl HookClientError {
    /// Connection failures and time-outs keep their own variants (callers tell "camera down"
    /// from "camera answered wrongly"); the rest is an HTTP failure of `op`.
    fn from_https(op: &'static str, addr: &str, e: HttpsError) -> Self {
        match e {
            HttpsError::Connect { source, .. } | HttpsError::Tls { source, .. } => {
                HookClientError::Connect {
                    addr: addr.to_owned(),
                    source,
                }
            }
            HttpsError::Timeout(limit) => HookClientError::Timeout { op, limit },
            source => HookClientError::Http { op, source },
        }
    }
}

/// One topic and the callbacks subscribed to it (`sub_event` of hook/query).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Subscription {
    pub event: String,
    #[serde(default)]
    pub http_callback: Vec<String>,
}

#[derive(Deserialize)]
struct Answer {
    code: i64,
    #[serde(default)]
    data: Option<QueryData>,
}

#[derive(Deserialize)]
struct QueryData {
    #[serde(default)]
    sub_event: Vec<Subscription>,
}

/// What [`HookClient::reconcile`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileOutcome {
    pub added: Vec<String>,
    pub deleted: Vec<String>,
}

/// `application/x-www-form-urlencoded` text of `params` (unreserved characters kept).
pub fn form_encode(params: &[(&str, &str)]) -> String {
    fn enc(s: &str, out: &mut String) {
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    let mut out = String::new();
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        enc(k, &mut out);
        out.push('=');
        enc(v, &mut out);
    }
    out
}

/// Decodes form text; `None` on bad percent escapes or non-UTF-8.
pub fn form_decode(text: &str) -> Option<Vec<(String, String)>> {
    fn dec(s: &str) -> Option<String> {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8(out).ok()
    }
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((dec(k)?, dec(v)?))
        })
        .collect()
}

/// Talks to one camera's hook API.
pub struct HookClient {
    camera: String,
    http: HttpsClient,
    app_id: String,
    secret: String,
}

impl HookClient {
    /// For `cam` (its `address` is the camera's HTTPS API `host:port`).
    pub fn new(cam: &CameraConfig) -> Result<Self, HookClientError> {
        Ok(HookClient {
            camera: cam.name.clone(),
            http: HttpsClient::new(
                &cam.address,
                Some(tls::client_config(&cam.tls, cam.host())?),
                Duration::from_secs(cam.connect_timeout.max(1)),
            ),
            app_id: cam.app_id.clone(),
            secret: cam.resolve_secret().map_err(HookClientError::Secret)?,
        })
    }

    pub fn camera(&self) -> &str {
        &self.camera
    }

    /// Subscribes `events` to `callback`.
    pub async fn add(&self, events: &[String], callback: &str) -> Result<(), HookClientError> {
        let list = serde_json::to_string(events).unwrap_or_else(|_| "[]".into());
        self.call("add", &[("event_list", &list), ("http_callback", callback)])
            .await
            .map(|_| ())
    }

    /// Unsubscribes `events`.
    pub async fn delete(&self, events: &[String]) -> Result<(), HookClientError> {
        let list = serde_json::to_string(events).unwrap_or_else(|_| "[]".into());
        self.call("delete", &[("event_list", &list)])
            .await
            .map(|_| ())
    }

    /// What the camera has subscribed.
    pub async fn query(&self) -> Result<Vec<Subscription>, HookClientError> {
        let a = self.call("query", &[]).await?;
        Ok(a.data.map(|d| d.sub_event).unwrap_or_default())
    }

    /// Makes the camera post `wanted` events (and no other known event) to `callback`.
    pub async fn reconcile(
        &self,
        wanted: &[String],
        callback: &str,
    ) -> Result<ReconcileOutcome, HookClientError> {
        let subs = self.query().await?;
        let ours: BTreeSet<&str> = subs
            .iter()
            .filter(|s| s.http_callback.iter().any(|c| c == callback))
            .map(|s| s.event.as_str())
            .collect();
        let wanted_set: BTreeSet<&str> = wanted.iter().map(String::as_str).collect();
        let added: Vec<String> = wanted_set
            .difference(&ours)
            .map(|s| s.to_string())
            .collect();
        let deleted: Vec<String> = ours
            .difference(&wanted_set)
            .map(|s| s.to_string())
            .collect();
        if !added.is_empty() {
            self.add(&added, callback).await?;
        }
        if !deleted.is_empty() {
            self.delete(&deleted).await?;
        }
        Ok(ReconcileOutcome { added, deleted })
    }

    /// Deletes the events subscribed to `callback`; returns them. The camera's `hook/delete`
    /// takes no URL, so other subscribers of those events are unsubscribed too.
    pub async fn unsubscribe(&self, callback: &str) -> Result<Vec<String>, HookClientError> {
        let ours: Vec<String> = self
            .query()
            .await?
            .into_iter()
            .filter(|s| s.http_callback.iter().any(|c| c == callback))
            .map(|s| s.event)
            .collect();
        if !ours.is_empty() {
            self.delete(&ours).await?;
        }
        Ok(ours)
    }

    async fn call(
        &self,
        op: &'static str,
        private: &[(&str, &str)],
    ) -> Result<Answer, HookClientError> {
        let ts = crate::clock::unix_now().to_string();
        let random = sign::random_token();
        let mut params: Vec<(&str, &str)> = vec![
            ("app_id", self.app_id.as_str()),
            ("random", random.as_str()),
            ("timestamp", ts.as_str()),
        ];
        params.extend_from_slice(private);
        let signature = sign::sign(&params, &self.secret);
        params.push(("sign", signature.as_str()));
        let body = Bytes::from(form_encode(&params));
        let path = format!("/openapi/hook/{op}");
        let answer = self
            .http
            .post(
                &path,
                "application/x-www-form-urlencoded",
                body,
                MAX_ANSWER_BYTES,
            )
            .await
            .map_err(|e| HookClientError::from_https(op, self.http.authority(), e))?;
        if answer.status != 200 {
            return Err(HookClientError::Status {
                op,
                status: answer.status,
            });
        }
        let a: Answer =
            serde_json::from_slice(&answer.body).map_err(|e| HookClientError::Answer {
                op,
                reason: e.to_string(),
            })?;
        if a.code != 0 {
            return Err(HookClientError::Code { op, code: a.code });
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_round_trip() {
        let p = [
            ("event_list", r#"["face_recog_event"]"#),
            ("http_callback", "http://10.0.0.1:8080/a b?x=1&y"),
        ];
        let text = form_encode(&p);
        assert!(!text.contains(' ') && !text.contains('"'));
        let back = form_decode(&text).unwrap();
        assert_eq!(back[0], ("event_list".into(), p[0].1.into()));
        assert_eq!(back[1], ("http_callback".into(), p[1].1.into()));
        assert_eq!(form_decode("a=%zz"), None);
        assert_eq!(form_decode("a=%4"), None);
    }

    #[test]
    fn query_answer_parses_with_num_as_int_or_string() {
        for num in ["2", "\"2\""] {
            let text = format!(
                r#"{{"data":{{"num":{num},"sub_event":[{{"event":"face_recog_event","http_callback":["10.10.61.206:8000"]}}]}},"code":0}}"#
            );
            let a: Answer = serde_json::from_str(&text).unwrap();
            assert_eq!(
                a.data.unwrap().sub_event[0].http_callback,
                vec!["10.10.61.206:8000"]
            );
        }
        let a: Answer = serde_json::from_str(r#"{"code":310}"#).unwrap();
        assert_eq!(a.code, 310);
    }
}
