//! The hook path through the `camgate` binary: `camgate demo --mode hook`, and the hook
//! receiver's counters in what `camgate status` prints of a running `camgate run`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use camgate::dev::sim::hook::{HookPoster, PostKind, SimHookApi};
use common::*;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_camgate");
const SERIAL: &str = "SS101D8BS00090";

#[test]
fn demo_hook_mode_stores_every_200_and_refuses_forged_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "demo",
            "--mode",
            "hook",
            "--duration",
            "3",
            "--rate",
            "10",
            "--dir",
        ])
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
    assert!(stdout.contains("stored+200"), "{stdout}");
    assert!(
        stdout.contains("posted a forged (wrong secret) callback -> HTTP 401"),
        "{stdout}"
    );
    assert!(
        stdout.contains("posted a replayed (same bytes again) callback -> HTTP 401"),
        "{stdout}"
    );
    assert!(
        stdout.contains("OK: every callback answered 200 is in the outbox"),
        "{stdout}"
    );
    assert!(
        stdout.contains("OK: the forged and the replayed callback were refused with 401"),
        "{stdout}"
    );
    // Both cameras were subscribed by camgate and posted; 2 cameras x ~30 callbacks.
    let stored = stored_events(&dir.path().join("outbox"));
    assert!(stored.len() >= 40, "{} stored\n{stdout}", stored.len());
    let serials: std::collections::BTreeSet<&str> =
        stored.iter().map(|(sn, _)| sn.as_str()).collect();
    assert_eq!(serials.len(), 2, "{serials:?}");
    assert!(dir.path().join("events.jsonl").exists());
}

/// Kills the daemon if the test fails before stopping it.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_hook_receiver_and_its_counters() {
    let stop = CancellationToken::new();
    let api = SimHookApi::start(APP_ID, SECRET, stop.clone())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_run_config(
        dir.path(),
        &format!(
            r#"[hook]
listen = "127.0.0.1:0"
callback_url = "http://127.0.0.1:9/not-used-here"
[[cameras]]
name = "gate"
mode = "hook"
sn = "{SERIAL}"
address = "{addr}"
app_id = "{APP_ID}"
secret = "{SECRET}"
events = ["dynamic_detect_event"]
tls = {{ fingerprint_sha256 = "{fp}" }}
"#,
            addr = api.addr,
            fp = api.fingerprint()
        ),
    );
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
    let mut child = Child(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let status = || {
        let out = Command::new(BIN)
            .args(["status", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    // The receiver listens on a port of its choosing; the status file says which.
    assert!(
        eventually(Duration::from_secs(20), || status()["hook"]["listen"]
            .is_string())
        .await,
        "{}",
        status()
    );
    let listen = status()["hook"]["listen"].as_str().unwrap().to_string();
    assert_eq!(status()["hook"]["https"], false);
    let url = format!("http://{listen}/camgate/hook");
    let p = HookPoster::new(&url, APP_ID, SECRET, SERIAL).unwrap();
    assert_eq!(p.post(PostKind::Valid).await.unwrap(), 200);
    assert_eq!(p.post(PostKind::Replay).await.unwrap(), 401);
    assert_eq!(p.post(PostKind::Forged).await.unwrap(), 401);
    let spoof = HookPoster::new(&url, APP_ID, SECRET, "SS000OTHER").unwrap();
    assert_eq!(spoof.post(PostKind::Valid).await.unwrap(), 401);
    let want = |s: &serde_json::Value| {
        let h = &s["hook"];
        h["accepted"] == 1
            && h["rejected"]["replayed"] == 1
            && h["rejected"]["forged"] == 1
            && h["rejected"]["sn_mismatch"] == 1
    };
    assert!(
        eventually(Duration::from_secs(5), || want(&status())).await,
        "{}",
        status()
    );
    // camgate subscribed itself on the camera at start-up.
    assert!(
        api.subscriptions().contains_key("dynamic_detect_event"),
        "{:?}",
        api.subscriptions()
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let t0 = Instant::now();
    let exit = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "camgate did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    assert_eq!(
        stored_events(&dir.path().join("outbox")),
        vec![(SERIAL.to_string(), 1)]
    );
    stop.cancel();
}
