//! The `camgate` binary as systemd and an operator use it: real processes, signals, files.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use camgate::dev::sim::SimCamera;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_camgate");

/// The camera's secret from a file (as systemd credentials deliver it), both event types.
fn write_config(dir: &std::path::Path, sim: &SimCamera) -> std::path::PathBuf {
    let camera = format!(
        r#"[[cameras]]
name = "door-1"
address = "{addr}"
app_id = "{APP_ID}"
secret_file = "{dir}/door-1.secret"
events = ["face_recog_event", "dynamic_detect_event"]
keep_alive = 5
backoff_min = 1
backoff_max = 2
tls = {{ fingerprint_sha256 = "{fp}" }}
"#,
        dir = dir.display(),
        addr = sim.addr,
        fp = sim.fingerprint()
    );
    std::fs::write(dir.join("door-1.secret"), format!("{SECRET}\n")).unwrap();
    write_run_config(dir, &camera)
}

fn spawn_run(cfg: &std::path::Path, quiet: bool) -> Daemon {
    let mut c = Command::new(BIN);
    c.args(["run", "--config"])
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if quiet {
        c.stderr(Stdio::null());
    }
    Daemon(c.spawn().unwrap())
}

fn sigterm(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            t0.elapsed() < limit,
            "process did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn check_config_reports_every_error_and_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[cameras]]\nname = \"\"\naddress = \"x\"\napp_id = \"\"\nevents = [\"nope\"]\ntls = { }\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "name",
        "address",
        "app_id",
        "secret",
        "unknown event",
        "tls",
    ] {
        assert!(err.contains(needle), "missing {needle} in {err}");
    }
    let garbage = dir.path().join("garbage.toml");
    std::fs::write(&garbage, "[[cameras]\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&garbage)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("garbage.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_health_sigterm_and_dump() {
    let sim = SimCamera::start(sim_config(50.0)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &sim);
    let ok = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let mut d = spawn_run(&cfg, false);
    let child = &mut d.0;
    assert!(
        eventually(Duration::from_secs(20), || sim.totals().acked >= 30).await,
        "{:?}",
        sim.totals()
    );
    assert!(
        eventually(Duration::from_secs(5), || Command::new(BIN)
            .args(["health", "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
            .status
            .success())
        .await,
        "camgate health"
    );
    let status = || {
        let out = Command::new(BIN)
            .args(["status", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(5), || status()["cameras"][0]["state"]
            == "ready")
        .await,
        "{}",
        status()
    );
    assert_eq!(status()["cameras"][0]["name"], "door-1");

    let t0 = Instant::now();
    sigterm(child.id());
    let exit = wait_exit(child, Duration::from_secs(10));
    assert!(exit.success(), "{exit:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(6),
        "stopped inside the grace period"
    );
    assert!(
        eventually(Duration::from_secs(5), || sim
            .state
            .disconnects_received
            .load(Ordering::Relaxed)
            == 1)
        .await
    );
    assert!(
        !Command::new(BIN)
            .args(["health", "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
            .status
            .success(),
        "not healthy once stopped"
    );

    let dump = Command::new(BIN)
        .args(["outbox", "dump", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(dump.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(dump.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 30);
    assert_eq!(lines[0]["camera"], "door-1");
    assert_acked_are_stored(&sim, "FS101D8BS00106", &dir.path().join("outbox"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_no_acknowledged_event() {
    let sim = SimCamera::start(sim_config(200.0)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &sim);
    for round in 0..3u64 {
        let mut d = spawn_run(&cfg, true);
        let target = (round + 1) * 150;
        assert!(
            eventually(Duration::from_secs(30), || sim.totals().acked >= target).await,
            "{:?}",
            sim.totals()
        );
        d.0.kill().unwrap(); // SIGKILL, mid-stream
        d.0.wait().unwrap();
        // Everything the camera saw acknowledged must be on disk, intact.
        assert_acked_are_stored(&sim, "FS101D8BS00106", &dir.path().join("outbox"));
    }
    // A last clean run takes the re-sent events, and the log is still consistent.
    sim.set_paused(true);
    let mut d = spawn_run(&cfg, false);
    assert!(
        eventually(Duration::from_secs(30), || sim.totals().unacked == 0).await,
        "{:?}",
        sim.totals()
    );
    assert!(
        eventually(Duration::from_secs(10), || sim
            .state
            .subscribes
            .load(Ordering::Relaxed)
            >= 4)
        .await
    );
    sigterm(d.0.id());
    let exit = wait_exit(&mut d.0, Duration::from_secs(10));
    assert!(exit.success(), "{exit:?}");
    assert_acked_are_stored(&sim, "FS101D8BS00106", &dir.path().join("outbox"));
    let stored = stored_events(&dir.path().join("outbox"));
    assert_eq!(
        stored.len() as u64,
        sim.totals().published,
        "each event exactly once"
    );
}

#[test]
fn demo_runs_and_proves_nothing_acknowledged_was_lost() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["demo", "--duration", "3", "--rate", "20", "--dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("stored+acked"), "{stdout}");
    assert!(
        stdout.contains("OK: every acknowledged event is in the outbox"),
        "{stdout}"
    );
    // The default faults (a bad CRC now and then) happened and were survived, not absent.
    let survived: u64 = stdout
        .split("protocol errors survived: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no protocol-error count in {stdout}"));
    assert!(survived > 0, "{stdout}");
    assert!(dir.path().join("events.jsonl").exists());
    // With ./models (the repository's), the face path runs too: each face event got its result.
    assert!(
        stdout
            .lines()
            .any(|l| l.trim_start().starts_with("face result")),
        "{stdout}"
    );
    assert!(
        stdout.contains("OK: every face event has a result"),
        "{stdout}"
    );
}
