//! Faces on the live path with real parts: simulated cameras serve real photos over real TLS,
//! the daemon's vision stage fetches them, runs the shipped models, asks the gallery and stores
//! face results in the outbox; a process killed with SIGKILL and restarted makes no second
//! result for an event.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use camgate::config::{Config, StageConfig};
use camgate::daemon::Daemon as Gateway;
use camgate::dev::sim::SimCamera;
use camgate::gallery::Gallery;
use camgate::outbox::Outbox;
use camgate::results::FaceResult;
use camgate::stage::run::{best_usable, quality_of, template_of, vision_config};
use camgate::vision::FaceEngine;
use common::*;

const WAIT: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn photo(name: &str) -> Bytes {
    Bytes::from(std::fs::read(photo_path(name)).unwrap())
}

fn stage_config() -> StageConfig {
    StageConfig {
        models_dir: root().join("models"),
        fetch_timeout_ms: 1000,
        fetch_backoff_min_ms: 50,
        fetch_backoff_max_ms: 200,
        ..StageConfig::default()
    }
}

fn vision_cfg(dir: &Path, cameras: Vec<camgate::config::CameraConfig>) -> Config {
    let mut cfg = config_in(dir, cameras);
    cfg.vision = Some(stage_config());
    cfg.gallery.dir = dir.join("gallery");
    cfg
}

/// Enrolls `key` from the largest face of `photo` through the library (as `gallery enroll` does).
fn enroll(cfg: &Config, key: &str, photo_name: &str) {
    let stage = cfg.vision.clone().unwrap();
    let engine = FaceEngine::new(vision_config(&stage)).unwrap();
    let (faces, _) = engine.process(&photo(photo_name), true).unwrap();
    let f = best_usable(faces, &stage.quality).expect("a usable face");
    let q = quality_of(&f, &stage.quality);
    let mut g = Gallery::open(&cfg.gallery, camgate::clock::system()).unwrap();
    g.enroll(key, None, vec![template_of(f, q)]).unwrap();
}

/// The face results stored so far (none while the daemon has not made its outbox yet).
fn results(outbox: &Path) -> Vec<FaceResult> {
    if !outbox.exists() {
        return Vec::new();
    }
    Outbox::dump(outbox)
        .unwrap()
        .iter()
        .filter_map(|r| serde_json::from_slice::<FaceResult>(&r.data).ok())
        .collect()
}

fn face_camera(sim: &SimCamera, name: &str) -> camgate::config::CameraConfig {
    let mut c = camera_for(sim, name);
    c.events = vec!["face_recog_event".into()];
    c
}

async fn sim_with(serial: &str, pictures: Vec<Bytes>, events: u64) -> SimCamera {
    let mut sc = sim_config(10.0);
    sc.serial = serial.into();
    sc.max_events = Some(events);
    let sim = SimCamera::start(sc).await.unwrap();
    sim.set_pictures(pictures);
    sim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enrolled_person_is_named_and_a_stranger_is_one_unsolved_entry() {
    let dir = tempfile::tempdir().unwrap();
    // Even ids get obama2 (a different photo from the enrolled one), odd ids biden.
    let sim = sim_with("SN-A", vec![photo("obama2.jpg"), photo("biden.jpg")], 6).await;
    let cfg = vision_cfg(dir.path(), vec![face_camera(&sim, "door-1")]);
    cfg.validate().unwrap();
    enroll(&cfg, "obama", "obama.jpg");
    let d = Gateway::start(&cfg).await.unwrap();
    let outbox = cfg.outbox.dir.clone();
    assert!(
        eventually(WAIT, || results(&outbox).len() >= 6).await,
        "{} results",
        results(&outbox).len()
    );
    // A result is readable in the outbox a moment before the stage counts it: let the count
    // catch up before stopping (shutdown cancels the stage's tasks).
    let counters = d.stage_counters.clone().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || counters
            .results
            .load(std::sync::atomic::Ordering::Relaxed)
            == 6)
        .await
    );
    d.shutdown(Duration::from_secs(10)).await.unwrap();
    let all = results(&outbox);
    assert_eq!(all.len(), 6, "one result per face event");
    let mut strangers = Vec::new();
    for r in &all {
        assert_eq!((r.camera.as_str(), r.sn.as_str()), ("door-1", "SN-A"));
        assert_eq!(r.model, "mtcnn+mobilefacenet-f16");
        assert!(r.error.is_none(), "{r:?}");
        assert!(r.processed_at_ms >= r.received_at_ms);
        assert!(
            r.timings_ms.detect > 0.0 && r.timings_ms.fetch > 0.0,
            "{r:?}"
        );
        assert_eq!(r.faces.len(), 1, "{r:?}");
        let f = &r.faces[0];
        assert!(f.quality.ok, "{f:?}");
        if r.event_id % 2 == 0 {
            let id = f.identity.as_ref().expect("obama2 is the enrolled person");
            assert_eq!(id.key, "obama");
            assert!(id.score >= 0.52, "{id:?}");
            assert!(f.uguid.is_none());
        } else {
            assert!(f.identity.is_none(), "biden is not enrolled: {f:?}");
            strangers.push(f.uguid.clone().expect("an unknown face is filed"));
        }
    }
    strangers.dedup();
    assert_eq!(strangers.len(), 1, "the same stranger is one entry");
    let g = Gallery::open(&cfg.gallery, camgate::clock::system()).unwrap();
    let u = g.unknown(&strangers[0]).unwrap();
    assert_eq!(u.count, 3);
    drop(g);
    // The jsonl sink forwarded the results with the events.
    let lines = std::fs::read_to_string(&cfg.sinks.jsonl.path).unwrap();
    assert_eq!(lines.matches("\"kind\":\"face_result\"").count(), 6);
    // The health file counts what the stage did.
    let health: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg.health.file).unwrap()).unwrap();
    let v = &health["vision"];
    assert_eq!(
        (
            v["results"].as_u64(),
            v["identified"].as_u64(),
            v["unknown"].as_u64()
        ),
        (Some(6), Some(3), Some(3)),
        "{v}"
    );
    assert_eq!(v["error_results"], 0);

    // The operator lists the stranger and promotes them to a person; the next photo of them
    // is that person.
    let cli = dir.path().join("cli.toml");
    std::fs::write(
        &cli,
        format!(
            "[vision]\nmodels_dir = \"{}\"\n[gallery]\ndir = \"{}\"\n",
            root().join("models").display(),
            cfg.gallery.dir.display()
        ),
    )
    .unwrap();
    let gallery = |args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(BIN)
            .arg("gallery")
            .args(args)
            .arg("--config")
            .arg(&cli)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let unknowns = gallery(&["unknowns"]);
    assert_eq!(unknowns[0]["uguid"], strangers[0].as_str());
    assert_eq!(unknowns[0]["count"], 3);
    assert_eq!(unknowns[0]["last_camera"], "door-1");
    let promoted = gallery(&["promote", &strangers[0], "--key", "biden"]);
    assert!(
        promoted["templates_added"].as_u64().unwrap() >= 1,
        "{promoted}"
    );
    assert!(gallery(&["unknowns"]).as_array().unwrap().is_empty());
    let biden = photo_path("biden.jpg");
    let hit = gallery(&["search", biden.to_str().unwrap()]);
    assert_eq!(hit["identity"]["key"], "biden", "{hit}");
}

fn photo_path(name: &str) -> PathBuf {
    root().join("tests/fixtures/faces").join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pictures_are_error_results_and_the_stage_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let jpeg = photo("obama2.jpg");
    // A 20000x20000 PNG header: refused before any pixel is allocated.
    let mut bomb = Vec::from(&b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR"[..]);
    bomb.extend_from_slice(&20000u32.to_be_bytes());
    bomb.extend_from_slice(&20000u32.to_be_bytes());
    bomb.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    let pictures = vec![
        Bytes::from_static(b"this is not an image"),
        jpeg.slice(..jpeg.len() / 3),
        Bytes::from(bomb),
        Bytes::from(vec![0xffu8; 300 * 1024]),
        jpeg.clone(),
    ];
    let sim = sim_with("SN-B", pictures, 10).await;
    // A second camera whose configured host is not the host in its pic_url.
    let other = sim_with("SN-C", vec![jpeg], 2).await;
    let mut wrong = face_camera(&other, "door-2");
    wrong.address = format!("localhost:{}", other.addr.port());
    let mut cfg = vision_cfg(dir.path(), vec![face_camera(&sim, "door-1"), wrong]);
    cfg.vision.as_mut().unwrap().max_picture_bytes = 200 * 1024;
    let d = Gateway::start(&cfg).await.unwrap();
    let outbox = cfg.outbox.dir.clone();
    assert!(eventually(WAIT, || results(&outbox).len() >= 12).await);
    d.shutdown(Duration::from_secs(10)).await.unwrap();
    let by_id: HashMap<(String, i64), FaceResult> = results(&outbox)
        .into_iter()
        .map(|r| ((r.sn.clone(), r.event_id), r))
        .collect();
    for (id, r) in by_id.iter().filter(|(k, _)| k.0 == "SN-B") {
        // Event id i gets pictures[i % 5].
        let want = match id.1 % 5 {
            0..=2 => Some("decode"),
            3 => Some("too_large"),
            _ => None,
        };
        assert_eq!(
            r.error.as_ref().map(|e| e.kind.as_str()),
            want,
            "{id:?}: {r:?}"
        );
        if want.is_some() {
            assert!(r.faces.is_empty() && !r.error.as_ref().unwrap().detail.is_empty());
        } else {
            assert_eq!(r.faces.len(), 1, "{r:?}");
        }
    }
    for (_, r) in by_id.iter().filter(|(k, _)| k.0 == "SN-C") {
        let e = r
            .error
            .as_ref()
            .expect("another host's picture is not fetched");
        assert_eq!(e.kind, "url", "{e:?}");
        assert!(e.detail.contains("not at the camera"), "{e:?}");
    }
    assert_eq!(by_id.len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_picture_server_does_not_hold_up_another_camera() {
    let dir = tempfile::tempdir().unwrap();
    let dead = sim_with("SN-DEAD", vec![photo("obama2.jpg")], 4).await;
    dead.set_media_stall(true);
    let live = sim_with("SN-LIVE", vec![photo("obama2.jpg")], 4).await;
    let cfg = vision_cfg(
        dir.path(),
        vec![face_camera(&dead, "dead"), face_camera(&live, "live")],
    );
    let d = Gateway::start(&cfg).await.unwrap();
    let outbox = cfg.outbox.dir.clone();
    let live_done = || {
        results(&outbox)
            .iter()
            .filter(|r| r.sn == "SN-LIVE")
            .count()
            == 4
    };
    // Each dead event costs up to 3 attempts of 1 s: the live camera must not wait for them.
    assert!(eventually(Duration::from_secs(8), live_done).await);
    assert!(
        results(&outbox)
            .iter()
            .filter(|r| r.sn == "SN-DEAD")
            .count()
            < 4,
        "the dead camera's events are still being tried"
    );
    assert!(
        eventually(WAIT, || results(&outbox)
            .iter()
            .filter(|r| r.sn == "SN-DEAD")
            .count()
            == 4)
        .await
    );
    d.shutdown(Duration::from_secs(10)).await.unwrap();
    for r in results(&outbox).iter().filter(|r| r.sn == "SN-DEAD") {
        assert_eq!(r.error.as_ref().unwrap().kind, "fetch", "{r:?}");
    }
}

const BIN: &str = env!("CARGO_BIN_EXE_camgate");

fn spawn_run(cfg: &Path) -> Daemon {
    let child = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(cfg)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    Daemon(child)
}

/// `<sn>/<event_id>` → results stored for it; and the stored face events.
fn tally(outbox: &Path) -> (HashMap<String, usize>, Vec<String>) {
    let mut results: HashMap<String, usize> = HashMap::new();
    for r in self::results(outbox) {
        *results.entry(r.key()).or_default() += 1;
    }
    let events = stored_events(outbox)
        .into_iter()
        .map(|(sn, id)| format!("{sn}/{id}"))
        .collect();
    (results, events)
}

/// kill -9 of the daemon while it fetches, infers and writes results, three times; after the
/// last clean run every face event has exactly one result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_results_makes_no_second_result() {
    let dir = tempfile::tempdir().unwrap();
    let mut sc = sim_config(8.0);
    sc.serial = "SN-K".into();
    let sim = SimCamera::start(sc).await.unwrap();
    let camera = channel_camera_toml(&sim, "door-1").replacen(
        "tls = {",
        "events = [\"face_recog_event\"]\ntls = {",
        1,
    );
    let sections = format!(
        "{camera}[vision]\nmodels_dir = \"{}\"\nfetch_timeout_ms = 2000\n[gallery]\ndir = \"{}/gallery\"\n",
        root().join("models").display(),
        dir.path().display()
    );
    let cfg = write_run_config(dir.path(), &sections);
    let outbox = dir.path().join("outbox");
    for round in 1..=3usize {
        let mut d = spawn_run(&cfg);
        let want = round * 4;
        assert!(
            eventually(WAIT, || results(&outbox).len() >= want).await,
            "round {round}: {} results",
            results(&outbox).len()
        );
        d.0.kill().unwrap();
        d.0.wait().unwrap();
        let (counts, _) = tally(&outbox);
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "round {round}: results stored twice: {twice:?}"
        );
    }
    sim.set_paused(true);
    let mut d = spawn_run(&cfg);
    assert!(
        eventually(WAIT, || {
            let (counts, events) = tally(&outbox);
            sim.totals().unacked == 0 && events.iter().all(|k| counts.contains_key(k))
        })
        .await,
        "not every face event got a result"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    d.0.wait().unwrap();
    let (counts, events) = tally(&outbox);
    assert!(events.len() >= 12);
    for k in &events {
        assert_eq!(counts.get(k), Some(&1), "{k}");
    }
    assert_eq!(counts.len(), events.len());
}

/// `mosquitto_sub` (the broker's own client, not camgate's code) on `filters`, QoS 1; lines
/// `<topic> <payload>`. Returns once the broker acknowledged the subscription.
#[cfg(feature = "kafka")]
fn mosquitto_sub(port: u16, filters: &[&str], out: &Path) -> Daemon {
    let file = std::fs::File::create(out).unwrap();
    // stdbuf: line-buffered, or the lines sit in stdio's buffer while stdout is a file.
    let mut cmd = std::process::Command::new("stdbuf");
    cmd.args([
        "-oL",
        "mosquitto_sub",
        "-h",
        "127.0.0.1",
        "-q",
        "1",
        "-v",
        "-d",
    ]);
    cmd.args(["-p", &port.to_string()]);
    for f in filters {
        cmd.args(["-t", f]);
    }
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(file)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mosquitto_sub (Debian package mosquitto-clients, installed by .ci/setup)");
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(out).unwrap().contains("SUBACK") {
        assert!(t0.elapsed() < WAIT, "mosquitto_sub did not subscribe");
        std::thread::sleep(Duration::from_millis(50));
    }
    Daemon(child)
}

/// The messages `mosquitto_sub` printed (its debug lines left out).
#[cfg(feature = "kafka")]
fn mqtt_messages(out: &Path) -> Vec<(String, serde_json::Value)> {
    std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("camgate/"))
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(t, p)| Some((t.to_owned(), serde_json::from_str(p).ok()?)))
        .collect()
}

/// The whole spine as a process: a camera's face events → the daemon fetches the pictures over
/// TLS, names the enrolled person → the results reach a Kafka consumer on `camgate.faces`
/// (keyed `<sn>/<event_id>`) and an MQTT subscriber on `faces/<camera>` and `matches/<key>`,
/// beside the events themselves.
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn face_results_reach_kafka_and_mqtt_consumers_through_the_daemon() {
    use common::kafka::Reader;
    let dir = tempfile::tempdir().unwrap();
    let broker = common::tansu::Tansu::start(dir.path());
    broker.create_topic("camgate.events", 1);
    broker.create_topic("camgate.faces", 1);
    let mqtt = common::mosquitto::Mosquitto::start(&dir.path().join("mqtt"));
    let sub_out = dir.path().join("mqtt.out");
    let _sub = mosquitto_sub(
        mqtt.port,
        &["camgate/gw-v/faces/#", "camgate/gw-v/matches/#"],
        &sub_out,
    );
    let faces = Reader::start(&broker.bootstrap(), "camgate.faces", 1);
    let events = Reader::start(&broker.bootstrap(), "camgate.events", 1);

    // Event id i gets picture i % 2: even ids the enrolled person, odd ids a stranger.
    let sim = sim_with("SN-V", vec![photo("obama2.jpg"), photo("biden.jpg")], 4).await;
    let stage = vision_cfg(dir.path(), vec![]);
    enroll(&stage, "obama", "obama.jpg");
    let camera = channel_camera_toml(&sim, "door-1").replacen(
        "tls = {",
        "events = [\"face_recog_event\"]\ntls = {",
        1,
    );
    let sections = format!(
        "gateway_id = \"gw-v\"\n{camera}[vision]\nmodels_dir = \"{m}\"\n[gallery]\ndir = \"{d}/gallery\"\n[kafka]\nbrokers = \"{b}\"\ntopic = \"camgate.events\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {p}\ngateway_id = \"gw-v\"\n",
        m = root().join("models").display(),
        d = dir.path().display(),
        b = broker.bootstrap(),
        p = mqtt.port,
    );
    let cfg = write_run_config(dir.path(), &sections);
    let _d = spawn_run(&cfg);

    let got = faces.wait_for(4, Duration::from_secs(120));
    let mut keys: Vec<String> = got.iter().map(|s| s.key.clone()).collect();
    keys.sort();
    assert_eq!(keys, ["SN-V/1", "SN-V/2", "SN-V/3", "SN-V/4"], "{got:?}");
    for s in &got {
        assert_eq!(
            s.headers.get("event_type").map(String::as_str),
            Some("face_result")
        );
        let r: FaceResult = serde_json::from_slice(&s.payload).unwrap();
        assert_eq!(
            (r.camera.as_str(), format!("{}/{}", r.sn, r.event_id)),
            ("door-1", s.key.clone())
        );
        let named: Vec<&str> = r
            .faces
            .iter()
            .filter_map(|f| f.identity.as_ref().map(|i| i.key.as_str()))
            .collect();
        let want: &[&str] = if r.event_id % 2 == 0 { &["obama"] } else { &[] };
        assert_eq!(named, want, "event {}: {r:?}", r.event_id);
    }
    let evs = events.wait_for(4, WAIT);
    assert_eq!(
        common::kafka::tally(&evs).0,
        4,
        "the events themselves, on their topic"
    );

    assert!(
        eventually(WAIT, || {
            let m = mqtt_messages(&sub_out);
            m.iter().filter(|(t, _)| t.contains("/faces/")).count() >= 4
                && m.iter().filter(|(t, _)| t.contains("/matches/")).count() >= 2
        })
        .await,
        "mqtt: {:?}",
        mqtt_messages(&sub_out)
    );
    let m = mqtt_messages(&sub_out);
    let mut on_faces: Vec<i64> = m
        .iter()
        .filter(|(t, _)| t == "camgate/gw-v/faces/door-1")
        .map(|(_, v)| v["event_id"].as_i64().unwrap())
        .collect();
    on_faces.sort();
    on_faces.dedup();
    assert_eq!(on_faces, [1, 2, 3, 4]);
    let matched: Vec<(&str, i64)> = m
        .iter()
        .filter(|(t, _)| t.contains("/matches/"))
        .map(|(t, v)| (t.as_str(), v["event_id"].as_i64().unwrap()))
        .collect();
    assert!(
        matched
            .iter()
            .all(|(t, id)| *t == "camgate/gw-v/matches/obama" && id % 2 == 0),
        "{matched:?}"
    );
}
