//! Reconnect backoff of the real camera task, on tokio's paused clock: minutes of retries run in
//! milliseconds and the count of attempts is exact for the elapsed virtual time.

mod common;

use std::sync::Arc;
use std::time::Duration;

use camgate::channel::driver::CameraTask;
use camgate::config::CameraConfig;
use camgate::intake::Intake;
use camgate::net::tls::TlsConfig;
use camgate::outbox::{Outbox, OutboxConfig};
use camgate::status::{CameraStatus, LinkState};
use tokio_util::sync::CancellationToken;

#[tokio::test(start_paused = true)]
async fn a_dead_camera_is_retried_with_growing_delays() {
    // A port with nothing listening: every attempt fails at once.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&OutboxConfig {
        dir: dir.path().join("o"),
        ..OutboxConfig::default()
    })
    .await
    .unwrap();
    let intake = Intake::new(outbox, Duration::from_secs(60), 100);
    let tls = TlsConfig {
        fingerprint_sha256: Some("00".repeat(32)),
        ..TlsConfig::default()
    };
    let mut cam = CameraConfig::new("dead", &format!("127.0.0.1:{port}"), "a", "s", tls);
    cam.backoff_min = 1;
    cam.backoff_max = 60;
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

    let mut seen = Vec::new();
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        seen.push(status.snapshot().connects);
    }
    let after_10_min = *seen.last().unwrap();
    // Ceilings 1,2,4,...,60 s with a 1 s floor: at least ~10 attempts in 10 minutes, and far
    // fewer than one a second (a spin would be ~600).
    assert!(
        (8..=80).contains(&after_10_min),
        "attempts in 10 min: {after_10_min} ({seen:?})"
    );
    // Once at the cap, attempts come at most once a second and at least once a minute.
    let last_5_min = after_10_min - seen[29];
    assert!(
        (5..=40).contains(&last_5_min),
        "attempts in the last 5 min: {last_5_min}"
    );
    assert_eq!(status.state(), LinkState::Backoff);
    assert!(status.errors("connect") + status.errors("timeout") >= after_10_min - 1);

    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(status.state(), LinkState::Stopped);
}
