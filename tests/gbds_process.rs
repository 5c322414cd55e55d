//! Transactions through the real daemon process: the local API over HTTP, the shipped models,
//! the notifier POSTing to a real local endpoint that fails on purpose at times (500, 204, a
//! hang), and kill -9 while a transaction is in flight. Every notification a status change makes
//! must arrive, in order, with its exact body; a re-POST of the same one is allowed (counted).

#![cfg(all(feature = "vision", feature = "dev-tools"))]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use camgate::net::https::HttpsClient;
use common::endpoint::{Endpoint, Reply};
use hyper::Method;

const BIN: &str = env!("CARGO_BIN_EXE_camgate");
const TOKEN: &str = "test-token-0123456789";

struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn spawn(cfg: &Path, dir: &Path) -> Daemon {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))
        .unwrap();
    let child = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(cfg)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Daemon(child)
}

fn config(dir: &Path, api_port: u16, endpoint: &str) -> PathBuf {
    std::fs::write(dir.join("api.token"), TOKEN).unwrap();
    common::write_run_config(
        dir,
        &format!(
            "[vision]\nmodels_dir = \"{m}\"\n[gallery]\ndir = \"{d}/gallery\"\n[gbds]\ndir = \"{d}/gbds\"\n\
             [api]\nlisten = \"127.0.0.1:{api_port}\"\ntoken_file = \"{d}/api.token\"\n\
             [[notifier.endpoints]]\nurl = \"{endpoint}\"\nname = \"site\"\ntimeout_ms = 500\nretry_min_ms = 20\nretry_max_ms = 200\n",
            m = root().join("models").display(),
            d = dir.display(),
        ),
    )
}

/// A daemon on a free API port notifying `ep`, its API up.
async fn start(dir: &Path, ep: &Endpoint) -> (u16, PathBuf, Daemon) {
    let port = common::mosquitto::free_port();
    let cfg = config(dir, port, &ep.url);
    let daemon = spawn(&cfg, dir);
    api_up(port).await;
    (port, cfg, daemon)
}

/// The daemon's health file (what `camgate status` prints); null while there is none.
fn health(dir: &Path) -> serde_json::Value {
    std::fs::read(dir.join("health.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn client(port: u16) -> HttpsClient {
    HttpsClient::new(&format!("127.0.0.1:{port}"), None, Duration::from_secs(10))
}

async fn call(
    port: u16,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {TOKEN}");
    let body = body.map(|b| ("application/json", Bytes::from(b.to_string())));
    let a = client(port)
        .request_with(method, path, &[("authorization", &auth)], body, 1 << 20)
        .await
        .unwrap();
    (
        a.status,
        serde_json::from_slice(&a.body).unwrap_or_default(),
    )
}

async fn api_up(port: u16) {
    let t0 = Instant::now();
    while call_ok(port).await.is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the API never came up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn call_ok(port: u16) -> Option<()> {
    let auth = format!("Bearer {TOKEN}");
    let a = client(port)
        .request_with(
            Method::GET,
            "/v1/people",
            &[("authorization", &auth)],
            None,
            1 << 20,
        )
        .await
        .ok()?;
    (a.status == 200).then_some(())
}

fn image(name: &str) -> String {
    let bytes = std::fs::read(root().join("tests/fixtures/faces").join(name)).unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn submit(port: u16, path: &str, body: serde_json::Value) -> String {
    let (status, v) = call(port, Method::POST, path, Some(body)).await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["status"], "QUEUED");
    v["tguid"].as_str().unwrap().to_owned()
}

async fn until(port: u16, tguid: &str, want: &str) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let (status, v) = call(
            port,
            Method::GET,
            &format!("/v1/transactions/{tguid}"),
            None,
        )
        .await;
        if status == 200 && v["status"] == want && v.get("work").is_none() {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{tguid} never {want}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The notifications received, each once in order of first arrival, and the re-POSTs.
fn received(ep: &Endpoint) -> (Vec<(String, serde_json::Value)>, usize) {
    let mut firsts: Vec<(String, serde_json::Value)> = Vec::new();
    let mut again = 0;
    for r in ep.seen() {
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        match firsts.iter().find(|(k, _)| k == r.key()) {
            Some((_, b)) => {
                assert_eq!(*b, body, "a re-POST carries the same body");
                again += 1;
            }
            None => firsts.push((r.key().to_owned(), body)),
        }
    }
    (firsts, again)
}

fn body(op: &str, tguid: &str, status: &str) -> serde_json::Value {
    serde_json::json!({"operation": op, "tguid": tguid, "status": status})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_over_http_are_notified_in_order_through_failures_and_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    // The endpoint fails the first attempts (500, 204, a hang past the timeout), then takes all.
    let ep = Endpoint::start(
        &[Reply::Status(500), Reply::Status(204), Reply::Hang],
        Reply::Status(200),
    )
    .await;
    let (port, cfg, mut daemon) = start(dir.path(), &ep).await;

    let a = submit(
        port,
        "/v1/people",
        serde_json::json!({"key": "obama", "image": image("obama.jpg")}),
    )
    .await;
    until(port, &a, "ENROLLED").await;
    let b = submit(
        port,
        "/v1/people",
        serde_json::json!({"key": "barack", "images": [image("obama2.jpg")]}),
    )
    .await;
    until(port, &b, "EXCEPTION").await;
    let (status, v) = call(
        port,
        Method::POST,
        &format!("/v1/exceptions/{a}/treatment"),
        Some(serde_json::json!({"treatment": "SAME_FINGERS"})),
    )
    .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (409, &"conflict".into()),
        "{v}"
    );
    submit(
        port,
        &format!("/v1/exceptions/{b}/treatment"),
        serde_json::json!({"treatment": "MERGE_TRANSACTIONS"}),
    )
    .await;
    until(port, &b, "ENROLLED").await;

    // kill -9 with a search just accepted (durable: 202 came after the fsync).
    let c = submit(
        port,
        "/v1/searches",
        serde_json::json!({"image": image("obama2.jpg")}),
    )
    .await;
    daemon.0.kill().unwrap();
    daemon.0.wait().unwrap();
    drop(daemon);
    let _daemon = spawn(&cfg, dir.path());
    api_up(port).await;
    let v = until(port, &c, "MATCH").await;
    assert_eq!(v["candidates"][0]["key"], "obama", "{v}");

    let want = vec![
        body("ENROLL", &a, "ENROLLED"),
        body("ENROLL", &b, "EXCEPTION"),
        serde_json::json!({"operation": "TREAT_EXCEPTION", "tguid": b, "status": "OK", "treatment": "MERGE_TRANSACTIONS"}),
        body("ENROLL", &b, "ENROLLED"),
        body("SEARCH", &c, "MATCH"),
    ];
    let t0 = Instant::now();
    while received(&ep).0.len() < want.len() && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (firsts, again) = received(&ep);
    let bodies: Vec<_> = firsts.into_iter().map(|(_, b)| b).collect();
    assert_eq!(bodies, want);
    // The failed attempts were at the first notification, POSTed again each time.
    assert!(
        again >= 3,
        "the 500, the 204 and the hang each cost a re-POST: {again}"
    );
    // The health file (and so `camgate status`) shows the processor's queue, drained.
    let t0 = Instant::now();
    loop {
        let h = health(dir.path());
        if h["transactions"]["queued"] == 0 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "health: {h}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
}

/// kill -9 while a notification's POST is on its way (the endpoint holds it without answering):
/// after the restart that one is POSTed again and counted (`reposted` in the health file, so in
/// `camgate status`); the one delivered before is not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_cut_by_kill_9_is_sent_again_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let ep = Endpoint::start(&[Reply::Status(200)], Reply::Hang).await;
    let (port, cfg, mut daemon) = start(dir.path(), &ep).await;
    let a = submit(
        port,
        "/v1/people",
        serde_json::json!({"key": "obama", "image": image("obama.jpg")}),
    )
    .await;
    let b = submit(
        port,
        "/v1/people",
        serde_json::json!({"key": "biden", "image": image("biden.jpg")}),
    )
    .await;
    let t0 = Instant::now();
    while !ep.keys().iter().any(|k| k.starts_with(&b)) {
        assert!(t0.elapsed() < Duration::from_secs(120), "{:?}", ep.keys());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.0.kill().unwrap();
    daemon.0.wait().unwrap();
    drop(daemon);
    let cut = ep.keys().iter().filter(|k| k.starts_with(&b)).count();
    *ep.then.lock().unwrap() = Reply::Status(200);

    let daemon = spawn(&cfg, dir.path());
    let t0 = Instant::now();
    let health = loop {
        let h = health(dir.path());
        let site = &h["sinks"]["notifier:site"];
        // The killed process's last health file says delivered 1 too: wait for the new one's.
        if h["pid"] == daemon.0.id() && site["delivered"] == 1 {
            break site.clone();
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "health: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health["reposted"], 1, "{health}");
    let keys = ep.keys();
    assert_eq!(
        keys.iter().filter(|k| k.starts_with(&a)).count(),
        1,
        "delivered before the kill, not sent again: {keys:?}"
    );
    assert_eq!(
        keys.iter().filter(|k| k.starts_with(&b)).count(),
        cut + 1,
        "sent once more after the restart: {keys:?}"
    );
    let (firsts, _) = received(&ep);
    let bodies: Vec<_> = firsts.into_iter().map(|(_, b)| b).collect();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    forget_the_endpoints_cursor(&cfg, dir.path(), daemon);
    assert_eq!(bodies[0], body("ENROLL", &a, "ENROLLED"));
    assert_eq!(
        (&bodies[1]["operation"], &bodies[1]["tguid"]),
        (&"ENROLL".into(), &b.clone().into())
    );
}

/// `camgate outbox forget`: refused while the daemon holds the outbox; once it is stopped, the
/// endpoint's cursor (say it was removed from the config) goes.
fn forget_the_endpoints_cursor(cfg: &Path, dir: &Path, daemon: Daemon) {
    let forget = |name: &str| {
        std::process::Command::new(BIN)
            .args(["outbox", "forget", "--config"])
            .arg(cfg)
            .arg(name)
            .output()
            .unwrap()
    };
    let out = forget("notifier-site");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked by another process"), "{err}");
    drop(daemon);
    let out = forget("notifier-nowhere");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no consumer notifier-nowhere"));
    let out = forget("notifier-site");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.join("outbox/notifier-site.consumer").exists());
}
