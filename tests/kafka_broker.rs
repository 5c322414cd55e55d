//! The Kafka sink against a real Kafka-protocol broker process (`tansu`, memory storage): the
//! in-process sink end to end, then the real `camgate run` process with a simulated camera
//! through a broker crash + restart and its own kill -9. Counts are printed.
#![cfg(feature = "kafka")]

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use camgate::dev::sim::SimCamera;
use camgate::outbox::{Outbox, OutboxConfig};
use camgate::sinks::kafka::{KafkaConfig, KafkaSink};
use camgate::sinks::SinkStatus;
use common::kafka::{envelope, tally, Reader, Seen};
use common::tansu::Tansu;
use common::*;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_camgate");
const TOPIC: &str = "camgate.events";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_sink_delivers_everything_once_to_tansu() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(dir.path());
    broker.create_topic(TOPIC, 3);
    let outbox = Outbox::open(&OutboxConfig {
        dir: dir.path().join("outbox"),
        ..OutboxConfig::default()
    })
    .await
    .unwrap();
    let reader = Reader::start(&broker.bootstrap(), TOPIC, 3);
    for i in 1..=200 {
        outbox
            .append(envelope(&format!("cam-{}", i % 2), "SNT", i, 100))
            .await
            .unwrap();
    }
    let status = Arc::new(SinkStatus::default());
    let stop = CancellationToken::new();
    let cfg = KafkaConfig {
        brokers: broker.bootstrap(),
        topic: TOPIC.into(),
        dead_letter_path: dir.path().join("dead.jsonl"),
        commit_interval_ms: 50,
        ..KafkaConfig::default()
    };
    let task = tokio::spawn(
        KafkaSink {
            cfg,
            gateway_id: "gw-tansu".into(),
            status: status.clone(),
            observer: None,
        }
        .run(outbox.clone(), stop.clone()),
    );
    let t0 = Instant::now();
    while status.snapshot(&outbox.stats(), 0).lag_events > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "not delivered to tansu: {:?}",
            status.snapshot(&outbox.stats(), 0)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = tokio::task::spawn_blocking(move || reader.wait_for(200, Duration::from_secs(30)))
        .await
        .unwrap();
    let (distinct, total, dup) = tally(&seen);
    println!("tansu in-process: sent 200, delivered {distinct} distinct, {total} messages, {dup} duplicated keys");
    assert_eq!((distinct, total, dup), (200, 200, 0));
    for s in &seen {
        assert_eq!(
            s.headers.get("gateway_id").map(String::as_str),
            Some("gw-tansu")
        );
        assert_eq!(
            s.headers.get("event_type").map(String::as_str),
            Some("face_recog_event")
        );
        assert!(s
            .headers
            .get("camera")
            .is_some_and(|c| c.starts_with("cam-")));
    }
    stop.cancel();
    assert_eq!(task.await.unwrap().unwrap(), 200);
}

/// Face results go to `faces_topic` with their event's key; events stay on `topic`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn face_results_go_to_the_faces_topic_keyed_like_their_event() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(dir.path());
    broker.create_topic(TOPIC, 1);
    broker.create_topic("camgate.faces", 1);
    let outbox = Outbox::open(&OutboxConfig {
        dir: dir.path().join("outbox"),
        ..OutboxConfig::default()
    })
    .await
    .unwrap();
    let events = Reader::start(&broker.bootstrap(), TOPIC, 1);
    let faces = Reader::start(&broker.bootstrap(), "camgate.faces", 1);
    for i in 1..=5 {
        outbox
            .append(envelope("door-1", "SNF", i, 10))
            .await
            .unwrap();
        let keys: &[&str] = if i % 2 == 0 { &["alice"] } else { &[] };
        outbox
            .append(face_result("door-1", "SNF", i, keys))
            .await
            .unwrap();
    }
    let status = Arc::new(SinkStatus::default());
    let stop = CancellationToken::new();
    let cfg = KafkaConfig {
        brokers: broker.bootstrap(),
        topic: TOPIC.into(),
        dead_letter_path: dir.path().join("dead.jsonl"),
        commit_interval_ms: 50,
        ..KafkaConfig::default()
    };
    assert_eq!(cfg.faces_topic, "camgate.faces", "the documented default");
    let task = tokio::spawn(
        KafkaSink {
            cfg,
            gateway_id: "gw-faces".into(),
            status: status.clone(),
            observer: None,
        }
        .run(outbox.clone(), stop.clone()),
    );
    let got = tokio::task::spawn_blocking(move || {
        (
            faces.wait_for(5, Duration::from_secs(60)),
            events.wait_for(5, Duration::from_secs(60)),
        )
    })
    .await
    .unwrap();
    stop.cancel();
    assert_eq!(task.await.unwrap().unwrap(), 10);
    let (faces, events) = got;
    assert_eq!(faces.len(), 5);
    assert_eq!(events.len(), 5);
    for (i, s) in faces.iter().enumerate() {
        let r: camgate::results::FaceResult = serde_json::from_slice(&s.payload).unwrap();
        assert_eq!(s.key, format!("SNF/{}", i + 1));
        assert_eq!(s.key, r.key());
        assert_eq!(
            s.headers.get("event_type").map(String::as_str),
            Some("face_result")
        );
        assert_eq!(s.headers.get("camera").map(String::as_str), Some("door-1"));
    }
    for s in &events {
        assert_eq!(
            s.headers.get("event_type").map(String::as_str),
            Some("face_recog_event")
        );
    }
}

fn write_config(dir: &std::path::Path, sim: &SimCamera, brokers: &str) -> std::path::PathBuf {
    let kafka = format!(
        r#"gateway_id = "gw-e2e"
[kafka]
brokers = "{brokers}"
topic = "{TOPIC}"
dead_letter_path = "{dir}/dead.jsonl"
retry_backoff_min_ms = 100
retry_backoff_max_ms = 1000
lag_log_secs = 2
producer_reset_ms = 5000
options = {{ "message.timeout.ms" = 3000, "reconnect.backoff.max.ms" = 500 }}
"#,
        dir = dir.display()
    );
    write_run_config(
        dir,
        &format!("{kafka}{}", channel_camera_toml(sim, "door-1")),
    )
}

fn spawn_run(cfg: &std::path::Path, log: &std::path::Path) -> Daemon {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Daemon(child)
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

fn kafka_health(dir: &std::path::Path) -> serde_json::Value {
    std::fs::read(dir.join("health.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map(|v| v["sinks"]["kafka"].clone())
        .unwrap_or_default()
}

fn distinct_keys(seen: &[Seen]) -> usize {
    tally(seen).0
}

async fn wait_seen(readers: &[Vec<Seen>], current: &Reader, n: usize, limit: Duration) -> bool {
    let t0 = Instant::now();
    loop {
        let mut all: Vec<Seen> = readers.iter().flatten().cloned().collect();
        all.extend(current.snapshot());
        if distinct_keys(&all) >= n {
            return true;
        }
        if t0.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camgate_run_survives_a_broker_crash_and_its_own_kill_9() {
    const EVENTS: u64 = 600;
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Tansu::start(dir.path());
    broker.create_topic(TOPIC, 2);
    let mut sc = sim_config(30.0);
    sc.max_events = Some(EVENTS);
    sc.serve_media = false;
    let serial = sc.serial.clone();
    let sim = SimCamera::start(sc).await.unwrap();
    let cfg = write_config(dir.path(), &sim, &broker.bootstrap());
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
    let log = dir.path().join("camgate.log");
    let mut lives: Vec<Vec<Seen>> = Vec::new();
    let mut reader = Reader::start(&broker.bootstrap(), TOPIC, 2);
    let mut d = spawn_run(&cfg, &log);

    // 1. Flowing.
    assert!(
        wait_seen(&lives, &reader, 100, Duration::from_secs(30)).await,
        "first 100 events did not reach tansu; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // 2. The broker crashes while events flow. Memory storage loses what it held, so the reader
    // must have read everything the broker acknowledged before it dies: camgate is frozen for a
    // moment (its producer cannot get new acks), the reader catches up, then the broker is
    // killed and camgate resumes into the outage.
    signal(d.0.id(), nix::sys::signal::Signal::SIGSTOP);
    let mut last = usize::MAX;
    while reader.count() != last {
        last = reader.count();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    broker.kill();
    lives.push(reader.snapshot());
    drop(reader);
    signal(d.0.id(), nix::sys::signal::Signal::SIGCONT);
    let before_outage = distinct_keys(&lives[0]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = kafka_health(dir.path());
    println!("during the broker outage: {during}");
    assert!(
        during["lag_events"].as_u64().unwrap_or(0) > 0,
        "events wait in the outbox during the outage: {during}"
    );
    assert_eq!(during["connected"], false, "{during}");
    broker.restart();
    broker.create_topic(TOPIC, 2);
    reader = Reader::start(&broker.bootstrap(), TOPIC, 2);

    // 3. camgate is killed -9 mid-forwarding and restarted.
    assert!(
        wait_seen(
            &lives,
            &reader,
            before_outage + 100,
            Duration::from_secs(60)
        )
        .await,
        "no recovery after the broker restart; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    d.0.kill().unwrap();
    d.0.wait().unwrap();
    d = spawn_run(&cfg, &log);

    // 4. Everything the camera published arrives.
    let all_there = wait_seen(&lives, &reader, EVENTS as usize, Duration::from_secs(120)).await;
    signal(d.0.id(), nix::sys::signal::Signal::SIGTERM);
    let t0 = Instant::now();
    while d.0.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut seen: Vec<Seen> = lives.into_iter().flatten().collect();
    seen.extend(reader.snapshot());
    drop(reader);
    let (distinct, total, dup) = tally(&seen);
    let published = sim.totals().published;
    println!(
        "tansu e2e (broker crash + camgate kill -9): camera published {published}, delivered {distinct} distinct, {total} messages, {dup} duplicated keys ({} extra copies)",
        total - distinct
    );
    assert!(
        all_there,
        "not every event reached tansu: {distinct} of {EVENTS}; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // None lost: every event the camera generated is there, under its own key.
    let mut by_key: BTreeMap<String, Vec<&Seen>> = BTreeMap::new();
    for s in &seen {
        by_key.entry(s.key.clone()).or_default().push(s);
    }
    for id in 1..=EVENTS {
        let key = format!("{serial}/{id}");
        let copies = by_key
            .get(&key)
            .unwrap_or_else(|| panic!("event {key} lost"));
        // A duplicate is only ever the same event again (same key, same event).
        for c in copies {
            let env: serde_json::Value = serde_json::from_slice(&c.payload).unwrap();
            assert_eq!(env["event_id"], id, "{key}");
            assert_eq!(env["sn"], serial.as_str());
            assert_eq!(
                c.headers.get("gateway_id").map(String::as_str),
                Some("gw-e2e")
            );
            assert_eq!(c.headers.get("camera").map(String::as_str), Some("door-1"));
        }
    }
    assert_eq!(by_key.len() as u64, EVENTS, "no foreign keys");
}
