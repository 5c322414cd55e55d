//! The local transactions API over real loopback sockets: the real server (`api::serve`) in
//! front of a fake processor that records every call, requests written byte for byte (so
//! statuses, headers and bounds are what a client on the wire sees), the OpenAPI document checked
//! against the router, and the `camgate tx` binary against the server.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use camgate::api::{self, ApiConfig};
use camgate::gbds::service::{Accepted, ServiceError, Submission, Transactions};
use camgate::net::multipart::encode_parts;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "test-token-0123456789";
const B: &str = "api-test-boundary";

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Submit(Submission),
    Treat(String, String),
    Review(String, bool),
    Transaction(String),
    People,
    Person(String),
    Delete(String),
}

/// A processor that records calls and answers fixed values, or `fail` when set.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<Call>>,
    fail: Mutex<Option<ServiceError>>,
    /// How long each call takes (a slow disk).
    delay: Mutex<Duration>,
}

impl Fake {
    fn record<T>(&self, c: Call, ok: T) -> Result<T, ServiceError> {
        let delay = *self.delay.lock().unwrap();
        std::thread::sleep(delay);
        self.calls.lock().unwrap().push(c);
        match self.fail.lock().unwrap().clone() {
            Some(e) => Err(e),
            None => Ok(ok),
        }
    }
    fn calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
    fn fail_with(&self, e: Option<ServiceError>) {
        *self.fail.lock().unwrap() = e;
    }
}

fn queued(tguid: &str) -> Accepted {
    Accepted {
        tguid: tguid.into(),
        status: "QUEUED".into(),
    }
}

impl Transactions for Fake {
    fn submit(&self, s: Submission) -> Result<Accepted, ServiceError> {
        self.record(Call::Submit(s), queued("tx-1"))
    }
    fn treat(&self, tguid: &str, treatment: &str) -> Result<Accepted, ServiceError> {
        self.record(Call::Treat(tguid.into(), treatment.into()), queued(tguid))
    }
    fn review(&self, tguid: &str, approve: bool) -> Result<Accepted, ServiceError> {
        self.record(Call::Review(tguid.into(), approve), queued(tguid))
    }
    fn transaction(&self, tguid: &str) -> Result<Value, ServiceError> {
        let v = json!({"tguid": tguid, "status": "ENROLLED"});
        self.record(Call::Transaction(tguid.into()), v)
    }
    fn people(&self) -> Result<Value, ServiceError> {
        self.record(Call::People, json!([{"key": "alice", "templates": 2}]))
    }
    fn person(&self, key: &str) -> Result<Value, ServiceError> {
        self.record(Call::Person(key.into()), json!({"key": key}))
    }
    fn delete_person(&self, key: &str) -> Result<Value, ServiceError> {
        self.record(Call::Delete(key.into()), json!({"removed": key}))
    }
}

struct Api {
    addr: SocketAddr,
    fake: Arc<Fake>,
    stop: CancellationToken,
    dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<Result<(), api::ApiError>>,
}

impl Api {
    async fn start(tweak: impl FnOnce(&mut ApiConfig)) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("api.token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let mut cfg = ApiConfig::new("127.0.0.1:0");
        cfg.token_file = token_file;
        tweak(&mut cfg);
        let listener = api::bind(&cfg).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Arc::new(Fake::default());
        let stop = CancellationToken::new();
        let (svc, s2): (Arc<dyn Transactions>, _) = (fake.clone(), stop.clone());
        let task = tokio::spawn(async move { api::serve(&cfg, listener, svc, s2).await });
        Api {
            addr,
            fake,
            stop,
            dir,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        let r = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        assert!(matches!(r, Ok(Ok(Ok(())))), "server did not stop cleanly");
    }

    /// `method path` with the right token, a body of content type `ct`.
    async fn req(&self, method: &str, path: &str, ct: Option<&str>, body: &[u8]) -> Resp {
        let auth = format!("Bearer {TOKEN}");
        self.req_as(Some(&auth), method, path, ct, body).await
    }

    async fn req_as(
        &self,
        auth: Option<&str>,
        method: &str,
        path: &str,
        ct: Option<&str>,
        body: &[u8],
    ) -> Resp {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(a) = auth {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        if let Some(ct) = ct {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        head.push_str("\r\n");
        let mut raw = head.into_bytes();
        raw.extend_from_slice(body);
        exchange(self.addr, &raw).await
    }

    async fn json(&self, method: &str, path: &str, body: &Value) -> Resp {
        let b = body.to_string();
        self.req(method, path, Some("application/json"), b.as_bytes())
            .await
    }

    async fn multipart(
        &self,
        method: &str,
        path: &str,
        parts: &[(&str, Option<&str>, &[u8])],
    ) -> Resp {
        let ct = format!("multipart/form-data; boundary={B}");
        self.req(method, path, Some(&ct), &encode_parts(parts, B))
            .await
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
    /// Status and exact body.
    fn is(&self, status: u16, body: Value) {
        assert_eq!((self.status, self.json()), (status, body), "{self:?}");
    }
    /// An error answer of `status` and `code`.
    fn refused(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        let v = self.json();
        assert_eq!(v["error"]["code"], code, "{self:?}");
        assert!(v["error"]["message"].is_string(), "{self:?}");
        assert_eq!(v.as_object().unwrap().len(), 1, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/json"));
    }
}

/// Writes `raw`, reads the answer until the server closes (bounded: a server that waits for
/// more body fails the test instead of hanging it).
async fn exchange(addr: SocketAddr, raw: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    read_answer(&mut s).await
}

async fn read_answer(s: &mut TcpStream) -> Resp {
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("no answer within 10 s")
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole answer");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

const JPEG: &[u8] = b"\xff\xd8\xff\xe0 not really a jpeg \r\n--api-test \xff\xd9";

fn accepted(tguid: &str) -> Value {
    json!({"tguid": tguid, "status": "QUEUED"})
}

#[tokio::test]
async fn submissions_as_json_and_multipart() {
    let api = Api::start(|_| {}).await;
    let r = api
        .json("POST", "/v1/people", &json!({"key": "alice", "images": [b64(JPEG), b64(b"2")], "attributes": {"dept": "R&D"}}))
        .await;
    r.is(202, accepted("tx-1"));
    assert_eq!(
        api.fake.calls(),
        vec![Call::Submit(Submission::Enroll {
            key: "alice".into(),
            images: vec![JPEG.to_vec(), b"2".to_vec()],
            attributes: BTreeMap::from([("dept".into(), "R&D".into())]),
        })]
    );
    let parts: &[(&str, Option<&str>, &[u8])] = &[
        ("key", None, b"bob"),
        ("image", Some("a.jpg"), JPEG),
        ("attributes", None, br#"{"site":"north"}"#),
    ];
    api.multipart("POST", "/v1/people", parts)
        .await
        .is(202, accepted("tx-1"));
    assert_eq!(
        api.fake.calls(),
        vec![Call::Submit(Submission::Enroll {
            key: "bob".into(),
            images: vec![JPEG.to_vec()],
            attributes: BTreeMap::from([("site".into(), "north".into())]),
        })]
    );
    // Update: the key is the path's, percent-decoded.
    api.json(
        "PUT",
        "/v1/people/J%C3%BCrgen%20M%2F1",
        &json!({"image": b64(JPEG)}),
    )
    .await
    .is(202, accepted("tx-1"));
    api.multipart("PUT", "/v1/people/carol", &[("image", Some("c.jpg"), JPEG)])
        .await
        .is(202, accepted("tx-1"));
    let update = |key: &str| {
        Call::Submit(Submission::Update {
            key: key.into(),
            images: vec![JPEG.to_vec()],
        })
    };
    assert_eq!(
        api.fake.calls(),
        vec![update("Jürgen M/1"), update("carol")]
    );
    // Search: 1:1 with a key, 1:N without.
    api.json(
        "POST",
        "/v1/searches",
        &json!({"key": "alice", "images": [b64(JPEG)]}),
    )
    .await
    .is(202, accepted("tx-1"));
    api.multipart(
        "POST",
        "/v1/searches",
        &[("image", None, JPEG), ("image", None, b"x")],
    )
    .await
    .is(202, accepted("tx-1"));
    assert_eq!(
        api.fake.calls(),
        vec![
            Call::Submit(Submission::Search {
                key: Some("alice".into()),
                images: vec![JPEG.to_vec()]
            }),
            Call::Submit(Submission::Search {
                key: None,
                images: vec![JPEG.to_vec(), b"x".to_vec()]
            }),
        ]
    );
    api.stop().await;
}

#[tokio::test]
async fn treatments_reviews_and_reads() {
    let api = Api::start(|_| {}).await;
    api.json(
        "POST",
        "/v1/exceptions/t-9/treatment",
        &json!({"treatment": "RECOLLECT"}),
    )
    .await
    .is(202, accepted("t-9"));
    api.json("POST", "/v1/reviews/t-8", &json!({"approve": true}))
        .await
        .is(202, accepted("t-8"));
    api.json("POST", "/v1/reviews/t-7", &json!({"approve": false}))
        .await
        .is(202, accepted("t-7"));
    api.req("GET", "/v1/transactions/t-9", None, b"")
        .await
        .is(200, json!({"tguid": "t-9", "status": "ENROLLED"}));
    api.req("GET", "/v1/people", None, b"")
        .await
        .is(200, json!([{"key": "alice", "templates": 2}]));
    api.req("GET", "/v1/people/a%20b?verbose=1", None, b"")
        .await
        .is(200, json!({"key": "a b"}));
    api.req("DELETE", "/v1/people/a%20b", None, b"")
        .await
        .is(200, json!({"removed": "a b"}));
    assert_eq!(
        api.fake.calls(),
        vec![
            Call::Treat("t-9".into(), "RECOLLECT".into()),
            Call::Review("t-8".into(), true),
            Call::Review("t-7".into(), false),
            Call::Transaction("t-9".into()),
            Call::People,
            Call::Person("a b".into()),
            Call::Delete("a b".into()),
        ]
    );
    api.stop().await;
}

#[tokio::test]
async fn requests_without_the_token_are_401() {
    let api = Api::start(|_| {}).await;
    let body = json!({"key": "a", "image": b64(JPEG)}).to_string();
    for auth in [
        None,
        Some("Bearer wrong-token-0123456789"),
        Some("Bearer test-token-012345678"),
        Some("Basic dGVzdDp0ZXN0"),
        Some("test-token-0123456789"),
    ] {
        let r = api
            .req_as(
                auth,
                "POST",
                "/v1/people",
                Some("application/json"),
                body.as_bytes(),
            )
            .await;
        r.refused(401, "unauthorized");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        // Unknown paths too: nothing is told without the token.
        api.req_as(auth, "GET", "/nowhere", None, b"")
            .await
            .refused(401, "unauthorized");
    }
    assert_eq!(api.fake.calls(), vec![]);
    api.stop().await;
}

#[tokio::test]
async fn bodies_and_pictures_over_the_limits_are_413() {
    let api = Api::start(|c| {
        c.max_body_bytes = 4096;
        c.max_image_bytes = 1000;
        c.max_images = 2;
    })
    .await;
    // Declared too large: refused on the headers alone.
    let head = format!(
        "POST /v1/people HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
    );
    exchange(api.addr, head.as_bytes())
        .await
        .refused(413, "too_large");
    // Chunked, never ending: refused once past the bound, without waiting for the rest.
    let mut s = TcpStream::connect(api.addr).await.unwrap();
    let head = format!(
        "POST /v1/searches HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(format!("{:x}\r\n{}\r\n", 5000, "a".repeat(5000)).as_bytes())
        .await
        .unwrap();
    read_answer(&mut s).await.refused(413, "too_large");
    // One picture over max_image_bytes (after decoding), as JSON and as a part.
    let big = vec![7u8; 1001];
    api.json("POST", "/v1/searches", &json!({"image": b64(&big)}))
        .await
        .refused(413, "too_large");
    api.multipart("POST", "/v1/searches", &[("image", None, &big)])
        .await
        .refused(413, "too_large");
    // Exactly at the bound is fine.
    api.json("POST", "/v1/searches", &json!({"image": b64(&big[..1000])}))
        .await
        .is(202, accepted("tx-1"));
    // More pictures than max_images.
    api.json(
        "POST",
        "/v1/searches",
        &json!({"images": [b64(b"1"), b64(b"2"), b64(b"3")]}),
    )
    .await
    .refused(413, "too_large");
    api.multipart("POST", "/v1/searches", &[("image", None, &b"1"[..]); 3])
        .await
        .refused(413, "too_large");
    assert_eq!(
        api.fake.calls(),
        vec![Call::Submit(Submission::Search {
            key: None,
            images: vec![big[..1000].to_vec()]
        })]
    );
    api.stop().await;
}

#[tokio::test]
async fn media_types_paths_and_methods() {
    let api = Api::start(|_| {}).await;
    api.req("POST", "/v1/people", Some("text/plain"), b"hello")
        .await
        .refused(415, "unsupported_media_type");
    api.req("POST", "/v1/people", None, b"{}")
        .await
        .refused(415, "unsupported_media_type");
    let ct = format!("multipart/form-data; boundary={B}");
    let body = encode_parts(&[("treatment", None, b"RECOLLECT")], B);
    api.req("POST", "/v1/exceptions/t/treatment", Some(&ct), &body)
        .await
        .refused(415, "unsupported_media_type");
    api.req("GET", "/v1/nowhere", None, b"").await.is(
        404,
        json!({"error": {"code": "not_found", "message": "no such path"}}),
    );
    api.req("GET", "/v1/people/", None, b"")
        .await
        .refused(404, "not_found");
    let r = api.req("PATCH", "/v1/people/alice", None, b"").await;
    r.is(
        405,
        json!({"error": {"code": "method_not_allowed", "message": "this path takes GET, PUT, DELETE"}}),
    );
    assert_eq!(r.header("allow"), Some("GET, PUT, DELETE"));
    api.req("DELETE", "/v1/searches", None, b"")
        .await
        .refused(405, "method_not_allowed");
    api.req("GET", "/v1/people/%ff", None, b"")
        .await
        .refused(400, "invalid_request");
    api.json("POST", "/v1/people", &json!({"image": b64(JPEG)}))
        .await
        .refused(400, "invalid_request");
    api.json(
        "PUT",
        "/v1/people/a",
        &json!({"key": "b", "image": b64(JPEG)}),
    )
    .await
    .refused(400, "invalid_request");
    assert_eq!(api.fake.calls(), vec![]);
    api.stop().await;
}

#[tokio::test]
async fn a_bad_picture_refuses_the_whole_request() {
    let api = Api::start(|_| {}).await;
    let r = api
        .json(
            "POST",
            "/v1/people",
            &json!({"key": "a", "images": [b64(JPEG), "not*base64!"]}),
        )
        .await;
    r.refused(400, "invalid_request");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("images[1]"),
        "{r:?}"
    );
    let parts: &[(&str, Option<&str>, &[u8])] = &[
        ("key", None, b"a"),
        ("image", None, JPEG),
        ("attributes", None, b"not json"),
    ];
    api.multipart("POST", "/v1/people", parts)
        .await
        .refused(400, "invalid_request");
    assert_eq!(api.fake.calls(), vec![], "nothing may be half-accepted");
    api.stop().await;
}

#[tokio::test]
async fn service_errors_keep_their_status_and_code() {
    let api = Api::start(|_| {}).await;
    let cases = [
        (
            ServiceError::Invalid("unknown treatment".into()),
            400,
            "invalid_request",
        ),
        (
            ServiceError::NotFound("no transaction t".into()),
            404,
            "not_found",
        ),
        (
            ServiceError::Conflict("t is not in EXCEPTION".into()),
            409,
            "conflict",
        ),
        (
            ServiceError::TooLarge("image too large".into()),
            413,
            "too_large",
        ),
        (ServiceError::Busy("queue full".into()), 503, "busy"),
        (ServiceError::Internal("disk".into()), 500, "internal"),
    ];
    for (e, status, code) in cases {
        api.fake.fail_with(Some(e.clone()));
        let message = e.to_string();
        let want = json!({"error": {"code": code, "message": message}});
        api.json(
            "POST",
            "/v1/exceptions/t/treatment",
            &json!({"treatment": "X"}),
        )
        .await
        .is(status, want.clone());
        api.req("GET", "/v1/transactions/t", None, b"")
            .await
            .is(status, want.clone());
        api.json("POST", "/v1/searches", &json!({"image": b64(JPEG)}))
            .await
            .is(status, want);
    }
    assert_eq!(api.fake.calls().len(), 18);
    api.stop().await;
}

#[tokio::test]
async fn a_missing_or_short_token_file_stops_the_server_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ApiConfig::new("127.0.0.1:0");
    cfg.token_file = dir.path().join("none");
    let listener = api::bind(&cfg).await.unwrap();
    let fake: Arc<dyn Transactions> = Arc::new(Fake::default());
    let r = api::serve(&cfg, listener, fake.clone(), CancellationToken::new()).await;
    assert!(matches!(r, Err(api::ApiError::Token(_))), "{r:?}");
    std::fs::write(dir.path().join("short"), "short\n").unwrap();
    cfg.token_file = dir.path().join("short");
    let r = api::ApiServer::start(&cfg, fake, CancellationToken::new()).await;
    assert!(matches!(r, Err(api::ApiError::Token(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_and_a_slow_service_are_bounded() {
    let api = Api::start(|c| {
        c.max_concurrency = 1;
        c.body_timeout_secs = 1;
        c.header_timeout_secs = 1;
    })
    .await;
    // A body that stops half-way: 408 once the body timeout passes.
    let mut slow = TcpStream::connect(api.addr).await.unwrap();
    let head = format!(
        "POST /v1/searches HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"image\""
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    read_answer(&mut slow).await.refused(408, "timeout");
    // Headers that never end: the connection is closed after the header timeout.
    let mut s = TcpStream::connect(api.addr).await.unwrap();
    s.write_all(b"GET /v1/people HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "connection still open after the header timeout"
    );
    // The only slot is held by a slow service call (it keeps it even though its client left):
    // another request waits at most the body timeout, then 503.
    *api.fake.delay.lock().unwrap() = Duration::from_millis(3000);
    let addr = api.addr;
    let first = tokio::spawn(async move {
        let raw = format!("GET /v1/people HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        drop(s);
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.req("GET", "/v1/transactions/t", None, b"")
        .await
        .refused(503, "busy");
    first.await.unwrap();
    *api.fake.delay.lock().unwrap() = Duration::ZERO;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    api.req("GET", "/v1/transactions/t", None, b"")
        .await
        .is(200, json!({"tguid": "t", "status": "ENROLLED"}));
    assert_eq!(
        api.fake.calls(),
        vec![Call::People, Call::Transaction("t".into())]
    );
    api.stop().await;
}

// ---- the OpenAPI document ----

/// `(METHOD, path template) -> documented statuses`.
fn documented() -> BTreeMap<(String, String), BTreeSet<u16>> {
    let doc: Value = serde_norway::from_str(api::OPENAPI_YAML).expect("openapi.yaml parses");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut out = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let statuses = op["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path} has no responses"))
                .keys()
                .map(|k| k.parse().unwrap())
                .collect();
            out.insert((method.to_uppercase(), path.clone()), statuses);
        }
    }
    out
}

/// `(METHOD, path template) -> media types of its request body` (`$ref`s followed).
fn body_media_types() -> BTreeMap<(String, String), Vec<String>> {
    let doc: Value = serde_norway::from_str(api::OPENAPI_YAML).unwrap();
    let mut out = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let mut body = &op["requestBody"];
            if let Some(r) = body["$ref"].as_str() {
                let name = r.strip_prefix("#/components/requestBodies/").unwrap();
                body = &doc["components"]["requestBodies"][name];
            }
            if let Some(content) = body["content"].as_object() {
                let types = content.keys().cloned().collect();
                out.insert((method.to_uppercase(), path.clone()), types);
            }
        }
    }
    out
}

/// A path of `template` with its parameter filled in.
fn concrete(template: &str) -> String {
    template.replace("{key}", "alice").replace("{tguid}", "t-1")
}

#[tokio::test]
async fn the_openapi_document_and_the_router_agree() {
    let doc = documented();
    let routed: BTreeSet<(String, String)> = api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(doc.keys().cloned().collect::<BTreeSet<_>>(), routed);
    assert_eq!(body_media_types(), {
        let both = vec![
            "application/json".to_string(),
            "multipart/form-data".to_string(),
        ];
        let json = vec!["application/json".to_string()];
        BTreeMap::from([
            (("POST".to_string(), "/v1/people".to_string()), both.clone()),
            (
                ("PUT".to_string(), "/v1/people/{key}".to_string()),
                both.clone(),
            ),
            (("POST".to_string(), "/v1/searches".to_string()), both),
            (
                (
                    "POST".to_string(),
                    "/v1/exceptions/{tguid}/treatment".to_string(),
                ),
                json.clone(),
            ),
            (
                ("POST".to_string(), "/v1/reviews/{tguid}".to_string()),
                json,
            ),
        ])
    });
    // The server itself: every documented operation is answered, and on a documented path
    // every other method is 405.
    let api = Api::start(|_| {}).await;
    let paths: BTreeSet<&String> = doc.keys().map(|(_, p)| p).collect();
    for path in paths {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let r = api
                .req(method, &concrete(path), Some("application/json"), b"{}")
                .await;
            let documented = doc.contains_key(&(method.to_string(), path.to_string()));
            assert_eq!(r.status != 405, documented, "{method} {path}: {r:?}");
            assert_ne!(r.status, 404, "{method} {path}: {r:?}");
        }
    }
    let observed = tour(&api).await;
    for ((method, path), status) in observed {
        let statuses = &doc[&(method.clone(), path.clone())];
        assert!(
            statuses.contains(&status),
            "{method} {path} answered {status}, not documented ({statuses:?})"
        );
    }
    api.stop().await;
}

/// The service errors (by status) each operation can plausibly meet.
fn plausible(method: &str, template: &str) -> &'static [u16] {
    match (method, template) {
        ("POST", "/v1/people") => &[400, 409, 413, 503, 500],
        ("PUT", _) => &[400, 404, 409, 413, 503, 500],
        ("DELETE", _) => &[404, 409, 503, 500],
        ("POST", "/v1/searches") => &[400, 404, 413, 503, 500],
        ("POST", _) => &[400, 404, 409, 503, 500],
        ("GET", "/v1/people") => &[503, 500],
        _ => &[404, 503, 500],
    }
}

fn service_error(status: u16) -> ServiceError {
    let e = match status {
        400 => ServiceError::Invalid,
        404 => ServiceError::NotFound,
        409 => ServiceError::Conflict,
        413 => ServiceError::TooLarge,
        503 => ServiceError::Busy,
        _ => ServiceError::Internal,
    };
    e(format!("a {status}"))
}

/// Each operation through its answers (success, refusals, the service's errors); returns
/// `(method, template, status)` as observed.
async fn tour(api: &Api) -> Vec<((String, String), u16)> {
    let mut seen = Vec::new();
    for (method, template) in api::ROUTES {
        let path = concrete(template);
        let body = match *template {
            "/v1/people" => json!({"key": "alice", "image": b64(JPEG)}),
            "/v1/exceptions/{tguid}/treatment" => json!({"treatment": "RECOLLECT"}),
            "/v1/reviews/{tguid}" => json!({"approve": true}),
            _ => json!({"image": b64(JPEG)}),
        };
        let with_body = *method == "POST" || *method == "PUT";
        let errors = plausible(method, template)
            .iter()
            .map(|s| Some(service_error(*s)));
        let mut statuses = Vec::new();
        for e in std::iter::once(None).chain(errors) {
            api.fake.fail_with(e);
            let r = if with_body {
                api.json(method, &path, &body).await
            } else {
                api.req(method, &path, None, b"").await
            };
            statuses.push(r.status);
        }
        api.fake.fail_with(None);
        statuses.push(api.req_as(None, method, &path, None, b"").await.status);
        if with_body {
            statuses.push(
                api.req(method, &path, Some("text/plain"), b"x")
                    .await
                    .status,
            );
            statuses.push(
                api.req(method, &path, Some("application/json"), b"{")
                    .await
                    .status,
            );
        }
        for s in statuses {
            seen.push(((method.to_string(), template.to_string()), s));
        }
    }
    api.fake.calls();
    seen
}

// ---- the CLI ----

fn camgate(api: &Api, args: &[&str]) -> (i32, String) {
    let token_file = api.dir.path().join("api.token");
    let url = format!("http://{}", api.addr);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_camgate"))
        .args(["tx", "--api", &url, "--token-file"])
        .arg(&token_file)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    (out.status.code().unwrap_or(-1), stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tx_cli_mirrors_the_api() {
    let api = Arc::new(Api::start(|_| {}).await);
    let img = api.dir.path().join("face 1.jpg");
    std::fs::write(&img, JPEG).unwrap();
    let img = img.to_str().unwrap().to_owned();
    let run = |args: Vec<String>| {
        let api = api.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                camgate(&api, &a)
            })
            .await
            .unwrap()
        }
    };
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (code, out) = run(v(&[
        "enroll", "--key", "a b", "--attr", "dept=R&D", &img, &img,
    ]))
    .await;
    assert_eq!(
        (code, serde_json::from_str::<Value>(&out).unwrap()),
        (0, accepted("tx-1"))
    );
    let (code, _) = run(v(&["update", "a b", &img])).await;
    assert_eq!(code, 0);
    let (code, _) = run(v(&["search", "--key", "a b", &img])).await;
    assert_eq!(code, 0);
    let (code, out) = run(v(&["treat", "t/1", "RECOLLECT"])).await;
    assert_eq!(
        (code, serde_json::from_str::<Value>(&out).unwrap()),
        (0, accepted("t/1"))
    );
    let (code, _) = run(v(&["review", "t-2", "--reject"])).await;
    assert_eq!(code, 0);
    let (code, out) = run(v(&["show", "t-3"])).await;
    assert_eq!(
        (code, serde_json::from_str::<Value>(&out).unwrap()),
        (0, json!({"tguid": "t-3", "status": "ENROLLED"}))
    );
    assert_eq!(
        api.fake.calls(),
        vec![
            Call::Submit(Submission::Enroll {
                key: "a b".into(),
                images: vec![JPEG.to_vec(), JPEG.to_vec()],
                attributes: BTreeMap::from([("dept".into(), "R&D".into())]),
            }),
            Call::Submit(Submission::Update {
                key: "a b".into(),
                images: vec![JPEG.to_vec()]
            }),
            Call::Submit(Submission::Search {
                key: Some("a b".into()),
                images: vec![JPEG.to_vec()]
            }),
            Call::Treat("t/1".into(), "RECOLLECT".into()),
            Call::Review("t-2".into(), false),
            Call::Transaction("t-3".into()),
        ]
    );
    // An error answer: exit 1 with the API's JSON; usage errors: exit 2, nothing sent.
    api.fake
        .fail_with(Some(ServiceError::NotFound("no transaction t-4".into())));
    let (code, out) = run(v(&["show", "t-4"])).await;
    assert_eq!(code, 1);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"error": {"code": "not_found", "message": "no transaction t-4"}})
    );
    assert_eq!(run(v(&["enroll", &img])).await.0, 2, "no --key");
    assert_eq!(run(v(&["search", "/nonexistent.jpg"])).await.0, 2);
    assert_eq!(
        run(v(&["review", "t-5"])).await.0,
        2,
        "neither --approve nor --reject"
    );
    assert_eq!(api.fake.calls(), vec![Call::Transaction("t-4".into())]);
    let api = Arc::into_inner(api).expect("no other holder");
    api.stop().await;
}
