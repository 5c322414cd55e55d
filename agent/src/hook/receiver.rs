//! The callback receiver: an HTTP/1.1 server (hyper) that cameras in hook mode POST their events
//! to (DECISIONS §4). Per request, in this order:
//! method → content type → declared size (413 before the body is read) → a concurrency permit →
//! the body, bounded in size and time → multipart parse → camera by `app_id` → sign, window and
//! replay → payload is an event → `Intake::accept` (dedupe across paths + durable append).
//! 200 is answered only after the event is durable (or a known duplicate).
//!
//! Answers: 400 malformed, 401 unsigned / unknown app / forged / replayed / outside the window /
//! `sn` of another camera, 405 not POST, 408 body too slow, 413 too large, 503 outbox full,
//! outbox error or overload. With `tls`, the same over HTTPS (a failed handshake is counted as
//! `tls_handshake`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::callback::{boundary_from_content_type, parse_callback};
use super::config::HookConfig;
use crate::clock::{self, SharedClock};
use crate::event::Source;
use crate::intake::{Accepted, Intake, IntakeError};
use crate::net::serve;
use crate::outbox::OutboxError;
use crate::sign::{SignError, Verifier};

/// Receiver settings (from `[hook]`).
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub max_concurrency: usize,
    pub sign_window_secs: u64,
    /// Time allowed for reading one request's headers and body.
    pub request_timeout: Duration,
    /// Bound of the replay cache (fails closed with 503 when full of live entries).
    pub replay_max_entries: usize,
    /// Serve HTTPS with this configuration (see [`server_tls`]); plain HTTP when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Wall time for the sign window and the replay cache.
    pub clock: SharedClock,
}

impl ReceiverConfig {
    /// From `[hook]` (its defaults are on [`HookConfig`]); `None` when `listen` is not an address.
    pub fn from_hook(h: &HookConfig, tls: Option<Arc<rustls::ServerConfig>>) -> Option<Self> {
        Some(ReceiverConfig {
            listen: h.listen.parse().ok()?,
            max_body_bytes: h.max_body_bytes,
            max_concurrency: h.max_concurrency,
            sign_window_secs: h.sign_window_secs,
            request_timeout: Duration::from_secs(h.request_timeout_secs.max(1)),
            replay_max_entries: h.replay_max_entries,
            tls,
            clock: clock::system(),
        })
    }
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self::from_hook(&HookConfig::default(), None).expect("the default listen address parses")
    }
}

/// A camera allowed to post callbacks.
#[derive(Debug, Clone)]
pub struct HookCamera {
    pub name: Arc<str>,
    pub app_id: String,
    pub secret: String,
    /// The camera's serial: when known, its callbacks must carry it as `sn`.
    pub sn: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("cannot listen for hook callbacks on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("hook receiver TLS: {0}")]
    Tls(#[from] crate::net::tls::TlsError),
}

/// The receiver's HTTPS side from a PEM certificate chain and key (rustls on ring, HTTP/1.1).
pub fn server_tls(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, ReceiverError> {
    use crate::net::tls;
    let certs = tls::load_certs(cert_file)?;
    let key = tls::load_key(key_file)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(tls::TlsError::from)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(tls::TlsError::from)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Counts of accepted and rejected callbacks (for tests and the status file).
#[derive(Debug, Default)]
pub struct HookCounters {
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HookCountersSnapshot {
    pub accepted: u64,
    pub duplicates: u64,
    /// Rejections by reason (`forged`, `replayed`, `unsigned`, `outside_window`, `truncated`, ...).
    pub rejected: BTreeMap<String, u64>,
}

impl HookCounters {
    fn reject(&self, reason: &'static str) {
        let mut m = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(reason).or_insert(0) += 1;
    }

    /// Rejections counted under `reason`.
    pub fn rejected(&self, reason: &str) -> u64 {
        let m = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
        m.get(reason).copied().unwrap_or(0)
    }

    pub fn rejected_total(&self) -> u64 {
        let m = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
        m.values().sum()
    }

    /// Counts a connection refused before any request (e.g. a failed TLS handshake).
    pub(crate) fn reject_connection(&self, reason: &'static str) {
        self.reject(reason);
    }

    pub fn snapshot(&self) -> HookCountersSnapshot {
        let m = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
        HookCountersSnapshot {
            accepted: self.accepted.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            rejected: m.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }
}

struct Shared {
    cfg: ReceiverConfig,
    /// `app_id` → cameras using it (several cameras may share one developer app).
    cameras: HashMap<String, Vec<HookCamera>>,
    verifier: Verifier,
    /// Verified callbacks answered 503 (not stored): the camera may re-send the very same
    /// signed request, which the replay cache would otherwise refuse with 401 and so lose the
    /// event. Key `(app_id, random, timestamp, sign)` → Unix second it expires.
    retry_ok: Mutex<HashMap<(String, String, String, String), u64>>,
    intake: Arc<Intake>,
    permits: Semaphore,
    counters: Arc<HookCounters>,
}

/// A running receiver. It stops accepting when the shutdown token is cancelled; [`join`]
/// waits for the requests in flight.
///
/// [`join`]: Receiver::join
pub struct Receiver {
    local_addr: SocketAddr,
    counters: Arc<HookCounters>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(
        cfg: ReceiverConfig,
        cameras: Vec<HookCamera>,
        intake: Arc<Intake>,
        shutdown: CancellationToken,
    ) -> Result<Receiver, ReceiverError> {
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| ReceiverError::Bind {
                    addr: cfg.listen,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ReceiverError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let mut by_app: HashMap<String, Vec<HookCamera>> = HashMap::new();
        for c in cameras {
            by_app.entry(c.app_id.clone()).or_default().push(c);
        }
        let counters = Arc::new(HookCounters::default());
        let shared = Arc::new(Shared {
            verifier: Verifier::new(cfg.sign_window_secs, cfg.replay_max_entries.max(1)),
            retry_ok: Mutex::new(HashMap::new()),
            permits: Semaphore::new(cfg.max_concurrency.max(1)),
            cameras: by_app,
            intake,
            counters: counters.clone(),
            cfg,
        });
        info!(addr = %local_addr, https = shared.cfg.tls.is_some(), "hook callback receiver listening");
        let task = tokio::spawn(accept_loop(listener, shared, shutdown));
        Ok(Receiver {
            local_addr,
            counters,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn counters(&self) -> &Arc<HookCounters> {
        &self.counters
    }

    /// Waits until the receiver has stopped (after the shutdown token) and its connections ended.
    pub async fn join(self) {
        let _ = self.task.await;
    }

    /// A handle that aborts the receiver and its connections (shutdown deadline passed).
    pub fn abort_handle(&self) -> tokio::task::AbortHandle {
        self.task.abort_handle()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let max_conns = shared.cfg.max_concurrency.max(1) * 4;
    let acceptor = shared.cfg.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    serve::accept_loop(listener, max_conns, "hook receiver", shutdown.clone(), |stream, peer| {
        let (shared, stop, acceptor) = (shared.clone(), shutdown.clone(), acceptor.clone());
        async move {
            let Some(acceptor) = acceptor else {
                return serve_connection(stream, peer, shared, stop).await;
            };
            // The handshake shares the request time bound, so a silent client cannot hold a slot.
            let tls = tokio::select! {
                r = tokio::time::timeout(shared.cfg.request_timeout, acceptor.accept(stream)) => r,
                _ = stop.cancelled() => return,
            };
            match tls {
                Ok(Ok(tls)) => serve_connection(tls, peer, shared, stop).await,
                Ok(Err(e)) => {
                    shared.counters.reject_connection("tls_handshake");
                    warn!(peer = %peer, reason = "tls_handshake", error = %e, "hook connection rejected");
                }
                Err(_) => {
                    shared.counters.reject_connection("tls_handshake");
                    warn!(peer = %peer, reason = "tls_handshake", "hook connection rejected: TLS handshake timed out");
                }
            }
        }
    })
    .await;
    info!("hook callback receiver stopped");
}

async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let timeout = shared.cfg.request_timeout;
    serve::serve_http1(io, peer, timeout, stop, move |req| {
        handle(shared.clone(), peer, req)
    })
    .await
}

/// Why a request was refused.
struct Reject {
    status: StatusCode,
    reason: &'static str,
    camera: Option<Arc<str>>,
    detail: String,
}

impl Reject {
    fn new(status: StatusCode, reason: &'static str, detail: impl ToString) -> Self {
        Reject {
            status,
            reason,
            camera: None,
            detail: detail.to_string(),
        }
    }
    fn camera(mut self, c: &Arc<str>) -> Self {
        self.camera = Some(c.clone());
        self
    }
}

async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match process(&shared, req).await {
        Ok((camera, accepted)) => {
            match accepted {
                Accepted::Stored { .. } => shared.counters.accepted.fetch_add(1, Ordering::Relaxed),
                Accepted::Duplicate { .. } => {
                    shared.counters.duplicates.fetch_add(1, Ordering::Relaxed)
                }
            };
            debug!(camera = %camera, event_id = %accepted.event_id(), "hook callback stored");
            reply(StatusCode::OK, r#"{"code":0}"#.to_string())
        }
        Err(r) => {
            shared.counters.reject(r.reason);
            warn!(
                camera = r.camera.as_deref().unwrap_or("-"),
                peer = %peer,
                reason = r.reason,
                status = r.status.as_u16(),
                detail = %r.detail,
                "hook callback rejected"
            );
            reply(
                r.status,
                format!(
                    r#"{{"code":{},"reason":"{}"}}"#,
                    r.status.as_u16(),
                    r.reason
                ),
            )
        }
    }
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

impl Shared {
    /// Lets the exact same signed callback through the replay check once more (it was
    /// answered 503, i.e. "try again").
    fn allow_retry(&self, cb: &super::Callback, now: u64) {
        let Some(sign) = &cb.sign else { return };
        let mut m = self.retry_ok.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= self.cfg.replay_max_entries.max(1) {
            m.retain(|_, until| *until >= now);
            if m.len() >= self.cfg.replay_max_entries.max(1) {
                return; // bounded: the camera then gets 401 on an identical re-send
            }
        }
        m.insert(
            (
                cb.app_id.clone(),
                cb.random.clone(),
                cb.timestamp.clone(),
                sign.clone(),
            ),
            now + self.cfg.sign_window_secs,
        );
    }

    /// A replayed callback that was answered 503 before, and whose sign is right for `secret`.
    fn take_retry(&self, cb: &super::Callback, secret: &str) -> bool {
        let Some(given) = &cb.sign else { return false };
        let key = (
            cb.app_id.clone(),
            cb.random.clone(),
            cb.timestamp.clone(),
            given.clone(),
        );
        let mut m = self.retry_ok.lock().unwrap_or_else(|e| e.into_inner());
        if !m.contains_key(&key) {
            return false;
        }
        let expected = crate::sign::sign(&cb.sign_params(), secret);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            expected.as_bytes(),
            given.as_bytes(),
        )) {
            return false;
        }
        m.remove(&key);
        true
    }
}

async fn process(shared: &Shared, req: Request<Incoming>) -> Result<(Arc<str>, Accepted), Reject> {
    let boundary = check_head(&shared.cfg, &req)?;
    let deadline = tokio::time::Instant::now() + shared.cfg.request_timeout;
    // The permit bounds the bodies held in memory and the appends in flight.
    let _permit = match tokio::time::timeout_at(deadline, shared.permits.acquire()).await {
        Ok(Ok(p)) => p,
        _ => {
            return Err(Reject::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "no request slot in time",
            ))
        }
    };
    let body = read_body(&shared.cfg, req, deadline).await?;
    let cb = parse_callback(&body, &boundary)
        .map_err(|e| Reject::new(StatusCode::BAD_REQUEST, e.reason(), &e))?;
    let now = shared.cfg.clock.now_secs();
    let camera = authenticate(shared, &cb, now)?;
    if let Err(e) = cb.event() {
        return Err(Reject::new(StatusCode::BAD_REQUEST, "payload", e).camera(&camera));
    }
    let accepted = store(shared, &cb, &camera, now).await?;
    Ok((camera, accepted))
}

/// Method, content type (its multipart boundary) and declared length, before any body is read.
fn check_head(cfg: &ReceiverConfig, req: &Request<Incoming>) -> Result<String, Reject> {
    if req.method() != Method::POST {
        return Err(Reject::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method",
            req.method(),
        ));
    }
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
    };
    let boundary = boundary_from_content_type(header(hyper::header::CONTENT_TYPE).unwrap_or(""))
        .map_err(|e| Reject::new(StatusCode::BAD_REQUEST, e.reason(), &e))?;
    let declared = header(hyper::header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > cfg.max_body_bytes as u64) {
        return Err(Reject::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("declared {n} bytes"),
        ));
    }
    Ok(boundary)
}

/// The whole body, at most `max_body_bytes`, before `deadline`.
async fn read_body(
    cfg: &ReceiverConfig,
    req: Request<Incoming>,
    deadline: tokio::time::Instant,
) -> Result<Bytes, Reject> {
    let body = Limited::new(req.into_body(), cfg.max_body_bytes);
    match tokio::time::timeout_at(deadline, body.collect()).await {
        Err(_) => Err(Reject::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "body not received in time",
        )),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(Reject::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e))
        }
        Ok(Err(e)) => Err(Reject::new(StatusCode::BAD_REQUEST, "body", e)),
        Ok(Ok(b)) => Ok(b.to_bytes()),
    }
}

/// Which configured camera signed `cb` (sign, time window, replay, and its serial when known).
fn authenticate(shared: &Shared, cb: &super::Callback, now: u64) -> Result<Arc<str>, Reject> {
    let candidates = shared.cameras.get(&cb.app_id).ok_or_else(|| {
        Reject::new(
            StatusCode::UNAUTHORIZED,
            "unknown_app_id",
            format!("app_id {:?}", cb.app_id),
        )
    })?;
    let first = &candidates[0].name;
    if cb.sign.is_none() {
        return Err(
            Reject::new(StatusCode::UNAUTHORIZED, "unsigned", "no sign field").camera(first),
        );
    }
    // The payload's claimed serial (None when the payload is no event: refused after the sign
    // check, so that unsigned junk is answered 401 rather than 400).
    let claimed_sn = cb.event().ok().map(|e| e.sn.to_string());
    let (camera, last_err) = find_signer(shared, cb, candidates, claimed_sn.as_deref(), now);
    let Some(c) = camera else {
        let status = match last_err {
            SignError::ReplayCacheFull => StatusCode::SERVICE_UNAVAILABLE,
            SignError::Malformed { .. } | SignError::Missing(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        };
        let reason = match last_err {
            SignError::Malformed { .. } | SignError::Missing(_) => "sign_params",
            ref e => e.kind(),
        };
        return Err(Reject::new(status, reason, &last_err).camera(first));
    };
    if let (Some(sn), Some(claimed)) = (&c.sn, &claimed_sn) {
        if sn != claimed {
            let detail = format!("payload sn {claimed:?} is not the signing camera's {sn:?}");
            return Err(
                Reject::new(StatusCode::UNAUTHORIZED, "sn_mismatch", detail).camera(&c.name)
            );
        }
    }
    Ok(c.name.clone())
}

/// Cameras sharing an app_id may still have different secrets: the one that verifies names it.
/// With a shared secret too, the camera whose serial the payload claims is tried first, then
/// cameras of unknown serial, so a verifying camera of another serial means a mismatch.
fn find_signer<'a>(
    shared: &Shared,
    cb: &super::Callback,
    candidates: &'a [HookCamera],
    claimed_sn: Option<&str>,
    now: u64,
) -> (Option<&'a HookCamera>, SignError) {
    let rank = |c: &HookCamera| match (c.sn.as_deref(), claimed_sn) {
        (Some(sn), Some(claimed)) if sn == claimed => 0,
        (None, _) => 1,
        _ => 2,
    };
    let mut ordered: Vec<&HookCamera> = candidates.iter().collect();
    ordered.sort_by_key(|c| rank(c));
    let params = cb.sign_params();
    for c in ordered {
        match shared.verifier.verify(&params, &c.secret, now) {
            Ok(()) => return (Some(c), SignError::Forged),
            Err(SignError::Forged) => continue,
            Err(SignError::Replayed) if shared.take_retry(cb, &c.secret) => {
                return (Some(c), SignError::Forged)
            }
            Err(e) => return (None, e),
        }
    }
    (None, SignError::Forged)
}

/// The durable append; a failure the camera should retry also lets the same signed callback
/// through the replay check once more.
async fn store(
    shared: &Shared,
    cb: &super::Callback,
    camera: &Arc<str>,
    now: u64,
) -> Result<Accepted, Reject> {
    // Run the append in its own task: if the camera hangs up, hyper drops this future, and an
    // accept cancelled half-way would leave its dedupe entry in flight.
    let (intake, cam, payload) = (shared.intake.clone(), camera.clone(), cb.payload_bytes());
    let result = match tokio::spawn(async move { intake.accept(cam, Source::Hook, payload).await })
        .await
    {
        Ok(r) => r,
        Err(e) => {
            shared.allow_retry(cb, now);
            return Err(Reject::new(StatusCode::SERVICE_UNAVAILABLE, "internal", e).camera(camera));
        }
    };
    if matches!(
        &result,
        Err(IntakeError::Outbox(
            OutboxError::Full { .. } | OutboxError::Io { .. } | OutboxError::Closed
        )) | Err(IntakeError::ConcurrentFailure)
    ) {
        shared.allow_retry(cb, now);
    }
    result.map_err(|e| {
        let (status, reason) = match &e {
            IntakeError::Event(_) => (StatusCode::BAD_REQUEST, "payload"),
            IntakeError::Outbox(OutboxError::Full { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "outbox_full")
            }
            IntakeError::Outbox(OutboxError::RecordTooLarge { .. }) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "record_too_large")
            }
            _ => (StatusCode::SERVICE_UNAVAILABLE, "outbox_error"),
        };
        Reject::new(status, reason, e).camera(camera)
    })
}
