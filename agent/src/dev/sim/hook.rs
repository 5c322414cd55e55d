//! The simulated camera's hook side: it POSTs signed `multipart/form-data` callbacks to a URL
//! (DECISIONS §4) as camera firmware does, and on demand forged, replayed, unsigned, skewed,
//! malformed and oversize ones, recording the HTTP status camgate answered.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;

use crate::net::https::{HttpsClient, HttpsError};

use crate::hook::callback::encode_multipart;
use crate::sign;

/// What to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostKind {
    /// A correctly signed callback with the next event.
    Valid,
    /// Signed with the wrong secret.
    Forged,
    /// The last `Valid` request again, byte for byte.
    Replay,
    /// No `sign` field.
    Unsigned,
    /// Correctly signed, but the timestamp is this many seconds off local time.
    Skewed(i64),
    /// The multipart body cut in the middle.
    Truncated,
    /// No `payload` field.
    MissingField,
    /// Correctly signed, but the payload is not JSON.
    NotJson,
    /// The fields posted as `application/x-www-form-urlencoded`.
    WrongContentType,
    /// A correctly signed event padded to at least this many bytes.
    Oversize(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum SimHookError {
    #[error("bad callback URL {0:?} (want http://host:port/path, or https:// with a trust)")]
    Url(String),
    #[error("TLS to {0}: {1}")]
    Tls(String, #[source] crate::net::tls::TlsError),
    #[error(transparent)]
    Https(#[from] HttpsError),
    #[error("nothing posted yet to replay")]
    NothingToReplay,
}

/// camgate answers a callback with a short JSON body; more is not read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// One valid request as sent, kept for [`PostKind::Replay`].
#[derive(Debug, Clone)]
struct Sent {
    content_type: String,
    body: Bytes,
    /// The event id in the payload, for the record of ids answered 200.
    event_id: Option<i64>,
}

/// Posts callbacks for one simulated camera.
pub struct HookPoster {
    http: HttpsClient,
    path: String,
    app_id: String,
    secret: String,
    serial: String,
    next_event: AtomicI64,
    last: Mutex<Option<Sent>>,
    /// `(kind, HTTP status)` of every post, in order.
    statuses: Mutex<Vec<(PostKind, u16)>>,
    /// Event ids of the valid posts answered 200 (what camgate must have stored).
    stored_ids: Mutex<Vec<i64>>,
}

const BOUNDARY: &str = "------------------------c83c36cd4ee4082f";

impl HookPoster {
    pub fn new(url: &str, app_id: &str, secret: &str, serial: &str) -> Result<Self, SimHookError> {
        Self::with_tls(url, app_id, secret, serial, None)
    }

    /// A poster to an `https://` URL (or `http://` with `tls = None`), trusting camgate's
    /// receiver as `tls` says (CA file or pinned fingerprint, see [`crate::net::tls`]).
    pub fn with_tls(
        url: &str,
        app_id: &str,
        secret: &str,
        serial: &str,
        tls: Option<&crate::net::tls::TlsConfig>,
    ) -> Result<Self, SimHookError> {
        let uri: Uri = url.parse().map_err(|_| SimHookError::Url(url.into()))?;
        let host = uri.host().ok_or_else(|| SimHookError::Url(url.into()))?;
        let (tls, default_port) = match (uri.scheme_str(), tls) {
            (Some("http"), None) => (None, 80),
            (Some("https"), Some(t)) => {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let c = crate::net::tls::client_config(t, host)
                    .map_err(|e| SimHookError::Tls(url.into(), e))?;
                (Some(c), 443)
            }
            _ => return Err(SimHookError::Url(url.into())),
        };
        let authority = format!("{host}:{}", uri.port_u16().unwrap_or(default_port));
        let http = HttpsClient::new(&authority, tls, std::time::Duration::from_secs(30))
            .with_user_agent("libcurl/7.52.1 camgate-sim");
        Ok(HookPoster {
            http,
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
            app_id: app_id.into(),
            secret: secret.into(),
            serial: serial.into(),
            next_event: AtomicI64::new(1),
            last: Mutex::new(None),
            statuses: Mutex::new(Vec::new()),
            stored_ids: Mutex::new(Vec::new()),
        })
    }

    /// The event JSON for `event_id`, as firmware sends it (HTTP-side `detect_type` table).
    pub fn event_json(&self, event_id: i64) -> String {
        format!(
            r#"{{"event_id":{event_id},"detect_type":3,"video_url":"https://127.0.0.1/v/{event_id}.flv?auth_key=1","event_type":"dynamic_detect_event","sn":"{}","report_time":{}}}"#,
            self.serial,
            crate::clock::unix_now()
        )
    }

    /// Posts one callback of `kind` (with the next event id where an event is needed) and
    /// returns the HTTP status.
    pub async fn post(&self, kind: PostKind) -> Result<u16, SimHookError> {
        let sent = match &kind {
            PostKind::Replay => self
                .last
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .ok_or(SimHookError::NothingToReplay)?,
            _ => {
                let id = self.next_event.fetch_add(1, Ordering::Relaxed);
                self.build(&kind, &self.event_json(id))
            }
        };
        self.send(kind, sent).await
    }

    /// Posts a correctly signed callback carrying `payload` (e.g. an event also sent on the channel).
    pub async fn post_event(&self, payload: &str) -> Result<u16, SimHookError> {
        let sent = self.build(&PostKind::Valid, payload);
        self.send(PostKind::Valid, sent).await
    }

    /// Event ids of the valid callbacks answered 200 so far.
    pub fn stored_ids(&self) -> Vec<i64> {
        self.stored_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `(kind, status)` of every post so far.
    pub fn statuses(&self) -> Vec<(PostKind, u16)> {
        self.statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn build(&self, kind: &PostKind, event: &str) -> Sent {
        let skew = match kind {
            PostKind::Skewed(s) => *s,
            _ => 0,
        };
        let ts = (crate::clock::unix_now() as i64 + skew).max(0).to_string();
        let random = sign::random_token();
        let payload = match kind {
            PostKind::NotJson => "this is not json".to_string(),
            PostKind::Oversize(n) => {
                // Still a valid event, so only the size can be what is refused.
                let pad = "x".repeat(*n);
                format!("{},\"pad\":\"{pad}\"}}", event.trim_end_matches('}'))
            }
            _ => event.to_string(),
        };
        let event_id = crate::event::EventView::parse(payload.as_bytes())
            .ok()
            .map(|v| v.event_id.0);
        let secret = if *kind == PostKind::Forged {
            "not-the-secret"
        } else {
            self.secret.as_str()
        };
        let base = [
            ("app_id", self.app_id.as_str()),
            ("random", random.as_str()),
            ("timestamp", ts.as_str()),
            ("payload", payload.as_str()),
        ];
        let signature = sign::sign(&base, secret);
        let mut fields: Vec<(&str, &str)> = vec![
            ("app_id", self.app_id.as_str()),
            ("random", random.as_str()),
            ("timestamp", ts.as_str()),
        ];
        if *kind != PostKind::Unsigned {
            fields.push(("sign", signature.as_str()));
        }
        if *kind != PostKind::MissingField {
            fields.push(("payload", payload.as_str()));
        }
        if *kind == PostKind::WrongContentType {
            let body = fields
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&");
            return Sent {
                content_type: "application/x-www-form-urlencoded".into(),
                body: Bytes::from(body),
                event_id,
            };
        }
        let mut body = encode_multipart(&fields, BOUNDARY);
        if *kind == PostKind::Truncated {
            body.truncate(body.len() * 2 / 3);
        }
        Sent {
            content_type: format!("multipart/form-data; boundary={BOUNDARY}"),
            body: Bytes::from(body),
            event_id,
        }
    }

    async fn send(&self, kind: PostKind, sent: Sent) -> Result<u16, SimHookError> {
        let status = self
            .http
            .post(
                &self.path,
                &sent.content_type,
                sent.body.clone(),
                MAX_ANSWER_BYTES,
            )
            .await?
            .status;
        if kind == PostKind::Valid && status == 200 {
            if let Some(id) = sent.event_id {
                self.stored_ids
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(id);
            }
        }
        // A replay repeats the last correctly signed callback, as an eavesdropper would.
        if kind == PostKind::Valid {
            *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(sent);
        }
        self.statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((kind, status));
        Ok(status)
    }
}

/// The camera's hook API over HTTPS (`/openapi/hook/add|delete|query`), verifying signatures
/// (window + replay) and remembering subscriptions, so that camgate's client and its
/// reconciliation run against it; [`SimHookApi::poster`] then posts to the subscribed URL.
pub struct SimHookApi {
    pub addr: std::net::SocketAddr,
    pub cert: std::sync::Arc<super::SimCert>,
    state: std::sync::Arc<ApiState>,
}

struct ApiState {
    app_id: String,
    secret: String,
    verifier: sign::Verifier,
    /// event → callback URLs.
    subs: Mutex<std::collections::BTreeMap<String, Vec<String>>>,
    refuse: Mutex<Option<i64>>,
    calls: std::sync::atomic::AtomicU64,
    sign_rejected: std::sync::atomic::AtomicU64,
}

impl SimHookApi {
    pub async fn start(
        app_id: &str,
        secret: &str,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> std::io::Result<SimHookApi> {
        use std::sync::Arc;
        let cert =
            Arc::new(super::SimCert::generate().map_err(|e| std::io::Error::other(e.to_string()))?);
        let server = cert
            .server_config(None)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ApiState {
            app_id: app_id.into(),
            secret: secret.into(),
            verifier: sign::Verifier::new(300, 10_000),
            subs: Mutex::new(Default::default()),
            refuse: Mutex::new(None),
            calls: Default::default(),
            sign_rejected: Default::default(),
        });
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = shutdown.cancelled() => break,
                };
                let (acceptor, st) = (acceptor.clone(), st.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(
                        move |req: Request<hyper::body::Incoming>| {
                            let st = st.clone();
                            async move { Ok::<_, std::convert::Infallible>(api_answer(req, &st).await) }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(SimHookApi { addr, cert, state })
    }

    pub fn fingerprint(&self) -> String {
        self.cert.fingerprint()
    }

    /// event → callback URLs, as the camera holds them.
    pub fn subscriptions(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        self.state
            .subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Adds a subscription directly (as another client would have).
    pub fn subscribe(&self, event: &str, url: &str) {
        let mut s = self.state.subs.lock().unwrap_or_else(|e| e.into_inner());
        let v = s.entry(event.to_string()).or_default();
        if !v.iter().any(|u| u == url) {
            v.push(url.to_string());
        }
    }

    /// Answer every call with this non-zero code (None: behave).
    pub fn set_refuse(&self, code: Option<i64>) {
        *self.state.refuse.lock().unwrap_or_else(|e| e.into_inner()) = code;
    }

    pub fn calls(&self) -> u64 {
        self.state.calls.load(Ordering::Relaxed)
    }

    pub fn sign_rejected(&self) -> u64 {
        self.state.sign_rejected.load(Ordering::Relaxed)
    }

    /// A poster to the first URL subscribed for `event`, as the camera would post to.
    pub fn poster(&self, event: &str, serial: &str) -> Option<Result<HookPoster, SimHookError>> {
        self.poster_with_tls(event, serial, None)
    }

    /// [`SimHookApi::poster`] for an `https://` callback, trusting the receiver as `tls` says.
    pub fn poster_with_tls(
        &self,
        event: &str,
        serial: &str,
        tls: Option<&crate::net::tls::TlsConfig>,
    ) -> Option<Result<HookPoster, SimHookError>> {
        let url = self.subscriptions().get(event)?.first()?.clone();
        Some(HookPoster::with_tls(
            &url,
            &self.state.app_id,
            &self.state.secret,
            serial,
            tls,
        ))
    }
}

async fn api_answer(
    req: Request<hyper::body::Incoming>,
    st: &ApiState,
) -> hyper::Response<Full<Bytes>> {
    let json =
        |code: i64| hyper::Response::new(Full::new(Bytes::from(format!("{{\"code\":{code}}}"))));
    st.calls.fetch_add(1, Ordering::Relaxed);
    let op = req
        .uri()
        .path()
        .strip_prefix("/openapi/hook/")
        .unwrap_or("")
        .to_string();
    let Ok(body) = http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
    else {
        return json(1);
    };
    let body = body.to_bytes();
    let Some(params) = std::str::from_utf8(&body)
        .ok()
        .and_then(crate::hook::client::form_decode)
    else {
        return json(1);
    };
    let refs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let app_ok = refs.iter().any(|(k, v)| *k == "app_id" && *v == st.app_id);
    if !app_ok
        || st
            .verifier
            .verify(&refs, &st.secret, crate::clock::unix_now())
            .is_err()
    {
        st.sign_rejected.fetch_add(1, Ordering::Relaxed);
        return json(2);
    }
    if let Some(code) = *st.refuse.lock().unwrap_or_else(|e| e.into_inner()) {
        return json(code);
    }
    let get = |name: &str| refs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let events = || -> Option<Vec<String>> {
        let list: Vec<String> = serde_json::from_str(get("event_list")?).ok()?;
        list.iter()
            .all(|e| crate::event::KNOWN_EVENTS.contains(&e.as_str()))
            .then_some(list)
    };
    let mut subs = st.subs.lock().unwrap_or_else(|e| e.into_inner());
    match op.as_str() {
        "add" => {
            let (Some(list), Some(url)) = (events(), get("http_callback")) else {
                return json(1);
            };
            for e in list {
                let v = subs.entry(e).or_default();
                if !v.iter().any(|u| u == url) {
                    v.push(url.to_string());
                }
            }
            json(0)
        }
        "delete" => {
            let Some(list) = events() else {
                return json(1);
            };
            for e in list {
                subs.remove(&e);
            }
            json(0)
        }
        "query" => {
            let sub_event: Vec<serde_json::Value> = subs
                .iter()
                .map(|(e, urls)| serde_json::json!({"event": e, "http_callback": urls}))
                .collect();
            let text = serde_json::json!({"data": {"num": sub_event.len(), "sub_event": sub_event}, "code": 0});
            hyper::Response::new(Full::new(Bytes::from(text.to_string())))
        }
        _ => json(1),
    }
}
