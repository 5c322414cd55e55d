//! The HTTP hook path end to end: the simulator posts real multipart callbacks over loopback to
//! the real receiver, intake and on-disk outbox.

mod common;

use std::sync::Arc;
use std::time::Duration;

use camgate::dev::sim::hook::{HookPoster, PostKind};
use camgate::event::StoredEnvelope;
use camgate::hook::{HookCamera, Receiver, ReceiverConfig};
use camgate::intake::Intake;
use camgate::outbox::{Outbox, OutboxConfig};
use common::*;
use tokio_util::sync::CancellationToken;

const SERIAL: &str = "SS101D8BS00080";

struct Hook {
    recv: Receiver,
    stop: CancellationToken,
    outbox: Outbox,
    dir: tempfile::TempDir,
}

impl Hook {
    fn url(&self) -> String {
        format!("http://{}/camgate/hook", self.recv.local_addr())
    }

    fn poster(&self) -> HookPoster {
        HookPoster::new(&self.url(), APP_ID, SECRET, SERIAL).unwrap()
    }

    fn outbox_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("outbox")
    }

    async fn stop(self) -> tempfile::TempDir {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.recv.join())
            .await
            .expect("receiver stops");
        self.outbox.shutdown().await.unwrap();
        self.dir
    }
}

async fn start_hook(outbox_max_bytes: Option<u64>, cfg: ReceiverConfig) -> Hook {
    let dir = tempfile::tempdir().unwrap();
    let mut oc = OutboxConfig {
        dir: dir.path().join("outbox"),
        ..OutboxConfig::default()
    };
    if let Some(max) = outbox_max_bytes {
        oc.max_bytes = max;
        oc.segment_bytes = max / 4;
    }
    let outbox = Outbox::open(&oc).await.unwrap();
    let intake = Intake::new(outbox.clone(), Duration::from_secs(86_400), 10_000);
    let stop = CancellationToken::new();
    let cams = vec![HookCamera {
        name: Arc::from("hook-cam"),
        app_id: APP_ID.into(),
        secret: SECRET.into(),
        sn: None,
    }];
    let recv = Receiver::start(cfg, cams, intake, stop.clone())
        .await
        .unwrap();
    Hook {
        recv,
        stop,
        outbox,
        dir,
    }
}

fn loopback() -> ReceiverConfig {
    ReceiverConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ReceiverConfig::default()
    }
}

#[tokio::test]
async fn a_valid_callback_is_stored_before_200() {
    let h = start_hook(None, loopback()).await;
    let p = h.poster();
    assert_eq!(p.post(PostKind::Valid).await.unwrap(), 200);
    // 200 means durable: the record is on disk now, not eventually.
    let records = Outbox::dump(&h.outbox_dir()).unwrap();
    assert_eq!(records.len(), 1);
    let env: StoredEnvelope = serde_json::from_slice(&records[0].data).unwrap();
    assert_eq!(env.camera, "hook-cam");
    assert_eq!(env.sn, SERIAL);
    assert_eq!(env.event_id.0, 1);
    assert!(env.event.get().contains("\"detect_type\":3"));
    let c = h.recv.counters().snapshot();
    assert_eq!((c.accepted, c.duplicates), (1, 0));
    assert!(c.rejected.is_empty(), "{c:?}");
    // The same event again (a camera re-sending, freshly signed) is acked, not stored twice.
    assert_eq!(p.post_event(&p.event_json(1)).await.unwrap(), 200);
    assert_eq!(h.recv.counters().snapshot().duplicates, 1);
    let dir = h.stop().await;
    assert_eq!(stored_events(&dir.path().join("outbox")).len(), 1);
}

#[tokio::test]
async fn every_bad_callback_gets_its_status_and_is_counted() {
    let h = start_hook(None, loopback()).await;
    let p = h.poster();
    assert_eq!(p.post(PostKind::Valid).await.unwrap(), 200);
    let cases = [
        (PostKind::Forged, 401, "forged"),
        (PostKind::Replay, 401, "replayed"),
        (PostKind::Unsigned, 401, "unsigned"),
        (PostKind::Skewed(-1000), 401, "outside_window"),
        (PostKind::Skewed(1000), 401, "outside_window"),
        (PostKind::Truncated, 400, "truncated"),
        (PostKind::MissingField, 400, "missing_field"),
        (PostKind::NotJson, 400, "payload"),
        (PostKind::WrongContentType, 400, "content_type"),
        (PostKind::Oversize(300 * 1024), 413, "too_large"),
    ];
    for (kind, status, _) in &cases {
        assert_eq!(p.post(kind.clone()).await.unwrap(), *status, "{kind:?}");
    }
    // An app_id no hook camera has.
    let stranger = HookPoster::new(&h.url(), "other-app", SECRET, SERIAL).unwrap();
    assert_eq!(stranger.post(PostKind::Valid).await.unwrap(), 401);

    let c = h.recv.counters();
    for reason in [
        "forged",
        "replayed",
        "unsigned",
        "truncated",
        "missing_field",
        "payload",
        "content_type",
        "too_large",
        "unknown_app_id",
    ] {
        assert_eq!(c.rejected(reason), 1, "{reason}: {:?}", c.snapshot());
    }
    assert_eq!(c.rejected("outside_window"), 2);
    assert_eq!(c.rejected_total(), cases.len() as u64 + 1);
    assert_eq!(c.snapshot().accepted, 1);
    let statuses: Vec<u16> = p.statuses().iter().map(|(_, s)| *s).collect();
    assert_eq!(statuses.len(), cases.len() + 1);
    let dir = h.stop().await;
    // Only the valid callback reached the outbox.
    assert_eq!(
        stored_events(&dir.path().join("outbox")),
        vec![(SERIAL.to_string(), 1)]
    );
}

#[tokio::test]
async fn oversize_declared_or_streamed_is_413() {
    let cfg = ReceiverConfig {
        max_body_bytes: 4096,
        ..loopback()
    };
    let h = start_hook(None, cfg).await;
    let p = h.poster();
    assert_eq!(p.post(PostKind::Oversize(5000)).await.unwrap(), 413);
    // Just under the bound still passes.
    assert_eq!(p.post(PostKind::Oversize(3000)).await.unwrap(), 200);
    assert_eq!(h.recv.counters().rejected("too_large"), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_full_outbox_answers_503_and_loses_nothing() {
    // A tiny outbox with no consumer fills after a few events.
    let h = start_hook(Some(8192), loopback()).await;
    let p = h.poster();
    let mut ok = 0u64;
    let mut full = 0u64;
    for _ in 0..200 {
        match p.post(PostKind::Valid).await.unwrap() {
            200 => ok += 1,
            503 => {
                full += 1;
                if full >= 3 {
                    break;
                }
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(ok >= 3, "some events fit before the outbox filled ({ok})");
    // The camera re-sending the very request answered 503 is tried again (503 while still
    // full), not refused as a replay: each 503 allows one more identical re-send.
    assert_eq!(p.post(PostKind::Replay).await.unwrap(), 503);
    assert_eq!(p.post(PostKind::Replay).await.unwrap(), 503);
    assert_eq!(h.recv.counters().rejected("replayed"), 0);
    full += 2;
    assert_eq!(full, 5, "the outbox filled");
    let c = h.recv.counters().snapshot();
    assert_eq!(c.accepted, ok);
    assert_eq!(c.rejected.get("outbox_full").copied(), Some(5));
    let dir = h.stop().await;
    // Every event answered 200 is stored, once; none answered 503 is (the camera keeps those).
    let stored = stored_events(&dir.path().join("outbox"));
    assert_eq!(stored.len() as u64, ok);
    let ids: Vec<i64> = stored.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids, (1..=ok as i64).collect::<Vec<_>>());
}

#[tokio::test]
async fn concurrent_posters_beyond_the_concurrency_bound_all_get_stored() {
    let cfg = ReceiverConfig {
        max_concurrency: 2,
        ..loopback()
    };
    let h = start_hook(None, cfg).await;
    let p = Arc::new(h.poster());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let p = p.clone();
        tasks.spawn(async move { p.post(PostKind::Valid).await.unwrap() });
    }
    while let Some(s) = tasks.join_next().await {
        assert_eq!(s.unwrap(), 200);
    }
    assert_eq!(h.recv.counters().snapshot().accepted, 40);
    let dir = h.stop().await;
    assert_eq!(stored_events(&dir.path().join("outbox")).len(), 40);
}

#[tokio::test]
async fn the_same_event_by_channel_and_by_hook_is_stored_once() {
    use camgate::config::{CameraConfig, CameraMode};
    use camgate::daemon::Daemon;
    use camgate::dev::sim::SimCamera;
    use camgate::net::tls::TlsConfig;

    // The channel camera publishes events 1..=3 of its serial.
    let mut sc = sim_config(50.0);
    sc.max_events = Some(3);
    let sim = SimCamera::start(sc).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut gate = CameraConfig::new(
        "gate",
        "127.0.0.1:443",
        "hook-app",
        "hook-secret",
        TlsConfig {
            insecure_skip_verify: true,
            ..TlsConfig::default()
        },
    );
    gate.mode = CameraMode::Hook;
    let mut cfg = config_in(dir.path(), vec![camera_for(&sim, "door-1"), gate]);
    cfg.hook.listen = "127.0.0.1:0".into();
    // Where the camera is told to post (the subscription client fails to reach 127.0.0.1:443
    // here and keeps retrying in the background; that is not what this test is about).
    cfg.hook.callback_url = Some("http://127.0.0.1:8080/".into());
    cfg.validate().unwrap();
    let d = Daemon::start(&cfg).await.unwrap();
    assert!(
        eventually(Duration::from_secs(20), || sim.totals().acked >= 3).await,
        "{:?}",
        sim.totals()
    );
    let url = format!("http://{}/", d.hook_addr().expect("receiver runs"));
    // The same serial's events by the hook: 1..=3 already came by the channel, 4 is new.
    let p = HookPoster::new(&url, "hook-app", "hook-secret", "FS101D8BS00106").unwrap();
    for id in 1..=4 {
        assert_eq!(
            p.post_event(&p.event_json(id)).await.unwrap(),
            200,
            "event {id}"
        );
    }
    // The channel camera's secret does not sign for the hook camera's app.
    let wrong = HookPoster::new(&url, "hook-app", SECRET, "FS101D8BS00106").unwrap();
    assert_eq!(wrong.post(PostKind::Valid).await.unwrap(), 401);
    let counters = d.hook_counters().unwrap().snapshot();
    assert_eq!((counters.accepted, counters.duplicates), (1, 3));
    assert_eq!(counters.rejected.get("forged").copied(), Some(1));
    d.shutdown(Duration::from_secs(10)).await.unwrap();
    let mut stored = stored_events(&dir.path().join("outbox"));
    stored.sort();
    let want: Vec<(String, i64)> = (1..=4).map(|i| ("FS101D8BS00106".to_string(), i)).collect();
    assert_eq!(
        stored, want,
        "each event stored once, whichever path brought it"
    );
}

#[tokio::test]
async fn shutdown_stops_the_receiver() {
    let h = start_hook(None, loopback()).await;
    let url = h.url();
    let p = h.poster();
    assert_eq!(p.post(PostKind::Valid).await.unwrap(), 200);
    h.stop().await;
    let p = HookPoster::new(&url, APP_ID, SECRET, SERIAL).unwrap();
    assert!(
        p.post(PostKind::Valid).await.is_err(),
        "nothing listens after shutdown"
    );
}

/// Sends raw bytes, half-closes, and returns the status line's code (None if no answer).
async fn raw_exchange(
    addr: std::net::SocketAddr,
    bytes: &[u8],
    pause: Option<Duration>,
) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if let Some(p) = pause {
        tokio::time::sleep(p).await;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test]
async fn chunked_oversize_is_413_and_a_stalled_body_is_408() {
    let cfg = ReceiverConfig {
        max_body_bytes: 2048,
        request_timeout: Duration::from_millis(500),
        ..loopback()
    };
    let h = start_hook(None, cfg).await;
    let addr = h.recv.local_addr();
    // No Content-Length: the bound is enforced while streaming.
    let mut req = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..3 {
        req.extend_from_slice(b"400\r\n");
        req.extend_from_slice(&[b'a'; 0x400]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw_exchange(addr, &req, None).await, Some(413));
    // A body announced but never sent: answered 408 once the request time is up.
    let stalled = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000\r\n\r\n--b\r\n";
    assert_eq!(raw_exchange(addr, stalled, None).await, Some(408));
    // Not POST.
    assert_eq!(
        raw_exchange(
            addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            None
        )
        .await,
        Some(405)
    );
    let c = h.recv.counters();
    assert_eq!(
        (
            c.rejected("too_large"),
            c.rejected("timeout"),
            c.rejected("method")
        ),
        (1, 1, 1)
    );
    let dir = h.stop().await;
    assert!(stored_events(&dir.path().join("outbox")).is_empty());
}

#[tokio::test]
async fn the_client_reconciles_subscriptions_and_the_camera_posts_to_them() {
    use camgate::config::{CameraConfig, CameraMode};
    use camgate::dev::sim::hook::SimHookApi;
    use camgate::hook::client::{HookClient, HookClientError};
    use camgate::net::tls::TlsConfig;

    let h = start_hook(None, loopback()).await;
    let stop = CancellationToken::new();
    let api = SimHookApi::start(APP_ID, SECRET, stop.clone())
        .await
        .unwrap();
    let tls = TlsConfig {
        fingerprint_sha256: Some(api.fingerprint()),
        ..TlsConfig::default()
    };
    let mut cam = CameraConfig::new("gate", &api.addr.to_string(), APP_ID, SECRET, tls.clone());
    cam.mode = CameraMode::Hook;
    let client = HookClient::new(&cam).unwrap();
    let callback = h.url();
    assert!(client.query().await.unwrap().is_empty());
    // Left over from an earlier configuration: an event no longer wanted, and another URL.
    api.subscribe("face_recog_event", &callback);
    api.subscribe("face_recog_event", "http://10.9.9.9:8000/other");
    let wanted = vec!["dynamic_detect_event".to_string()];
    let out = client.reconcile(&wanted, &callback).await.unwrap();
    assert_eq!(out.added, wanted);
    assert_eq!(out.deleted, vec!["face_recog_event".to_string()]);
    let subs = api.subscriptions();
    assert_eq!(subs.len(), 1, "{subs:?}");
    assert_eq!(subs["dynamic_detect_event"], vec![callback.clone()]);
    // Nothing to do the second time.
    let again = client.reconcile(&wanted, &callback).await.unwrap();
    assert!(again.added.is_empty() && again.deleted.is_empty());
    let q = client.query().await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].http_callback, vec![callback.clone()]);

    // The camera posts to what was subscribed; camgate stores it.
    let poster = api.poster("dynamic_detect_event", SERIAL).unwrap().unwrap();
    assert_eq!(poster.post(PostKind::Valid).await.unwrap(), 200);

    // Non-zero codes are typed errors naming the code.
    api.set_refuse(Some(310));
    match client.add(&wanted, &callback).await {
        Err(HookClientError::Code {
            op: "add",
            code: 310,
        }) => {}
        other => panic!("{other:?}"),
    }
    api.set_refuse(None);
    let mut wrong = cam.clone();
    wrong.secret = Some("wrong".into());
    match HookClient::new(&wrong).unwrap().query().await {
        Err(HookClientError::Code {
            op: "query",
            code: 2,
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(api.sign_rejected() >= 1);
    // Another certificate than the pinned one: no TLS session.
    let mut other_pin = cam.clone();
    other_pin.tls.fingerprint_sha256 = Some(["AB"; 32].join(":"));
    assert!(matches!(
        HookClient::new(&other_pin).unwrap().query().await,
        Err(HookClientError::Connect { .. })
    ));
    stop.cancel();
    let dir = h.stop().await;
    assert_eq!(stored_events(&dir.path().join("outbox")).len(), 1);
}

#[tokio::test]
async fn the_daemon_subscribes_hook_cameras_at_start_up() {
    use camgate::config::{CameraConfig, CameraMode};
    use camgate::daemon::Daemon;
    use camgate::dev::sim::hook::SimHookApi;
    use camgate::net::tls::TlsConfig;

    let stop = CancellationToken::new();
    let api = SimHookApi::start(APP_ID, SECRET, stop.clone())
        .await
        .unwrap();
    api.subscribe("face_recog_event", "http://10.9.9.9/stale");
    let tls = TlsConfig {
        fingerprint_sha256: Some(api.fingerprint()),
        ..TlsConfig::default()
    };
    let mut gate = CameraConfig::new("gate", &api.addr.to_string(), APP_ID, SECRET, tls);
    gate.mode = CameraMode::Hook;
    gate.events = vec!["dynamic_detect_event".into()];
    gate.callback_url = Some("http://127.0.0.1:18080/camgate/hook".into());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path(), vec![gate]);
    cfg.hook.listen = "127.0.0.1:0".into();
    cfg.validate().unwrap();
    let d = Daemon::start(&cfg).await.unwrap();
    assert!(d.cameras.is_empty(), "no channel session for a hook camera");
    let want = "http://127.0.0.1:18080/camgate/hook".to_string();
    assert!(
        eventually(Duration::from_secs(10), || {
            api.subscriptions().get("dynamic_detect_event") == Some(&vec![want.clone()])
        })
        .await,
        "{:?}",
        api.subscriptions()
    );
    // Another client's subscription to an event this camera does not want is left alone
    // (only events posted to camgate's URL are managed).
    assert!(api.subscriptions().contains_key("face_recog_event"));
    d.shutdown(Duration::from_secs(10)).await.unwrap();
    // Subscriptions stay in place over a shutdown.
    assert!(api.subscriptions().contains_key("dynamic_detect_event"));
    stop.cancel();
}

#[tokio::test]
async fn cameras_sharing_an_app_id_are_told_apart_by_their_secret() {
    let dir = tempfile::tempdir().unwrap();
    let oc = OutboxConfig {
        dir: dir.path().join("outbox"),
        ..OutboxConfig::default()
    };
    let outbox = Outbox::open(&oc).await.unwrap();
    let intake = Intake::new(outbox.clone(), Duration::from_secs(86_400), 10_000);
    let stop = CancellationToken::new();
    let cam = |name: &str, secret: &str| HookCamera {
        name: Arc::from(name),
        app_id: APP_ID.into(),
        secret: secret.into(),
        sn: None,
    };
    let recv = Receiver::start(
        loopback(),
        vec![cam("east", "secret-east"), cam("west", "secret-west")],
        intake,
        stop.clone(),
    )
    .await
    .unwrap();
    let url = format!("http://{}/", recv.local_addr());
    let west = HookPoster::new(&url, APP_ID, "secret-west", "WEST0001").unwrap();
    let east = HookPoster::new(&url, APP_ID, "secret-east", "EAST0001").unwrap();
    let neither = HookPoster::new(&url, APP_ID, "secret-north", "NORTH001").unwrap();
    assert_eq!(west.post(PostKind::Valid).await.unwrap(), 200);
    assert_eq!(east.post(PostKind::Valid).await.unwrap(), 200);
    assert_eq!(neither.post(PostKind::Valid).await.unwrap(), 401);
    assert_eq!(recv.counters().rejected("forged"), 1);
    stop.cancel();
    recv.join().await;
    outbox.shutdown().await.unwrap();
    let records = Outbox::dump(&dir.path().join("outbox")).unwrap();
    let by: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            let e: StoredEnvelope = serde_json::from_slice(&r.data).unwrap();
            (e.camera.into_owned(), e.sn.into_owned())
        })
        .collect();
    assert_eq!(
        by,
        vec![
            ("west".to_string(), "WEST0001".to_string()),
            ("east".to_string(), "EAST0001".to_string())
        ]
    );
}

#[tokio::test]
async fn a_payload_sn_of_another_camera_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let oc = OutboxConfig {
        dir: dir.path().join("outbox"),
        ..OutboxConfig::default()
    };
    let outbox = Outbox::open(&oc).await.unwrap();
    let intake = Intake::new(outbox.clone(), Duration::from_secs(86_400), 10_000);
    let stop = CancellationToken::new();
    let cam = |name: &str, secret: &str, sn: Option<&str>| HookCamera {
        name: Arc::from(name),
        app_id: APP_ID.into(),
        secret: secret.into(),
        sn: sn.map(String::from),
    };
    // east and west share the developer app's secret; south has its own; legacy has no sn.
    let cams = vec![
        cam("east", "shared", Some("EAST0001")),
        cam("west", "shared", Some("WEST0001")),
        cam("south", "secret-south", Some("SOUTH001")),
        cam("legacy", "secret-legacy", None),
    ];
    let recv = Receiver::start(loopback(), cams, intake, stop.clone())
        .await
        .unwrap();
    let url = format!("http://{}/", recv.local_addr());
    let post = |secret: &str, sn: &str| HookPoster::new(&url, APP_ID, secret, sn).unwrap();
    // With a shared secret, the payload's sn picks the camera among those it verifies for.
    assert_eq!(
        post("shared", "WEST0001")
            .post(PostKind::Valid)
            .await
            .unwrap(),
        200
    );
    assert_eq!(
        post("shared", "EAST0001")
            .post(PostKind::Valid)
            .await
            .unwrap(),
        200
    );
    // south's secret, east's serial: south is posting in east's name.
    let spoof = post("secret-south", "EAST0001");
    assert_eq!(spoof.post(PostKind::Valid).await.unwrap(), 401);
    // The shared secret, but a serial no camera of that secret has.
    assert_eq!(
        post("shared", "NOBODY01")
            .post(PostKind::Valid)
            .await
            .unwrap(),
        401
    );
    // No sn configured: any serial is taken, as before.
    assert_eq!(
        post("secret-legacy", "ANY00001")
            .post(PostKind::Valid)
            .await
            .unwrap(),
        200
    );
    let c = recv.counters().snapshot();
    assert_eq!(c.rejected.get("sn_mismatch").copied(), Some(2), "{c:?}");
    assert_eq!(c.accepted, 3);
    assert_eq!(c.rejected.values().sum::<u64>(), 2);
    stop.cancel();
    recv.join().await;
    outbox.shutdown().await.unwrap();
    let by: Vec<(String, String)> = Outbox::dump(&dir.path().join("outbox"))
        .unwrap()
        .iter()
        .map(|r| {
            let e: StoredEnvelope = serde_json::from_slice(&r.data).unwrap();
            (e.camera.into_owned(), e.sn.into_owned())
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("west", "WEST0001"),
        ("east", "EAST0001"),
        ("legacy", "ANY00001"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(by, want);
}

fn hook_camera_on(
    api: &camgate::dev::sim::hook::SimHookApi,
    name: &str,
) -> camgate::config::CameraConfig {
    use camgate::net::tls::TlsConfig;
    let tls = TlsConfig {
        fingerprint_sha256: Some(api.fingerprint()),
        ..TlsConfig::default()
    };
    let mut c =
        camgate::config::CameraConfig::new(name, &api.addr.to_string(), APP_ID, SECRET, tls);
    c.mode = camgate::config::CameraMode::Hook;
    c.events = vec!["dynamic_detect_event".into()];
    c.backoff_min = 1;
    c.backoff_max = 2;
    c
}

#[tokio::test]
async fn unsubscribe_on_shutdown_deletes_our_subscriptions_in_bounded_time() {
    use camgate::daemon::Daemon;
    use camgate::dev::sim::hook::SimHookApi;

    let stop = CancellationToken::new();
    let api = SimHookApi::start(APP_ID, SECRET, stop.clone())
        .await
        .unwrap();
    // Another client's subscription to another event: not ours, left alone.
    api.subscribe("face_recog_event", "http://10.9.9.9/other");
    let mut gate = hook_camera_on(&api, "gate");
    let want = "http://127.0.0.1:18081/camgate/hook".to_string();
    gate.callback_url = Some(want.clone());
    // A second hook camera that accepts TCP but never answers: it must not hold up the
    // shutdown (nor the unsubscribe of the camera that works).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut mute = hook_camera_on(&api, "mute");
    mute.address = silent.local_addr().unwrap().to_string();
    mute.connect_timeout = 60;
    mute.callback_url = Some(want.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path(), vec![gate, mute]);
    cfg.hook.listen = "127.0.0.1:0".into();
    cfg.hook.unsubscribe_on_shutdown = true;
    cfg.validate().unwrap();
    let d = Daemon::start(&cfg).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            api.subscriptions().get("dynamic_detect_event") == Some(&vec![want.clone()])
        })
        .await,
        "{:?}",
        api.subscriptions()
    );
    let t0 = std::time::Instant::now();
    d.shutdown(Duration::from_secs(10)).await.unwrap();
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    let subs = api.subscriptions();
    assert!(!subs.contains_key("dynamic_detect_event"), "{subs:?}");
    assert_eq!(
        subs["face_recog_event"],
        vec!["http://10.9.9.9/other".to_string()]
    );
    stop.cancel();
}

/// A CA and a server certificate for 127.0.0.1 issued by it, as PEM files in `dir`:
/// (ca, cert, key).
fn issue_certs(
    dir: &std::path::Path,
    tag: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let paths = (
        dir.join(format!("{tag}-ca.pem")),
        dir.join(format!("{tag}-cert.pem")),
        dir.join(format!("{tag}-key.pem")),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    paths
}

#[tokio::test]
async fn the_receiver_serves_https() {
    use camgate::hook::receiver::server_tls;
    use camgate::net::tls::TlsConfig;

    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = issue_certs(certs.path(), "recv");
    let (other_ca, _, _) = issue_certs(certs.path(), "other");
    assert!(server_tls(&certs.path().join("missing.pem"), &key).is_err());
    let cfg = ReceiverConfig {
        tls: Some(server_tls(&cert, &key).unwrap()),
        ..loopback()
    };
    let h = start_hook(None, cfg).await;
    let https = format!(
        "https://127.0.0.1:{}/camgate/hook",
        h.recv.local_addr().port()
    );
    let trust = |ca: &std::path::Path| TlsConfig {
        ca_file: Some(ca.to_path_buf()),
        ..TlsConfig::default()
    };
    let p = HookPoster::with_tls(&https, APP_ID, SECRET, SERIAL, Some(&trust(&ca))).unwrap();
    assert_eq!(p.post(PostKind::Valid).await.unwrap(), 200);
    assert_eq!(p.post(PostKind::Replay).await.unwrap(), 401);
    assert_eq!(p.post(PostKind::Forged).await.unwrap(), 401);
    // A camera trusting another CA does not talk to this receiver.
    let stranger =
        HookPoster::with_tls(&https, APP_ID, SECRET, SERIAL, Some(&trust(&other_ca))).unwrap();
    assert!(stranger.post(PostKind::Valid).await.is_err());
    // Plain HTTP to the HTTPS port gets no answer, and is counted.
    let plain = HookPoster::new(&h.url(), APP_ID, SECRET, SERIAL).unwrap();
    assert!(plain.post(PostKind::Valid).await.is_err());
    // https:// needs a trust; http:// with one is refused as a mix-up.
    assert!(HookPoster::new(&https, APP_ID, SECRET, SERIAL).is_err());
    assert!(HookPoster::with_tls(&h.url(), APP_ID, SECRET, SERIAL, Some(&trust(&ca))).is_err());
    // The server may see the failed handshakes a moment after the client gave up.
    let c = h.recv.counters();
    assert!(
        eventually(Duration::from_secs(5), || c.rejected("tls_handshake") >= 2).await,
        "{:?}",
        c.snapshot()
    );
    let c = c.snapshot();
    assert_eq!(c.accepted, 1);
    assert_eq!(c.rejected.get("replayed").copied(), Some(1));
    let dir = h.stop().await;
    assert_eq!(
        stored_events(&dir.path().join("outbox")),
        vec![(SERIAL.to_string(), 1)]
    );
}

#[tokio::test]
async fn the_daemon_serves_https_and_reports_hook_counters_in_its_health() {
    use camgate::daemon::Daemon;
    use camgate::dev::sim::hook::SimHookApi;
    use camgate::net::tls::TlsConfig;

    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = issue_certs(certs.path(), "recv");
    let stop = CancellationToken::new();
    let api = SimHookApi::start(APP_ID, SECRET, stop.clone())
        .await
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut gate = hook_camera_on(&api, "gate");
    gate.sn = Some(SERIAL.into());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path(), vec![gate]);
    cfg.hook.listen = format!("127.0.0.1:{port}");
    cfg.hook.callback_url = Some(format!("https://127.0.0.1:{port}/camgate/hook"));
    cfg.hook.tls_cert_file = Some(cert);
    cfg.hook.tls_key_file = Some(key);
    cfg.validate().unwrap();
    let d = Daemon::start(&cfg).await.unwrap();
    let trust = TlsConfig {
        ca_file: Some(ca),
        ..TlsConfig::default()
    };
    let mut poster = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            poster = api.poster_with_tls("dynamic_detect_event", SERIAL, Some(&trust));
            poster.is_some()
        })
        .await
    );
    let p = poster.unwrap().unwrap();
    assert_eq!(p.post(PostKind::Valid).await.unwrap(), 200);
    assert_eq!(p.post(PostKind::Forged).await.unwrap(), 401);
    let other = api
        .poster_with_tls("dynamic_detect_event", "SS999", Some(&trust))
        .unwrap()
        .unwrap();
    assert_eq!(
        other.post(PostKind::Valid).await.unwrap(),
        401,
        "sn of another camera"
    );
    let hook = d
        .health("running")
        .hook
        .expect("hook section in the health report");
    assert_eq!(hook["https"], true);
    assert_eq!(hook["listen"], cfg.hook.listen.as_str());
    assert_eq!(hook["accepted"], 1);
    assert_eq!(hook["rejected"]["forged"], 1);
    assert_eq!(hook["rejected"]["sn_mismatch"], 1);
    // The file the daemon writes carries the same.
    let health = dir.path().join("health.json");
    assert!(
        eventually(Duration::from_secs(5), || {
            std::fs::read(&health)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|v| v["hook"]["rejected"]["sn_mismatch"] == 1)
        })
        .await
    );
    d.shutdown(Duration::from_secs(10)).await.unwrap();
    stop.cancel();
    assert_eq!(
        stored_events(&dir.path().join("outbox")),
        vec![(SERIAL.to_string(), 1)]
    );
}
