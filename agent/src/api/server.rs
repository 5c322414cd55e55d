//! The API's HTTP/1.1 server (hyper), after the hook receiver's pattern. Per request, in order:
//! bearer token (401) → route (404, 405) → content type (415) → declared size (413 before the
//! body is read) → a request slot (503) → the body, bounded in size (413) and time (408) → parse
//! (400, 413) → the service on the blocking pool (its errors as their statuses) → 202 or 200.
//! Nothing reaches the service unless the whole request parsed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::body::{self, Kind, Limits};
use super::routes::{self, Route, Unrouted};
use super::{ApiConfig, ApiError, Refusal};
use crate::gbds::service::{ServiceError, Transactions};
use crate::net::multipart;
use crate::net::serve;

struct Shared {
    token: String,
    service: Arc<dyn Transactions>,
    /// Bounds the bodies held in memory and the service calls in flight.
    permits: Arc<Semaphore>,
    max_concurrency: usize,
    max_body_bytes: usize,
    limits: Limits,
    header_timeout: Duration,
    body_timeout: Duration,
}

impl Shared {
    fn new(cfg: &ApiConfig, service: Arc<dyn Transactions>) -> Result<Arc<Shared>, ApiError> {
        let max_concurrency = cfg.max_concurrency.max(1);
        Ok(Arc::new(Shared {
            token: cfg.token().map_err(ApiError::Token)?,
            service,
            permits: Arc::new(Semaphore::new(max_concurrency)),
            max_concurrency,
            max_body_bytes: cfg.max_body_bytes,
            limits: Limits {
                max_images: cfg.max_images,
                max_image_bytes: cfg.max_image_bytes,
            },
            header_timeout: Duration::from_secs(cfg.header_timeout_secs.max(1)),
            body_timeout: Duration::from_secs(cfg.body_timeout_secs.max(1)),
        }))
    }
}

/// A listener on `[api] listen`.
pub async fn bind(cfg: &ApiConfig) -> Result<TcpListener, ApiError> {
    let addr: SocketAddr = cfg
        .listen
        .parse()
        .map_err(|_| ApiError::Listen(cfg.listen.clone()))?;
    TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind {
            addr: cfg.listen.clone(),
            source,
        })
}

/// Serves the API on `listener` until `stop`, then lets the requests in flight finish. Fails
/// at once (serving nothing) when the token cannot be read.
pub async fn serve(
    cfg: &ApiConfig,
    listener: TcpListener,
    service: Arc<dyn Transactions>,
    stop: CancellationToken,
) -> Result<(), ApiError> {
    let shared = Shared::new(cfg, service)?;
    accept_loop(listener, shared, stop).await;
    Ok(())
}

/// A running API server (bound and serving in its own task).
pub struct ApiServer {
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Reads the token, binds `[api] listen` and serves until `stop`.
    pub async fn start(
        cfg: &ApiConfig,
        service: Arc<dyn Transactions>,
        stop: CancellationToken,
    ) -> Result<ApiServer, ApiError> {
        let shared = Shared::new(cfg, service)?;
        let listener = bind(cfg).await?;
        let local_addr = listener.local_addr().map_err(|source| ApiError::Bind {
            addr: cfg.listen.clone(),
            source,
        })?;
        let task = tokio::spawn(accept_loop(listener, shared, stop));
        Ok(ApiServer { local_addr, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits until the server has stopped (after the stop token) and its connections ended.
    pub async fn join(self) {
        let _ = self.task.await;
    }

    /// Aborts the server and its connections (shutdown deadline passed).
    pub fn abort_handle(&self) -> tokio::task::AbortHandle {
        self.task.abort_handle()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    if let Ok(a) = listener.local_addr() {
        info!(addr = %a, "local API listening");
    }
    let max_conns = shared.max_concurrency * 4;
    serve::accept_loop(
        listener,
        max_conns,
        "local API",
        stop.clone(),
        |stream, peer| {
            let (shared, stop) = (shared.clone(), stop.clone());
            let timeout = shared.header_timeout;
            serve::serve_http1(stream, peer, timeout, stop, move |req| {
                handle(shared.clone(), peer, req)
            })
        },
    )
    .await;
    info!("local API stopped");
}

async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    match process(&shared, req).await {
        Ok((status, body)) => {
            debug!(peer = %peer, %method, path, status, "API request answered");
            reply(status, body)
        }
        Err(r) => {
            if r.status >= 500 || r.status == 401 {
                warn!(peer = %peer, %method, path, status = r.status, code = r.code, message = %r.message, "API request refused");
            } else {
                debug!(peer = %peer, %method, path, status = r.status, code = r.code, message = %r.message, "API request refused");
            }
            let mut resp = reply(r.status, r.body());
            let h = resp.headers_mut();
            if r.status == 401 {
                h.insert("www-authenticate", HeaderValue::from_static("Bearer"));
            }
            if r.status == 405 {
                if let Err(Unrouted::Method(allowed)) = routes::resolve(method.as_str(), &path) {
                    if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                        h.insert(ALLOW, v);
                    }
                }
            }
            resp
        }
    }
}

fn reply(status: u16, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The answer's status and JSON body.
type Answer = (u16, String);

async fn process(shared: &Shared, req: Request<Incoming>) -> Result<Answer, Refusal> {
    authorize(&shared.token, req.headers())?;
    let route = routes::resolve(req.method().as_str(), req.uri().path()).map_err(unrouted)?;
    // What is wrong with the head is answered before waiting for a slot.
    let boundary = match body_rule(&route) {
        Some(multipart_ok) => check_head(shared, req.headers(), multipart_ok)?,
        None => None,
    };
    let deadline = Instant::now() + shared.body_timeout;
    let permit =
        match tokio::time::timeout_at(deadline, shared.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => return Err(Refusal::new(503, "busy", "no request slot in time")),
        };
    let read = |req| read_body(shared, req, boundary, deadline);
    match route {
        Route::Enroll => submit(shared, read(req).await?, Kind::Enroll, permit).await,
        Route::Update(key) => submit(shared, read(req).await?, Kind::Update(key), permit).await,
        Route::Search => submit(shared, read(req).await?, Kind::Search, permit).await,
        Route::Treat(tguid) => {
            let t = body::treatment(&read(req).await?.bytes)?;
            accepted(call(permit, shared, move |s| s.treat(&tguid, &t)).await)
        }
        Route::Review(tguid) => {
            let approve = body::approval(&read(req).await?.bytes)?;
            accepted(call(permit, shared, move |s| s.review(&tguid, approve)).await)
        }
        Route::Transaction(t) => json(call(permit, shared, move |s| s.transaction(&t)).await),
        Route::People => json(call(permit, shared, |s| s.people()).await),
        Route::Person(k) => json(call(permit, shared, move |s| s.person(&k)).await),
        Route::DeletePerson(k) => json(call(permit, shared, move |s| s.delete_person(&k)).await),
    }
}

/// Whether a route takes a body, and then whether multipart as well as JSON.
fn body_rule(route: &Route) -> Option<bool> {
    match route {
        Route::Enroll | Route::Update(_) | Route::Search => Some(true),
        Route::Treat(_) | Route::Review(_) => Some(false),
        _ => None,
    }
}

fn unrouted(u: Unrouted) -> Refusal {
    match u {
        Unrouted::NotFound => Refusal::new(404, "not_found", "no such path"),
        Unrouted::Method(allowed) => Refusal::new(
            405,
            "method_not_allowed",
            format!("this path takes {}", allowed.join(", ")),
        ),
        Unrouted::BadSegment => Refusal::invalid("a path segment is not percent-encoded UTF-8"),
    }
}

/// `Authorization: Bearer <token>`, compared in constant time.
fn authorize(token: &str, headers: &HeaderMap) -> Result<(), Refusal> {
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    match given {
        Some(g) if bool::from(g.as_bytes().ct_eq(token.as_bytes())) => Ok(()),
        Some(_) => Err(Refusal::new(401, "unauthorized", "wrong bearer token")),
        None => Err(Refusal::new(
            401,
            "unauthorized",
            "a bearer token is required",
        )),
    }
}

async fn submit(
    shared: &Shared,
    b: Body,
    kind: Kind,
    permit: OwnedSemaphorePermit,
) -> Result<Answer, Refusal> {
    let s = match &b.boundary {
        Some(boundary) => body::submission_multipart(kind, &b.bytes, boundary, shared.limits)?,
        None => body::submission_json(kind, &b.bytes, shared.limits)?,
    };
    drop(b); // the pictures now live in the submission only
    accepted(call(permit, shared, move |svc| svc.submit(s)).await)
}

/// Runs a service call on the blocking pool; the request slot is held until it returns, even
/// when the client hangs up meanwhile (the call is not cancelled half-way).
async fn call<T: Send + 'static>(
    permit: OwnedSemaphorePermit,
    shared: &Shared,
    f: impl FnOnce(&dyn Transactions) -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, Refusal> {
    let svc = shared.service.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f(svc.as_ref())
    })
    .await;
    match joined {
        Ok(r) => r.map_err(Refusal::from),
        Err(e) => Err(Refusal::new(
            500,
            "internal",
            format!("the service failed: {e}"),
        )),
    }
}

fn accepted(r: Result<crate::gbds::service::Accepted, Refusal>) -> Result<Answer, Refusal> {
    let a = r?;
    let text =
        serde_json::to_string(&a).map_err(|e| Refusal::new(500, "internal", e.to_string()))?;
    Ok((202, text))
}

fn json(r: Result<serde_json::Value, Refusal>) -> Result<Answer, Refusal> {
    Ok((200, r?.to_string()))
}

/// A request body with its multipart boundary (`None`: JSON).
struct Body {
    bytes: Bytes,
    boundary: Option<String>,
}

/// Content type (its multipart boundary; `None` for JSON) and declared size.
fn check_head(
    shared: &Shared,
    headers: &HeaderMap,
    multipart_ok: bool,
) -> Result<Option<String>, Refusal> {
    let boundary = body_format(headers, multipart_ok)?;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = shared.max_body_bytes;
    if let Some(n) = declared.filter(|&n| n > limit as u64) {
        return Err(Refusal::too_large(format!("{n} bytes; at most {limit}")));
    }
    Ok(boundary)
}

/// The whole body, at most `max_body_bytes`, before `deadline`.
async fn read_body(
    shared: &Shared,
    req: Request<Incoming>,
    boundary: Option<String>,
    deadline: Instant,
) -> Result<Body, Refusal> {
    let limit = shared.max_body_bytes;
    let limited = Limited::new(req.into_body(), limit);
    let bytes = match tokio::time::timeout_at(deadline, limited.collect()).await {
        Err(_) => return Err(Refusal::new(408, "timeout", "body not received in time")),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(Refusal::too_large(format!("body over {limit} bytes")))
        }
        Ok(Err(e)) => return Err(Refusal::invalid(format!("reading the body: {e}"))),
        Ok(Ok(b)) => b.to_bytes(),
    };
    Ok(Body { bytes, boundary })
}

/// `Some(boundary)` for multipart, `None` for JSON; anything else is 415.
fn body_format(headers: &HeaderMap, multipart_ok: bool) -> Result<Option<String>, Refusal> {
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        return Ok(None);
    }
    if multipart_ok && mime.eq_ignore_ascii_case("multipart/form-data") {
        return multipart::boundary_from_content_type(ct)
            .map(Some)
            .map_err(|e| Refusal::invalid(e.to_string()));
    }
    let wanted = if multipart_ok {
        "application/json or multipart/form-data"
    } else {
        "application/json"
    };
    Err(Refusal::new(
        415,
        "unsupported_media_type",
        format!("content type {ct:?}; this path takes {wanted}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(authorize("s3cret-token-0000", &h).unwrap_err().status, 401);
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("bearer s3cret-token-0000"),
        );
        assert!(authorize("s3cret-token-0000", &h).is_ok());
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret-token-0001"),
        );
        assert_eq!(authorize("s3cret-token-0000", &h).unwrap_err().status, 401);
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Basic s3cret-token-0000"),
        );
        assert_eq!(authorize("s3cret-token-0000", &h).unwrap_err().status, 401);
    }

    #[test]
    fn content_types() {
        let with = |ct: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            h
        };
        assert_eq!(
            body_format(&with("application/json; charset=utf-8"), false),
            Ok(None)
        );
        assert_eq!(
            body_format(&with("multipart/form-data; boundary=x"), true),
            Ok(Some("x".into()))
        );
        assert_eq!(
            body_format(&with("multipart/form-data; boundary=x"), false)
                .unwrap_err()
                .status,
            415
        );
        assert_eq!(
            body_format(&with("multipart/form-data"), true)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            body_format(&HeaderMap::new(), true).unwrap_err().status,
            415
        );
    }
}
