//! A local HTTP endpoint for the notifier tests: a tokio listener answering raw HTTP/1.1 as
//! each test scripts it (a status, a hang, an oversize answer), recording every request.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the endpoint answers one request.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    Status(u16),
    /// Reads the request, never answers.
    Hang,
    /// 200 with a body of this many bytes.
    Oversize(usize),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Request {
    pub fn key(&self) -> &str {
        &self.headers["x-camgate-notification"]
    }
}

/// A local HTTP endpoint: answers with the scripted replies in turn, then with `then`.
#[derive(Clone)]
pub struct Endpoint {
    pub url: String,
    script: Arc<Mutex<VecDeque<Reply>>>,
    pub then: Arc<Mutex<Reply>>,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Endpoint {
    pub async fn start(script: &[Reply], then: Reply) -> Endpoint {
        Self::start_with(script, then, None).await
    }

    /// The same over TLS with `tls`'s certificate (an `https://` URL).
    #[cfg(feature = "dev-tools")]
    pub async fn start_tls(
        script: &[Reply],
        then: Reply,
        tls: Arc<rustls::ServerConfig>,
    ) -> Endpoint {
        Self::start_with(script, then, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with(
        script: &[Reply],
        then: Reply,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let ep = Endpoint {
            url: format!("{scheme}://{}/gbds/notify", listener.local_addr().unwrap()),
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            then: Arc::new(Mutex::new(then)),
            seen: Arc::new(Mutex::new(Vec::new())),
        };
        let server = ep.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let server = server.clone();
                match tls.clone() {
                    None => drop(tokio::spawn(server.serve(sock))),
                    Some(acceptor) => drop(tokio::spawn(async move {
                        // A client that does not trust the certificate ends here.
                        if let Ok(s) = acceptor.accept(sock).await {
                            server.serve(s).await;
                        }
                    })),
                }
            }
        });
        ep
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(self, mut sock: S) {
        let Some(req) = read_request(&mut sock).await else {
            return;
        };
        let reply = {
            // The request is recorded together with taking its reply: the order seen is the
            // order answered.
            let mut seen = self.seen.lock().unwrap();
            seen.push(req);
            let next = self.script.lock().unwrap().pop_front();
            next.unwrap_or(*self.then.lock().unwrap())
        };
        let head = |code: u16, len: usize| {
            format!("HTTP/1.1 {code} X\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
        };
        match reply {
            Reply::Status(code) => {
                let _ = sock.write_all(head(code, 2).as_bytes()).await;
                let _ = sock.write_all(b"ok").await;
            }
            Reply::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Reply::Oversize(n) => {
                let _ = sock.write_all(head(200, n).as_bytes()).await;
                let _ = sock.write_all(&vec![b'x'; n]).await;
            }
        }
        let _ = sock.shutdown().await;
    }

    pub fn seen(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }

    pub fn keys(&self) -> Vec<String> {
        self.seen().iter().map(|r| r.key().to_owned()).collect()
    }
}

async fn read_request<S: AsyncRead + Unpin>(sock: &mut S) -> Option<Request> {
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    let len: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = buf[end..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Request {
        method,
        path,
        headers,
        body: String::from_utf8(body).ok()?,
    })
}
