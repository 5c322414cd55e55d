//! What camgate's two HTTP servers (the hook receiver and the local API) share: an accept loop
//! with a bound on open connections, and HTTP/1.1 on one connection with a header deadline and a
//! graceful end at shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Accepts connections until `stop`, each served by `serve` in a task of its own, at most
/// `max_conns` at once (idle keep-alive ones included, so slow clients cannot exhaust file
/// descriptors); then waits for the open ones to end. `server` names it in the logs.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    max_conns: usize,
    server: &'static str,
    stop: CancellationToken,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut conns = JoinSet::new();
    let conn_limit = Arc::new(Semaphore::new(max_conns.max(1)));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = conn_limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(server, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while conns.try_join_next().is_some() {}
        let conn = serve(stream, peer);
        conns.spawn(async move {
            let _permit = permit;
            conn.await
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Serves HTTP/1.1 on `io` with `handle` until the client is done; after `stop`, the request in
/// flight is finished (its work may be mid-append) and the connection closed.
pub async fn serve_http1<IO, H, Fut>(
    io: IO,
    peer: SocketAddr,
    header_timeout: Duration,
    stop: CancellationToken,
    handle: H,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let answer = handle(req);
        async move { Ok::<_, std::convert::Infallible>(answer.await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(peer = %peer, error = %e, "connection ended with an error");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
