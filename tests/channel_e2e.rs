//! The Message Channel end to end: a simulated camera over real TLS on loopback, the real
//! camera task, intake and on-disk outbox.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use camgate::channel::driver::CameraTask;
use camgate::daemon::Daemon;
use camgate::dev::sim::{Faults, SimCamera};
use camgate::intake::Intake;
use camgate::net::tls::TlsConfig;
use camgate::outbox::{Outbox, OutboxConfig};
use camgate::status::{CameraStatus, LinkState};
use common::*;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

struct Running {
    status: Arc<CameraStatus>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), camgate::channel::driver::DriverError>>,
    outbox: Outbox,
    dir: tempfile::TempDir,
}

async fn run_camera(cam: camgate::config::CameraConfig) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&OutboxConfig {
        dir: dir.path().join("outbox"),
        ..OutboxConfig::default()
    })
    .await
    .unwrap();
    let intake = Intake::new(outbox.clone(), Duration::from_secs(86_400), 10_000);
    let status = Arc::new(CameraStatus::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(
        CameraTask {
            cfg: cam,
            intake,
            status: status.clone(),
            shutdown: stop.clone(),
            clock: camgate::clock::system(),
        }
        .run(),
    );
    Running {
        status,
        stop,
        task,
        outbox,
        dir,
    }
}

impl Running {
    async fn stop(self) -> (Arc<CameraStatus>, tempfile::TempDir) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("task stops")
            .unwrap()
            .unwrap();
        self.outbox.shutdown().await.unwrap();
        (self.status, self.dir)
    }
}

#[tokio::test]
async fn events_flow_and_are_acked_only_once_stored() {
    let sim = SimCamera::start(sim_config(50.0)).await.unwrap();
    let r = run_camera(camera_for(&sim, "door-1")).await;
    assert!(
        eventually(WAIT, || sim.totals().acked >= 40).await,
        "{:?}",
        sim.totals()
    );
    assert_eq!(r.status.state(), LinkState::Ready);
    assert_eq!(sim.keep_alive_seen(), Some(5));
    let (status, dir) = r.stop().await;
    assert!(
        eventually(WAIT, || sim
            .state
            .disconnects_received
            .load(Ordering::Relaxed)
            == 1)
        .await,
        "DISCONNECT on shutdown"
    );
    assert_acked_are_stored(&sim, "FS101D8BS00106", &dir.path().join("outbox"));
    let snap = status.snapshot();
    assert_eq!(snap.serial.as_deref(), Some("FS101D8BS00106"));
    assert_eq!(snap.connects, 1);
    // Unknown fields are kept verbatim.
    let records = Outbox::dump(&dir.path().join("outbox")).unwrap();
    let text = String::from_utf8(records[0].data.to_vec()).unwrap();
    assert!(
        text.contains("\"vip_level\":\"1\"") || text.contains("dynamic_detect_event"),
        "{text}"
    );
}

#[tokio::test]
async fn bad_crc_disconnects_reconnects_and_loses_nothing() {
    let mut sc = sim_config(100.0);
    sc.faults = Faults {
        bad_crc_every: Some(15),
        ..Faults::default()
    };
    let sim = SimCamera::start(sc).await.unwrap();
    let r = run_camera(camera_for(&sim, "door-1")).await;
    assert!(
        eventually(WAIT, || r.status.errors("bad_crc") >= 2
            && sim.totals().acked >= 40)
        .await,
        "{:?}",
        r.status.snapshot()
    );
    // Stop injecting and let the camera re-send what it still holds.
    sim.set_faults(Faults::default());
    sim.set_paused(true);
    assert!(
        eventually(WAIT, || sim.totals().unacked == 0).await,
        "{:?}",
        sim.totals()
    );
    let (status, dir) = r.stop().await;
    assert!(status.snapshot().connects >= 3);
    assert!(
        sim.totals().resent >= 2,
        "the camera re-sent the events whose frames were bad"
    );
    assert!(
        sim.state.disconnects_received.load(Ordering::Relaxed) >= 2,
        "DISCONNECT after each protocol error"
    );
    assert_acked_are_stored(&sim, "FS101D8BS00106", &dir.path().join("outbox"));
    let stored = stored_events(&dir.path().join("outbox"));
    assert_eq!(
        stored.len() as u64,
        sim.totals().published,
        "every event stored exactly once"
    );
}

#[tokio::test]
async fn close_mid_frame_and_disconnect_0x11_are_survived() {
    let mut sc = sim_config(100.0);
    sc.faults = Faults {
        close_mid_frame_after: Some(10),
        ..Faults::default()
    };
    let sim = SimCamera::start(sc).await.unwrap();
    let r = run_camera(camera_for(&sim, "door-1")).await;
    assert!(
        eventually(WAIT, || r.status.errors("eof") >= 2).await,
        "{:?}",
        r.status.snapshot()
    );
    sim.set_faults(Faults {
        disconnect_0x11_after: Some(5),
        ..Faults::default()
    });
    assert!(
        eventually(WAIT, || r.status.errors("peer_disconnected") >= 1).await,
        "{:?}",
        r.status.snapshot()
    );
    assert!(r.status.snapshot().quirks >= 1, "0x11 counted as a quirk");
    sim.set_faults(Faults::default());
    sim.set_paused(true);
    assert!(
        eventually(WAIT, || sim.totals().unacked == 0).await,
        "{:?}",
        sim.totals()
    );
    let (_, dir) = r.stop().await;
    assert_acked_are_stored(&sim, "FS101D8BS00106", &dir.path().join("outbox"));
}

#[tokio::test]
async fn duplicates_are_acked_again_but_stored_once() {
    let mut sc = sim_config(50.0);
    sc.faults = Faults {
        duplicate_every: Some(3),
        ..Faults::default()
    };
    let sim = SimCamera::start(sc).await.unwrap();
    let r = run_camera(camera_for(&sim, "door-1")).await;
    assert!(eventually(WAIT, || sim.totals().acked >= 30).await);
    sim.set_paused(true);
    assert!(eventually(WAIT, || sim.totals().unacked == 0).await);
    let (status, dir) = r.stop().await;
    let dupes = status.snapshot().duplicates;
    assert!(dupes >= 9, "duplicates seen: {dupes}");
    assert_eq!(
        sim.state.acks_unknown.load(Ordering::Relaxed),
        dupes,
        "each duplicate was acked again"
    );
    assert_eq!(
        stored_events(&dir.path().join("outbox")).len() as u64,
        sim.totals().published
    );
}

#[tokio::test]
async fn refused_connect_backs_off_instead_of_spinning() {
    let mut sc = sim_config(10.0);
    sc.faults = Faults {
        refuse_connect: Some(5),
        ..Faults::default()
    };
    let sim = SimCamera::start(sc).await.unwrap();
    let mut cam = camera_for(&sim, "door-1");
    cam.backoff_min = 1;
    cam.backoff_max = 4;
    let r = run_camera(cam).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let connects = sim.totals().connects;
    assert!(
        (2..=4).contains(&connects),
        "3.5 s with a 1 s floor allows 2..=4 attempts, saw {connects}"
    );
    assert!(r.status.errors("refused") >= 2);
    assert!(r.status.snapshot().last_error.unwrap().contains("code 5"));
    // Once the camera accepts again, the session recovers by itself.
    sim.set_faults(Faults::default());
    assert!(eventually(Duration::from_secs(15), || sim.totals().acked >= 5).await);
    r.stop().await;
}

#[tokio::test]
async fn wrong_secret_is_rejected_by_the_camera() {
    let sim = SimCamera::start(sim_config(10.0)).await.unwrap();
    let mut cam = camera_for(&sim, "door-1");
    cam.secret = Some("not-the-secret".into());
    let r = run_camera(cam).await;
    assert!(eventually(WAIT, || sim.totals().sign_rejected >= 1).await);
    assert!(r.status.errors("refused") >= 1);
    assert_eq!(sim.totals().published, 0);
    r.stop().await;
}

#[tokio::test]
async fn wrong_fingerprint_fails_the_handshake() {
    let sim = SimCamera::start(sim_config(10.0)).await.unwrap();
    let mut cam = camera_for(&sim, "door-1");
    cam.tls.fingerprint_sha256 = Some("00".repeat(32));
    let r = run_camera(cam).await;
    assert!(
        eventually(WAIT, || r.status.errors("tls_handshake") >= 1).await,
        "{:?}",
        r.status.snapshot()
    );
    assert_eq!(sim.totals().published, 0);
    assert_eq!(
        sim.totals().sign_rejected,
        0,
        "no CONNECT reached an untrusted peer"
    );
    r.stop().await;
}

#[tokio::test]
async fn ca_file_and_insecure_trust_work() {
    let sim = SimCamera::start(sim_config(20.0)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("camera.pem");
    std::fs::write(&ca, &sim.cert.cert_pem).unwrap();
    let mut cam = camera_for(&sim, "door-1");
    cam.tls = TlsConfig {
        ca_file: Some(ca),
        server_name: Some("localhost".into()),
        ..TlsConfig::default()
    };
    let r = run_camera(cam).await;
    assert!(
        eventually(WAIT, || sim.totals().acked >= 3).await,
        "{:?}",
        r.status.snapshot()
    );
    r.stop().await;

    let mut cam = camera_for(&sim, "door-1");
    cam.tls = TlsConfig {
        insecure_skip_verify: true,
        ..TlsConfig::default()
    };
    let before = sim.totals().acked;
    let r = run_camera(cam).await;
    assert!(eventually(WAIT, || sim.totals().acked >= before + 3).await);
    r.stop().await;
}

#[tokio::test]
async fn unanswered_pings_end_the_session() {
    let mut sc = sim_config(0.0);
    sc.faults = Faults {
        drop_pings: true,
        ..Faults::default()
    };
    let sim = SimCamera::start(sc).await.unwrap();
    let mut cam = camera_for(&sim, "door-1");
    cam.keep_alive = 1;
    let r = run_camera(cam).await;
    assert!(
        eventually(Duration::from_secs(15), || r
            .status
            .errors("keep_alive_expired")
            >= 1)
        .await,
        "{:?}",
        r.status.snapshot()
    );
    assert!(sim.state.pings.load(Ordering::Relaxed) >= 3);
    r.stop().await;
}

#[tokio::test]
async fn media_urls_are_served_over_https_with_auth_keys() {
    let sim = SimCamera::start(sim_config(20.0)).await.unwrap();
    let r = run_camera(camera_for(&sim, "door-1")).await;
    assert!(eventually(WAIT, || sim.totals().acked >= 2).await);
    let (_, dir) = r.stop().await;
    let records = Outbox::dump(&dir.path().join("outbox")).unwrap();
    let face = records.iter().find_map(|r| {
        let v: serde_json::Value = serde_json::from_slice(&r.data).unwrap();
        v["event"]["pic_url"].as_str().map(str::to_owned)
    });
    let url = face.expect("a face event with pic_url");
    let (status, body) = https_get(&url, &sim).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..3], &[0xFF, 0xD8, 0xFF], "a JPEG");
    let forged = url.replace("auth_key=", "auth_key=1");
    assert_eq!(https_get(&forged, &sim).await.0, 403);
}

/// Minimal HTTPS GET over the camera's pinned certificate (no HTTP client in the agent yet).
async fn https_get(url: &str, sim: &SimCamera) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("https://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let tls = camgate::net::tls::client_config(
        &TlsConfig {
            fingerprint_sha256: Some(sim.fingerprint()),
            ..Default::default()
        },
        "127.0.0.1",
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(host).await.unwrap();
    let mut s = tokio_rustls::TlsConnector::from(tls.config)
        .connect(tls.server_name, tcp)
        .await
        .unwrap();
    s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, buf[head_end + 4..].to_vec())
}

#[tokio::test]
async fn daemon_runs_many_cameras_and_shuts_down_in_order() {
    let mut sims = Vec::new();
    for i in 0..4 {
        let mut sc = sim_config(20.0);
        sc.serial = format!("SN{i}");
        sims.push(SimCamera::start(sc).await.unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let cams = sims
        .iter()
        .enumerate()
        .map(|(i, s)| camera_for(s, &format!("cam-{i}")))
        .collect();
    let cfg = config_in(dir.path(), cams);
    cfg.validate().unwrap();
    let d = Daemon::start(&cfg).await.unwrap();
    assert!(eventually(WAIT, || sims.iter().all(|s| s.totals().acked >= 10)).await);
    let health = camgate::ops::check_health(&cfg.health.file, camgate::clock::unix_now_ms());
    assert!(
        eventually(Duration::from_secs(5), || camgate::ops::check_health(
            &cfg.health.file,
            camgate::clock::unix_now_ms()
        )
        .is_ok())
        .await,
        "{health:?}"
    );
    d.shutdown(Duration::from_secs(10)).await.unwrap();
    for (i, s) in sims.iter().enumerate() {
        assert!(
            eventually(WAIT, || s
                .state
                .disconnects_received
                .load(Ordering::Relaxed)
                == 1)
            .await
        );
        assert_acked_are_stored(s, &format!("SN{i}"), &cfg.outbox.dir);
    }
    // The jsonl sink wrote what it committed, one JSON object a line.
    let lines = std::fs::read_to_string(&cfg.sinks.jsonl.path).unwrap();
    assert!(lines.lines().count() >= 40);
    for l in lines.lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap();
    }
    assert!(
        camgate::ops::check_health(&cfg.health.file, camgate::clock::unix_now_ms()).is_err(),
        "stopping is not healthy"
    );
}

#[tokio::test]
async fn client_certificate_is_presented_when_configured() {
    let client = rcgen::generate_simple_self_signed(vec!["camgate".to_string()]).unwrap();
    let mut sc = sim_config(20.0);
    sc.require_client_ca = Some(client.cert.der().clone());
    let sim = SimCamera::start(sc).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("client.pem"), dir.path().join("client.key"));
    std::fs::write(&cert, client.cert.pem()).unwrap();
    std::fs::write(&key, client.signing_key.serialize_pem()).unwrap();

    // Without it the camera refuses the handshake.
    let r = run_camera(camera_for(&sim, "door-1")).await;
    assert!(
        eventually(WAIT, || r.status.errors("tls_handshake")
            + r.status.errors("io")
            + r.status.errors("eof")
            >= 1)
        .await,
        "{:?}",
        r.status.snapshot()
    );
    assert_eq!(sim.totals().published, 0);
    r.stop().await;

    let mut cam = camera_for(&sim, "door-1");
    cam.tls.client_cert = Some(cert);
    cam.tls.client_key = Some(key);
    let r = run_camera(cam).await;
    assert!(
        eventually(WAIT, || sim.totals().acked >= 3).await,
        "{:?}",
        r.status.snapshot()
    );
    r.stop().await;
}
