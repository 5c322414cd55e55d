//! The camera's picture server: `pic_url` / `video_url` point here over HTTPS, signed with an
//! `auth_key` query (`<unix>-<md5(path-unix-secret)>`, the shape the spec's URLs show).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use md5::{Digest, Md5};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{count, SimState};

/// The picture served for every face event (see README.md beside this file).
pub const SNAPSHOT_JPEG: &[u8] = include_bytes!("snap.jpg");

pub fn auth_key(path: &str, unix: u64, secret: &str) -> String {
    let digest = Md5::digest(format!("{path}-{unix}-{secret}").as_bytes());
    format!("{unix}-{}", hex::encode(digest))
}

fn authorised(path: &str, query: Option<&str>, secret: &str) -> bool {
    let Some(key) = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("auth_key=")))
    else {
        return false;
    };
    let Some((unix, _)) = key.split_once('-') else {
        return false;
    };
    unix.parse::<u64>()
        .is_ok_and(|u| auth_key(path, u, secret) == key)
}

pub(crate) async fn serve(
    addr: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<SimState>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                _ = shutdown.cancelled() => break,
            };
            let (acceptor, state) = (acceptor.clone(), state.clone());
            if state.media_stall.load(std::sync::atomic::Ordering::Relaxed) {
                // Hold the connection open without a word until shutdown.
                let stop = shutdown.clone();
                tokio::spawn(async move {
                    stop.cancelled().await;
                    drop(tcp);
                });
                continue;
            }
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(&req, &state)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Ok(local)
}

/// The picture of the event whose id ends the file name (`..._<id>.jpg`).
fn picture(path: &str, state: &SimState) -> Bytes {
    let pictures = state.pictures.lock().unwrap();
    let id = path
        .trim_end_matches(".jpg")
        .rsplit('_')
        .next()
        .and_then(|i| i.parse::<usize>().ok());
    match (pictures.len(), id) {
        (0, _) | (_, None) => Bytes::from_static(SNAPSHOT_JPEG),
        (n, Some(i)) => pictures[i % n].clone(),
    }
}

fn answer(req: &Request<hyper::body::Incoming>, state: &SimState) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let secret = state.media_secret.lock().unwrap().clone();
    let (status, body, ctype) = if !path.starts_with("/mnt/sd-card/") {
        (
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"not found"),
            "text/plain",
        )
    } else if !authorised(path, req.uri().query(), &secret) {
        count(&state.media_refused);
        (
            StatusCode::FORBIDDEN,
            Bytes::from_static(b"bad auth_key"),
            "text/plain",
        )
    } else if path.ends_with(".jpg") {
        count(&state.media_served);
        (StatusCode::OK, picture(path, state), "image/jpeg")
    } else {
        count(&state.media_served);
        (
            StatusCode::OK,
            Bytes::from_static(b"FLV\x01"),
            "video/x-flv",
        )
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(body))
        .expect("static response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_keys_verify() {
        let k = auth_key("/mnt/sd-card/a.jpg", 1_597_894_624, "s");
        assert!(authorised(
            "/mnt/sd-card/a.jpg",
            Some(&format!("x=1&auth_key={k}")),
            "s"
        ));
        assert!(!authorised(
            "/mnt/sd-card/b.jpg",
            Some(&format!("auth_key={k}")),
            "s"
        ));
        assert!(!authorised(
            "/mnt/sd-card/a.jpg",
            Some(&format!("auth_key={k}")),
            "other"
        ));
        assert!(!authorised("/mnt/sd-card/a.jpg", None, "s"));
    }
}
