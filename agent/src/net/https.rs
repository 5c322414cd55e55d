//! The one HTTP(S) client camgate uses to talk to a camera (and the simulator to talk to
//! camgate): a fresh HTTP/1.1 connection per request over the camera's TLS trust
//! ([`super::tls`]), with a time limit for the whole exchange and a cap on the answer's size
//! (read through [`Limited`], so an endless answer costs at most `max_answer` bytes of memory).
//!
//! Users: the hook API client (`hook/add|delete|query`), the simulator's callback poster, the
//! picture fetch of `pic_url` (which first checks the URL with [`camera_url`]), the notifier
//! sink's POSTs to site systems, and `camgate tx` (the local API's client).
//!
//! One connection per request is deliberate: a camera's API is called every few minutes and a
//! picture once per face event; a pool would keep sockets open to hundreds of cameras for nothing.
//! The notifier is the exception: it POSTs to one site system, possibly many times a second, so
//! it keeps its connection ([`KeptConnection`]).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::tls::ClientTls;

#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS to {addr}: {source}")]
    Tls {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("answer larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the answer: {0}")]
    Body(String),
}

/// An answer: status and the whole body (at most the request's `max_answer` bytes).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// Requests to one `host:port`, over TLS (`tls = Some`) or plain HTTP.
#[derive(Clone)]
pub struct HttpsClient {
    authority: String,
    tls: Option<ClientTls>,
    timeout: Duration,
    user_agent: HeaderValue,
}

impl HttpsClient {
    pub fn new(authority: &str, tls: Option<ClientTls>, timeout: Duration) -> Self {
        HttpsClient {
            authority: authority.to_owned(),
            tls,
            timeout,
            user_agent: HeaderValue::from_static(concat!("camgate/", env!("CARGO_PKG_VERSION"))),
        }
    }

    /// The `User-Agent` sent (the simulator poses as camera firmware).
    pub fn with_user_agent(mut self, ua: &'static str) -> Self {
        self.user_agent = HeaderValue::from_static(ua);
        self
    }

    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// `POST path` with `body` of `content_type`.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: Bytes,
        max_answer: usize,
    ) -> Result<Answer, HttpsError> {
        self.post_with_headers(path, content_type, &HeaderMap::new(), body, max_answer)
            .await
    }

    /// [`Self::post`] with `headers` added (a site system's authorization and signature).
    pub async fn post_with_headers(
        &self,
        path: &str,
        content_type: &str,
        headers: &HeaderMap,
        body: Bytes,
        max_answer: usize,
    ) -> Result<Answer, HttpsError> {
        let req = self.post_request(path, content_type, headers, body)?;
        self.send(req, max_answer).await
    }

    fn post_request(
        &self,
        path: &str,
        content_type: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, HttpsError> {
        let mut req = self
            .request(Method::POST, path)
            .header(CONTENT_TYPE, content_type);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        Ok(req.body(Full::new(body))?)
    }

    /// `GET path_and_query`.
    pub async fn get(&self, path_and_query: &str, max_answer: usize) -> Result<Answer, HttpsError> {
        let req = self
            .request(Method::GET, path_and_query)
            .body(Full::new(Bytes::new()))?;
        self.send(req, max_answer).await
    }

    /// `method path_and_query` with extra `headers` (e.g. `authorization`) and, when given, a
    /// body of its content type.
    pub async fn request_with(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, Bytes)>,
        max_answer: usize,
    ) -> Result<Answer, HttpsError> {
        let mut b = self.request(method, path_and_query);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = match body {
            Some((ct, bytes)) => b.header(CONTENT_TYPE, ct).body(Full::new(bytes))?,
            None => b.body(Full::new(Bytes::new()))?,
        };
        self.send(req, max_answer).await
    }

    fn request(&self, method: Method, path: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.authority.as_str())
            .header(USER_AGENT, self.user_agent.clone())
    }

    async fn send(
        &self,
        req: Request<Full<Bytes>>,
        max_answer: usize,
    ) -> Result<Answer, HttpsError> {
        tokio::time::timeout(self.timeout, self.exchange(req, max_answer))
            .await
            .map_err(|_| HttpsError::Timeout(self.timeout))?
    }

    async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
        max_answer: usize,
    ) -> Result<Answer, HttpsError> {
        let mut conn = self.open().await?;
        roundtrip(&mut conn.tx, req, max_answer).await
    }

    /// A new connection, its driver running.
    async fn open(&self) -> Result<Conn, HttpsError> {
        let addr = self.authority.clone();
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|source| HttpsError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Conn::handshake(tcp).await,
            Some(t) => {
                let stream = TlsConnector::from(t.config.clone())
                    .connect(t.server_name.clone(), tcp)
                    .await
                    .map_err(|source| HttpsError::Tls { addr, source })?;
                Conn::handshake(stream).await
            }
        }
    }
}

/// An HTTP/1.1 connection; dropping it closes the socket at once.
struct Conn {
    tx: SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Conn {
    async fn handshake<S>(stream: S) -> Result<Conn, HttpsError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { tx, driver })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn roundtrip(
    tx: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
    max_answer: usize,
) -> Result<Answer, HttpsError> {
    let resp = tx.send_request(req).await?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = Limited::new(resp.into_body(), max_answer)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                HttpsError::TooLarge { limit: max_answer }
            } else {
                HttpsError::Body(e.to_string())
            }
        })?
        .to_bytes();
    Ok(Answer {
        status,
        content_type,
        body,
    })
}

/// POSTs over one kept-alive connection: opened at the first request, reused while the server
/// keeps it open, closed after any failed exchange (a timeout, an answer over the cap, a broken
/// socket) so that the next request starts clean.
pub struct KeptConnection {
    client: HttpsClient,
    conn: Option<Conn>,
}

impl KeptConnection {
    pub fn new(client: HttpsClient) -> Self {
        KeptConnection { client, conn: None }
    }

    /// [`HttpsClient::post_with_headers`] on the kept connection, under the same time limit
    /// (connecting included).
    pub async fn post_with_headers(
        &mut self,
        path: &str,
        content_type: &str,
        headers: &HeaderMap,
        body: Bytes,
        max_answer: usize,
    ) -> Result<Answer, HttpsError> {
        let req = self
            .client
            .post_request(path, content_type, headers, body)?;
        let limit = self.client.timeout;
        let result = tokio::time::timeout(limit, self.exchange(req, max_answer))
            .await
            .unwrap_or(Err(HttpsError::Timeout(limit)));
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn exchange(
        &mut self,
        req: Request<Full<Bytes>>,
        max_answer: usize,
    ) -> Result<Answer, HttpsError> {
        // A connection the server closed while idle is not ready: open a new one instead.
        let reusable = match &mut self.conn {
            Some(c) => c.tx.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            self.conn = Some(self.client.open().await?);
        }
        let conn = self.conn.as_mut().expect("opened above");
        roundtrip(&mut conn.tx, req, max_answer).await
    }
}

/// Why a URL the camera gave is not fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{0:?} is not an absolute http(s) URL")]
    Malformed(String),
    #[error("{url:?} points at host {host:?}, not at the camera ({camera:?})")]
    WrongHost {
        url: String,
        host: String,
        camera: String,
    },
}

/// A URL checked by [`camera_url`]: where to connect and what to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraUrl {
    pub https: bool,
    /// `host:port` (the scheme's default port when the URL has none).
    pub authority: String,
    /// Path and query exactly as given (an `auth_key` query is kept byte for byte).
    pub path_and_query: String,
}

/// Checks that `url` (a camera's `pic_url` / `video_url`) points at `camera_host` — the host of
/// the camera's configured address — on any port. A camera (or whoever forged its event) must
/// not make camgate fetch from another machine with that camera's trust.
pub fn camera_url(url: &str, camera_host: &str) -> Result<CameraUrl, UrlError> {
    let malformed = || UrlError::Malformed(url.to_owned());
    let uri: Uri = url.parse().map_err(|_| malformed())?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(malformed()),
    };
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(malformed)?;
    let bare = |h: &str| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase()
    };
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) || bare(host) != bare(camera_host)
    {
        return Err(UrlError::WrongHost {
            url: url.to_owned(),
            host: host.to_owned(),
            camera: camera_host.to_owned(),
        });
    }
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok(CameraUrl {
        https,
        authority: format!("{host}:{port}"),
        path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_url_keeps_path_and_query_and_takes_any_port() {
        let u = camera_url(
            "https://192.168.1.20:8443/pic/1.jpg?auth_key=a%2Fb&x=1",
            "192.168.1.20",
        )
        .unwrap();
        assert!(u.https);
        assert_eq!(u.authority, "192.168.1.20:8443");
        assert_eq!(u.path_and_query, "/pic/1.jpg?auth_key=a%2Fb&x=1");
        let u = camera_url("https://Cam-1.local/p", "cam-1.local").unwrap();
        assert_eq!(u.authority, "Cam-1.local:443");
        let u = camera_url("http://[::1]/p", "::1").unwrap();
        assert_eq!((u.https, u.authority.as_str()), (false, "[::1]:80"));
    }

    #[test]
    fn camera_url_refuses_other_hosts_and_junk() {
        for (url, host) in [
            ("https://10.0.0.9/pic.jpg", "192.168.1.20"),
            ("https://192.168.1.20.evil.example/p", "192.168.1.20"),
            ("https://192.168.1.20@10.0.0.9/p", "192.168.1.20"),
        ] {
            assert!(
                matches!(camera_url(url, host), Err(UrlError::WrongHost { .. })),
                "{url}"
            );
        }
        for url in [
            "",
            "/pic.jpg",
            "ftp://192.168.1.20/p",
            "https:///p",
            "not a url",
        ] {
            assert!(
                matches!(camera_url(url, "192.168.1.20"), Err(UrlError::Malformed(_))),
                "{url:?}"
            );
        }
    }
}
