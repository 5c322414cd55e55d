//! Logs reach a real journald with structured fields (camera, sn, ...), not string soup.
//! Uses the machine's journald if its socket exists, else starts Debian's systemd-journald
//! standalone (as root, which CI is) and stops it afterwards.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use camgate::dev::sim::SimCamera;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_camgate");
const SOCKET: &str = "/run/systemd/journal/socket";

struct Journald(Option<std::process::Child>);

impl Drop for Journald {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
            // A socket file nobody listens on would swallow every later log line.
            let _ = std::fs::remove_file(SOCKET);
        }
    }
}

fn ensure_journald() -> Journald {
    if Path::new(SOCKET).exists()
        && Command::new("journalctl")
            .args(["-n", "1", "--no-pager"])
            .output()
            .is_ok_and(|o| o.status.success())
    {
        return Journald(None);
    }
    let bin = [
        "/lib/systemd/systemd-journald",
        "/usr/lib/systemd/systemd-journald",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("systemd-journald not installed: run .ci/setup (Debian package systemd)");
    let child = Command::new(bin)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start systemd-journald");
    let t0 = Instant::now();
    while !Path::new(SOCKET).exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "journald did not create {SOCKET}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Journald(Some(child))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_logs_carry_structured_fields() {
    let _journald = ensure_journald();
    let sim = SimCamera::start(sim_config(5.0)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let name = format!("jtest-{}", std::process::id());
    let mut cfg = config_in(dir.path(), vec![camera_for(&sim, &name)]);
    cfg.cameras[0].secret = Some("wrong-secret".into()); // produces a warning with fields
    let path = dir.path().join("camgate.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(20), || sim.totals().sign_rejected >= 1).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());

    let found = eventually(Duration::from_secs(10), || {
        let out = Command::new("journalctl")
            .args(["-o", "json", "--no-pager", "SYSLOG_IDENTIFIER=camgate"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            v["CAMERA"] == name.as_str() && v["KIND"] == "refused" && v["PRIORITY"] == "4"
        })
    })
    .await;
    assert!(
        found,
        "no journal entry with CAMERA={name} KIND=refused at warning priority"
    );
}
