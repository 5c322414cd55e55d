//! The notifier sink against real local HTTP endpoints (a tokio listener answering raw HTTP/1.1
//! as each test scripts it) and a real outbox in a temporary directory: exact bodies and order,
//! the only-200 rule, retries of the same notification, hanging and oversize endpoints beside a
//! healthy one, bearer token and signature headers, HTTPS trusted by a CA file or a pin, and a
//! restart of the sink.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
mod common;

use camgate::clock::{ManualClock, SharedClock};
use camgate::notice::{NoticeRecord, Notification};
use camgate::outbox::{Outbox, OutboxConfig};
use camgate::results::{FaceResult, Identity, ResultFace, ResultQuality, Timings, FACE_RESULT};
use camgate::sinks::notifier::{self, EndpointConfig};
use camgate::sinks::{SinkSnapshot, SinkStatus};
use common::endpoint::{Endpoint, Reply};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const NOW_MS: u64 = 1_796_280_000_123;

fn config(ep: &Endpoint, name: &str) -> EndpointConfig {
    EndpointConfig {
        name: Some(name.into()),
        timeout_ms: 300,
        retry_min_ms: 20,
        retry_max_ms: 60,
        ..EndpointConfig::new(&ep.url)
    }
}

fn notice(tguid: &str, seq: u32, status: &str) -> NoticeRecord {
    NoticeRecord::new(
        seq,
        NOW_MS - 1000,
        Notification {
            operation: "ENROLL".into(),
            tguid: tguid.into(),
            status: status.into(),
            treatment: None,
            uguid: None,
        },
    )
}

fn camera_event(id: i64) -> Bytes {
    Bytes::from(format!(
        r#"{{"camera":"c","source":"channel","received_at_ms":1,"sn":"S","event_id":{id},"event_type":"face_recog_event","event":{{"event_id":{id}}}}}"#
    ))
}

fn face_result(identified: Option<&str>) -> Bytes {
    let r = FaceResult {
        kind: FACE_RESULT.into(),
        camera: "door".into(),
        sn: "SN1".into(),
        event_id: 7,
        received_at_ms: NOW_MS - 500,
        processed_at_ms: NOW_MS - 400,
        model: "mtcnn+mobilefacenet-f16".into(),
        faces: vec![ResultFace {
            bbox: [0.0, 0.0, 112.0, 112.0],
            score: 0.99,
            landmarks: [[0.0, 0.0]; 5],
            quality: ResultQuality {
                size: 112.0,
                blur: 0.1,
                pose: 0.1,
                ok: true,
            },
            identity: identified.map(|k| Identity {
                key: k.into(),
                pguid: "p-1".into(),
                score: 0.8,
            }),
            uguid: None,
        }],
        timings_ms: Timings::default(),
        error: None,
    };
    serde_json::to_vec(&r).unwrap().into()
}

async fn open_outbox(dir: &Path) -> Outbox {
    Outbox::open(&OutboxConfig {
        dir: dir.to_owned(),
        ..OutboxConfig::default()
    })
    .await
    .unwrap()
}

async fn append(outbox: &Outbox, n: &NoticeRecord) {
    outbox
        .append(serde_json::to_vec(n).unwrap().into())
        .await
        .unwrap();
}

fn clock() -> SharedClock {
    ManualClock::new(NOW_MS)
}

struct Running {
    status: Arc<SinkStatus>,
    stop: CancellationToken,
    task: JoinHandle<Result<u64, notifier::NotifierError>>,
}

fn start(outbox: &Outbox, cfg: EndpointConfig, camera_matches: bool) -> Running {
    let status = Arc::new(SinkStatus::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(notifier::run(
        outbox.clone(),
        cfg,
        camera_matches,
        clock(),
        status.clone(),
        stop.clone(),
    ));
    Running { status, stop, task }
}

impl Running {
    fn snap(&self, outbox: &Outbox) -> SinkSnapshot {
        self.status.snapshot(&outbox.stats(), NOW_MS)
    }

    async fn stop(self) -> u64 {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the sink stops promptly")
            .unwrap()
            .unwrap()
    }
}

async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn exact_bodies_in_order_with_token_and_signature() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(&dir.path().join("outbox")).await;
    std::fs::write(dir.path().join("token"), "tok-123\n").unwrap();
    std::fs::write(dir.path().join("hmac"), "hmac-key-1\n").unwrap();
    let plain = Endpoint::start(&[], Reply::Status(200)).await;
    let rich = Endpoint::start(&[], Reply::Status(200)).await;

    append(&outbox, &notice("t-1", 0, "PENDING")).await;
    outbox.append(camera_event(1)).await.unwrap();
    let mut with_extra = notice("t-1", 1, "ENROLLED");
    with_extra.extra.insert("key".into(), "alice".into());
    append(&outbox, &with_extra).await;
    outbox.append(face_result(Some("alice"))).await.unwrap();
    outbox.append(face_result(None)).await.unwrap();
    let mut treat = notice("t-2", 0, "OK");
    treat.notification.operation = "TREAT_EXCEPTION".into();
    treat.notification.treatment = Some("SAME_FINGERS".into());
    append(&outbox, &treat).await;
    outbox.append(camera_event(2)).await.unwrap();

    let signed = EndpointConfig {
        token_file: Some(dir.path().join("token")),
        hmac_secret_file: Some(dir.path().join("hmac")),
        ..config(&plain, "plain")
    };
    let a = start(&outbox, signed, false);
    let b = start(
        &outbox,
        EndpointConfig {
            extra_fields: true,
            ..config(&rich, "rich")
        },
        true,
    );

    assert!(eventually(WAIT, || a.snap(&outbox).lag_events == 0).await);
    assert!(eventually(WAIT, || b.snap(&outbox).lag_events == 0).await);
    let bodies = |e: &Endpoint| e.seen().into_iter().map(|r| r.body).collect::<Vec<_>>();
    assert_eq!(
        bodies(&plain),
        [
            r#"{"operation":"ENROLL","tguid":"t-1","status":"PENDING"}"#,
            r#"{"operation":"ENROLL","tguid":"t-1","status":"ENROLLED"}"#,
            r#"{"operation":"TREAT_EXCEPTION","tguid":"t-2","status":"OK","treatment":"SAME_FINGERS"}"#,
        ]
    );
    assert_eq!(plain.keys(), ["t-1/0", "t-1/1", "t-2/0"]);
    let search = notifier::search_tguid("SN1/7");
    assert_eq!(
        bodies(&rich),
        [
            r#"{"operation":"ENROLL","tguid":"t-1","status":"PENDING"}"#.to_owned(),
            r#"{"operation":"ENROLL","tguid":"t-1","status":"ENROLLED","key":"alice"}"#.into(),
            format!(r#"{{"operation":"SEARCH","tguid":"{search}","status":"MATCH"}}"#),
            format!(r#"{{"operation":"SEARCH","tguid":"{search}","status":"NOT_MATCH"}}"#),
            r#"{"operation":"TREAT_EXCEPTION","tguid":"t-2","status":"OK","treatment":"SAME_FINGERS"}"#.into(),
        ]
    );

    let first = &plain.seen()[0];
    assert_eq!(
        (first.method.as_str(), first.path.as_str()),
        ("POST", "/gbds/notify")
    );
    assert_eq!(first.headers["content-type"], "application/json");
    assert_eq!(first.headers["authorization"], "Bearer tok-123");
    assert_eq!(first.headers["x-camgate-timestamp"], NOW_MS.to_string());
    // Python: hmac.new(b"hmac-key-1", b"1796280000123." + body, hashlib.sha256).hexdigest()
    assert_eq!(
        first.headers["x-camgate-signature"],
        "sha256=ae86d947e243d54e01fd9fe4155aa67a1179a33ce49b6df9bb82d8660e657adf"
    );
    for r in plain.seen() {
        let want = notifier::sign::signature(b"hmac-key-1", NOW_MS, r.body.as_bytes());
        assert_eq!(r.headers["x-camgate-signature"], want);
    }
    let unsigned = &rich.seen()[0];
    for h in [
        "authorization",
        "x-camgate-timestamp",
        "x-camgate-signature",
    ] {
        assert!(!unsigned.headers.contains_key(h), "{h} without its file");
    }

    let (sa, sb) = (a.snap(&outbox), b.snap(&outbox));
    assert_eq!((sa.delivered, sa.retries, sa.connected), (3, 0, true));
    assert_eq!((sb.delivered, sb.retries), (5, 0));
    assert_eq!(a.stop().await, 3);
    assert_eq!(b.stop().await, 5);
}

#[tokio::test]
async fn only_200_delivers_and_the_same_notification_is_retried_until_then() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path()).await;
    let failing = [500, 204, 201, 302, 404].map(Reply::Status);
    let ep = Endpoint::start(&failing, Reply::Status(200)).await;
    append(&outbox, &notice("t-1", 0, "PENDING")).await;
    append(&outbox, &notice("t-1", 1, "ENROLLED")).await;
    let run = start(&outbox, config(&ep, "retry"), false);

    assert!(eventually(WAIT, || run.snap(&outbox).delivered == 2).await);
    assert_eq!(
        ep.keys(),
        ["t-1/0", "t-1/0", "t-1/0", "t-1/0", "t-1/0", "t-1/0", "t-1/1"],
        "the second is sent only once the first got its 200"
    );
    let bodies: Vec<String> = ep.seen().into_iter().map(|r| r.body).collect();
    assert!(
        bodies[..6].iter().all(|b| b == &bodies[0]),
        "the same body each time"
    );
    let snap = run.snap(&outbox);
    assert_eq!((snap.retries, snap.lag_events), (5, 0));
    assert_eq!(
        snap.last_error.as_deref(),
        Some("t-1/0: answered HTTP 404 (only 200 counts as delivered)")
    );
    assert_eq!(run.stop().await, 2);
}

#[tokio::test]
async fn hanging_and_oversize_endpoints_do_not_delay_a_healthy_one() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path()).await;
    let hanging = Endpoint::start(&[], Reply::Hang).await;
    let oversize = Endpoint::start(&[], Reply::Oversize(100_000)).await;
    let healthy = Endpoint::start(&[], Reply::Status(200)).await;
    let small = EndpointConfig {
        max_answer_bytes: 1024,
        ..config(&oversize, "oversize")
    };
    let runs = [
        start(&outbox, config(&hanging, "hanging"), false),
        start(&outbox, small, false),
        start(&outbox, config(&healthy, "healthy"), false),
    ];
    let t0 = Instant::now();
    for i in 0..5 {
        append(&outbox, &notice(&format!("t-{i}"), 0, "ENROLLED")).await;
    }
    assert!(eventually(WAIT, || runs[2].snap(&outbox).delivered == 5).await);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "healthy endpoint took {:?}",
        t0.elapsed()
    );
    assert_eq!(
        healthy.keys(),
        ["t-0/0", "t-1/0", "t-2/0", "t-3/0", "t-4/0"]
    );

    // Each keeps trying the first notification only (the hanging one after each timeout).
    assert!(eventually(WAIT, || runs[0].snap(&outbox).retries >= 2).await);
    assert!(eventually(WAIT, || runs[1].snap(&outbox).retries >= 2).await);
    for (run, ep, error) in [
        (&runs[0], &hanging, "no answer within 300ms"),
        (&runs[1], &oversize, "answer larger than 1024 bytes"),
    ] {
        let keys = ep.keys();
        assert!(
            keys.len() >= 2 && keys.iter().all(|k| k == "t-0/0"),
            "{keys:?}"
        );
        let snap = run.snap(&outbox);
        assert_eq!(
            (snap.delivered, snap.lag_events, snap.connected),
            (0, 5, false)
        );
        assert_eq!(snap.last_error, Some(format!("t-0/0: {error}")));
    }
    let [a, b, c] = runs;
    assert_eq!(
        a.stop().await,
        0,
        "a hanging POST does not hold up the stop"
    );
    assert_eq!(b.stop().await, 0);
    assert_eq!(c.stop().await, 5);
}

#[tokio::test]
async fn a_restarted_sink_delivers_the_rest_without_losing_any() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path()).await;
    let two_ok = [Reply::Status(200), Reply::Status(200)];
    let ep = Endpoint::start(&two_ok, Reply::Status(503)).await;
    for seq in 0..3 {
        append(&outbox, &notice("t-1", seq, "PENDING")).await;
    }
    let run = start(&outbox, config(&ep, "restart"), false);
    assert!(eventually(WAIT, || run.snap(&outbox).retries >= 1).await);
    assert_eq!(run.stop().await, 2);
    outbox.shutdown().await.unwrap();
    drop(outbox);

    // The endpoint is back, the gateway too, with more to send.
    *ep.then.lock().unwrap() = Reply::Status(200);
    let outbox = open_outbox(dir.path()).await;
    for seq in 3..5 {
        append(&outbox, &notice("t-1", seq, "PENDING")).await;
    }
    let run = start(&outbox, config(&ep, "restart"), false);
    assert!(eventually(WAIT, || run.snap(&outbox).delivered == 3).await);
    let mut keys = ep.keys();
    keys.dedup();
    assert_eq!(keys, ["t-1/0", "t-1/1", "t-1/2", "t-1/3", "t-1/4"]);
    let all = ep.keys();
    assert_eq!(
        all.iter()
            .filter(|k| *k == "t-1/0" || *k == "t-1/1")
            .count(),
        2,
        "delivered ones are not sent again after a clean stop: {all:?}"
    );
    assert_eq!(run.snap(&outbox).lag_events, 0);
    assert_eq!(run.stop().await, 3);
}

/// HTTPS endpoints: trusted by a CA file or by a pinned fingerprint, both delivered; one whose
/// certificate is not the trusted one is never sent a body, and says why in its status.
#[cfg(feature = "dev-tools")]
#[tokio::test]
async fn https_endpoints_with_a_ca_file_or_a_pin_and_one_not_trusted() {
    use camgate::dev::sim::SimCert;
    use camgate::net::tls::TlsConfig;
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(&dir.path().join("outbox")).await;
    let cert = SimCert::generate().unwrap();
    let other = SimCert::generate().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &cert.cert_pem).unwrap();
    let ep = Endpoint::start_tls(&[], Reply::Status(200), cert.server_config(None).unwrap()).await;
    assert!(ep.url.starts_with("https://127.0.0.1:"), "{}", ep.url);
    append(&outbox, &notice("t-1", 0, "ENROLLED")).await;
    append(&outbox, &notice("t-2", 0, "MATCH")).await;

    let by_ca = start(
        &outbox,
        EndpointConfig {
            tls: Some(TlsConfig {
                ca_file: Some(dir.path().join("ca.pem")),
                ..TlsConfig::default()
            }),
            ..config(&ep, "by-ca")
        },
        false,
    );
    let by_pin = start(
        &outbox,
        EndpointConfig {
            tls: Some(TlsConfig {
                fingerprint_sha256: Some(cert.fingerprint()),
                ..TlsConfig::default()
            }),
            ..config(&ep, "by-pin")
        },
        false,
    );
    let wrong = start(
        &outbox,
        EndpointConfig {
            tls: Some(TlsConfig {
                fingerprint_sha256: Some(other.fingerprint()),
                ..TlsConfig::default()
            }),
            ..config(&ep, "wrong-pin")
        },
        false,
    );
    assert!(eventually(WAIT, || by_ca.snap(&outbox).delivered == 2).await);
    assert!(eventually(WAIT, || by_pin.snap(&outbox).delivered == 2).await);
    assert!(eventually(WAIT, || wrong.snap(&outbox).retries >= 2).await);
    let mut keys = ep.keys();
    keys.sort();
    assert_eq!(
        keys,
        ["t-1/0", "t-1/0", "t-2/0", "t-2/0"],
        "each trusted endpoint POSTed both, the untrusted one none"
    );
    let w = wrong.snap(&outbox);
    assert_eq!((w.delivered, w.connected), (0, false));
    let err = w.last_error.unwrap_or_default();
    assert!(err.contains("t-1/0") && err.contains("TLS"), "{err}");
    by_ca.stop().await;
    by_pin.stop().await;
    wrong.stop().await;
}
