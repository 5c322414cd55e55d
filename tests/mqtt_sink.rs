//! The MQTT sink against a real mosquitto started by each test on a free port: topics, QoS 1,
//! the retained availability topic and last will, a broker outage, and kill -9 of camgate.
#![cfg(feature = "mqtt")]

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use camgate::dev::bench::mqtt::sample_envelope;
use camgate::dev::sim::SimCamera;
use camgate::event::StoredEnvelope;
use camgate::outbox::{Outbox, OutboxConfig};
use camgate::sinks::mqtt::{self, MqttConfig};
use camgate::sinks::SinkStatus;
use common::mosquitto::Mosquitto;
use common::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_camgate");

#[derive(Debug, Clone)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    qos: QoS,
}

/// An independent consumer: its own rumqttc client, QoS 1 subscription, reconnecting by itself.
struct Subscriber {
    got: Arc<Mutex<Vec<Msg>>>,
    subscribed: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

static IDS: AtomicU64 = AtomicU64::new(0);

fn client_id(tag: &str) -> String {
    format!(
        "t-{tag}-{}-{}",
        std::process::id(),
        IDS.fetch_add(1, Ordering::Relaxed)
    )
}

/// `persistent`: clean_session = false, so messages published while it is away (broker
/// restart) are queued for it by the broker.
async fn subscribe(port: u16, filter: &str, persistent: bool) -> Subscriber {
    let mut o = MqttOptions::new(client_id("sub"), "127.0.0.1", port);
    o.set_clean_session(!persistent)
        .set_keep_alive(Duration::from_secs(5))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(o, 16);
    let got = Arc::new(Mutex::new(Vec::new()));
    let subscribed = Arc::new(AtomicBool::new(false));
    let (g, s, filter) = (got.clone(), subscribed.clone(), filter.to_string());
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if !ack.session_present {
                        client
                            .subscribe(filter.clone(), QoS::AtLeastOnce)
                            .await
                            .unwrap();
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => s.store(true, Ordering::Relaxed),
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    g.lock().unwrap().push(Msg {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        qos: p.qos,
                    });
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let sub = Subscriber {
        got,
        subscribed,
        task,
    };
    assert!(
        eventually(Duration::from_secs(10), || sub
            .subscribed
            .load(Ordering::Relaxed))
        .await,
        "subscriber got no SUBACK"
    );
    sub
}

impl Subscriber {
    fn messages(&self) -> Vec<Msg> {
        self.got.lock().unwrap().clone()
    }

    /// `(sn, event_id)` → how many times it arrived.
    fn counts(&self) -> BTreeMap<(String, i64), u32> {
        let mut m = BTreeMap::new();
        for msg in self.messages() {
            let e: StoredEnvelope =
                serde_json::from_slice(&msg.payload).expect("payload is the stored envelope");
            *m.entry((e.sn.into_owned(), e.event_id.0)).or_insert(0) += 1;
        }
        m
    }
}

/// The retained message on `topic` as a fresh client sees it on subscribing.
async fn retained(port: u16, topic: &str) -> Option<String> {
    let mut o = MqttOptions::new(client_id("ret"), "127.0.0.1", port);
    o.set_clean_session(true);
    let (client, mut el) = AsyncClient::new(o, 4);
    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    let found = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) if p.retain => {
                    return Some(String::from_utf8_lossy(&p.payload).into_owned())
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten();
    let _ = client.try_disconnect();
    found
}

async fn eventually_retained(port: u16, topic: &str, want: &str, limit: Duration) {
    let t0 = Instant::now();
    let mut last = None;
    while t0.elapsed() < limit {
        last = retained(port, topic).await;
        if last.as_deref() == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("retained {topic} is {last:?}, expected {want:?}");
}

async fn open_outbox(dir: &std::path::Path) -> Outbox {
    Outbox::open(&OutboxConfig {
        dir: dir.join("outbox"),
        ..OutboxConfig::default()
    })
    .await
    .unwrap()
}

fn sink_config(port: u16, gateway: &str) -> MqttConfig {
    MqttConfig {
        backoff_min_ms: 200,
        backoff_max_ms: 1000,
        connect_timeout_secs: 2,
        ..MqttConfig::new("127.0.0.1", port, gateway)
    }
}

/// Offset + 1 of the sink's last commit, from its status (the sink is the only consumer, so
/// nothing it has not committed is released).
fn committed_next(outbox: &Outbox, status: &SinkStatus) -> u64 {
    let stats = outbox.stats();
    stats.next_offset - status.snapshot(&stats, 0).lag_events
}

/// The committed position once it has stopped moving: commits of acks that arrived before an
/// outage are spaced up to 2 s apart and an fsync on a loaded machine adds to that, so a fixed
/// sleep is not enough to know they have all landed.
async fn settled_commit(outbox: &Outbox, status: &SinkStatus) -> u64 {
    const QUIET: Duration = Duration::from_secs(3);
    let t0 = Instant::now();
    let (mut last, mut since) = (committed_next(outbox, status), Instant::now());
    while since.elapsed() < QUIET {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the committed position kept moving for 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = committed_next(outbox, status);
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_on_their_topics_with_qos1_and_availability_is_retained() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&dir.path().join("broker"));
    let sub = subscribe(broker.port, "camgate/gw-test/events/#", false).await;
    let outbox = open_outbox(dir.path()).await;
    let cameras = ["door-1", "door/2+#", ""];
    let n = 30;
    for i in 0..n {
        outbox
            .append(Bytes::from(sample_envelope(
                cameras[i % 3],
                1 + i as i64,
                1_000,
            )))
            .await
            .unwrap();
    }
    let status = Arc::new(SinkStatus::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(mqtt::run(
        outbox.clone(),
        sink_config(broker.port, "gw-test"),
        "gw-test".into(),
        status.clone(),
        stop.clone(),
    ));

    assert!(
        eventually(Duration::from_secs(20), || sub.messages().len() >= n).await,
        "{} of {n} arrived",
        sub.messages().len()
    );
    let msgs = sub.messages();
    assert_eq!(msgs.len(), n, "no duplicates on a healthy connection");
    let expected = [
        "camgate/gw-test/events/door-1/face_recog_event",
        "camgate/gw-test/events/door_2__/face_recog_event",
        "camgate/gw-test/events/_/face_recog_event",
    ];
    for m in &msgs {
        let e: StoredEnvelope = serde_json::from_slice(&m.payload).unwrap();
        let idx = cameras
            .iter()
            .position(|c| *c == e.camera)
            .expect("camera name kept verbatim in the payload");
        assert_eq!(m.topic, expected[idx]);
        assert_eq!(
            m.qos,
            QoS::AtLeastOnce,
            "subscribed with QoS 1, published with QoS 1"
        );
        assert_eq!(e.event_type, "face_recog_event");
    }
    let ids: Vec<i64> = sub.counts().keys().map(|k| k.1).collect();
    assert_eq!(ids, (1..=n as i64).collect::<Vec<_>>());

    eventually_retained(
        broker.port,
        "camgate/gw-test/status",
        "online",
        Duration::from_secs(5),
    )
    .await;
    // Commits are spaced out when the disk is slow (at most 2 s apart).
    assert!(
        eventually(Duration::from_secs(15), || {
            let s = status.snapshot(&outbox.stats(), 0);
            s.lag_events == 0 && s.delivered == n as u64 && s.connected
        })
        .await,
        "{:?}",
        status.snapshot(&outbox.stats(), 0)
    );
    stop.cancel();
    assert_eq!(task.await.unwrap().unwrap(), n as u64);
    eventually_retained(
        broker.port,
        "camgate/gw-test/status",
        "offline",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(committed_next(&outbox, &status), n as u64);
    drop(broker);
}

/// Face results: every one on `faces/<camera>`, and on `matches/<key>` for each person
/// identified in it; the cursor passes a result only when all of its publishes are acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn face_results_go_to_faces_and_matches_topics() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&dir.path().join("broker"));
    let faces = subscribe(broker.port, "camgate/gw-f/faces/#", false).await;
    let matches = subscribe(broker.port, "camgate/gw-f/matches/#", false).await;
    let events = subscribe(broker.port, "camgate/gw-f/events/#", false).await;
    let outbox = open_outbox(dir.path()).await;
    outbox
        .append(Bytes::from(sample_envelope("door-1", 1, 200)))
        .await
        .unwrap();
    for (id, keys) in [
        (1, vec!["alice"]),
        (2, vec![]),
        (3, vec!["alice", "bob", "alice"]),
    ] {
        outbox
            .append(face_result("door-1", "SN-F", id, &keys))
            .await
            .unwrap();
    }
    let status = Arc::new(SinkStatus::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(mqtt::run(
        outbox.clone(),
        sink_config(broker.port, "gw-f"),
        "gw-f".into(),
        status.clone(),
        stop.clone(),
    ));
    assert!(
        eventually(Duration::from_secs(20), || faces.messages().len() >= 3
            && matches.messages().len() >= 3)
        .await
    );
    assert!(
        eventually(Duration::from_secs(15), || status
            .snapshot(&outbox.stats(), 0)
            .lag_events
            == 0)
        .await
    );
    stop.cancel();
    assert_eq!(task.await.unwrap().unwrap(), 4);
    let f = faces.messages();
    assert_eq!(f.len(), 3);
    assert!(f
        .iter()
        .all(|m| m.topic == "camgate/gw-f/faces/door-1" && m.qos == QoS::AtLeastOnce));
    let ids: Vec<i64> = f
        .iter()
        .map(|m| {
            serde_json::from_slice::<camgate::results::FaceResult>(&m.payload)
                .unwrap()
                .event_id
        })
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    let mut m: Vec<(String, i64)> = matches
        .messages()
        .iter()
        .map(|m| {
            let r: camgate::results::FaceResult = serde_json::from_slice(&m.payload).unwrap();
            (m.topic.clone(), r.event_id)
        })
        .collect();
    m.sort();
    assert_eq!(
        m,
        [
            ("camgate/gw-f/matches/alice".to_string(), 1),
            ("camgate/gw-f/matches/alice".to_string(), 3),
            ("camgate/gw-f/matches/bob".to_string(), 3),
        ],
        "one publish per identified person, none for an unknown face"
    );
    assert_eq!(
        events.messages().len(),
        1,
        "the event itself still goes to events/"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_sink_leaves_offline_through_its_last_will() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&dir.path().join("broker"));
    let outbox = open_outbox(dir.path()).await;
    let status = Arc::new(SinkStatus::default());
    let task = tokio::spawn(mqtt::run(
        outbox.clone(),
        sink_config(broker.port, "gw-will"),
        "gw-will".into(),
        status.clone(),
        CancellationToken::new(),
    ));
    eventually_retained(
        broker.port,
        "camgate/gw-will/status",
        "online",
        Duration::from_secs(10),
    )
    .await;
    // No DISCONNECT, no offline publish: only the broker's will can say it.
    task.abort();
    let _ = task.await;
    eventually_retained(
        broker.port,
        "camgate/gw-will/status",
        "offline",
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_loses_nothing_and_commits_nothing_while_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(&dir.path().join("broker"));
    let sub = subscribe(broker.port, "camgate/gw-out/events/#", true).await;
    let outbox = open_outbox(dir.path()).await;
    let status = Arc::new(SinkStatus::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(mqtt::run(
        outbox.clone(),
        sink_config(broker.port, "gw-out"),
        "gw-out".into(),
        status.clone(),
        stop.clone(),
    ));

    // 12 s of events at 100/s: they keep coming all through the outage below.
    let n: i64 = 1200;
    let ob = outbox.clone();
    let feeder = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for id in 1..=n {
            tick.tick().await;
            ob.append(Bytes::from(sample_envelope(
                "door-1",
                id,
                camgate::clock::unix_now_ms(),
            )))
            .await
            .unwrap();
        }
    });
    assert!(
        eventually(Duration::from_secs(20), || sub.messages().len() >= 100).await,
        "forwarding did not start"
    );

    tokio::task::block_in_place(|| broker.stop());
    assert!(
        eventually(Duration::from_secs(5), || !status
            .snapshot(&outbox.stats(), 0)
            .connected)
        .await
    );
    let committed_at_stop = settled_commit(&outbox, &status).await;
    let delivered_at_stop = status.delivered.load(Ordering::Relaxed);
    let appended_at_stop = outbox.stats().next_offset;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let appended_while_down = outbox.stats().next_offset - appended_at_stop;
    assert!(
        appended_while_down > 100,
        "events kept arriving while the broker was down: {appended_while_down}"
    );
    assert_eq!(
        committed_next(&outbox, &status),
        committed_at_stop,
        "nothing may be committed while the broker is down"
    );
    assert_eq!(status.delivered.load(Ordering::Relaxed), delivered_at_stop);
    let snap = status.snapshot(&outbox.stats(), camgate::clock::unix_now_ms());
    assert!(
        snap.retries >= 1 && snap.lag_events >= appended_while_down,
        "{snap:?}"
    );
    assert!(
        snap.lag_bytes > snap.lag_events * 100,
        "lag in bytes covers the stored events: {snap:?}"
    );
    assert!(snap.last_error.is_some());

    tokio::task::block_in_place(|| broker.restart());
    feeder.await.unwrap();
    assert!(
        eventually(Duration::from_secs(60), || sub.counts().len() == n as usize).await,
        "{} of {n} distinct events delivered after the outage; missing {:?}; sink {:?}; broker log tail:\n{}",
        sub.counts().len(),
        (1..=n).filter(|id| !sub.counts().contains_key(&("FS101D8BS00106".to_string(), *id))).collect::<Vec<_>>(),
        status.snapshot(&outbox.stats(), 0),
        broker.log().lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
    let counts = sub.counts();
    let received: u32 = counts.values().sum();
    let duplicated = counts.values().filter(|c| **c > 1).count();
    println!("broker outage: sent {n}, delivered {} distinct ({received} messages), duplicated {duplicated}, committed before the stop {committed_at_stop}", counts.len());
    assert!(
        counts.keys().map(|k| k.1).eq(1..=n),
        "every event id arrived"
    );
    assert!(
        eventually(Duration::from_secs(15), || status
            .snapshot(&outbox.stats(), 0)
            .lag_events
            == 0)
        .await
    );
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(committed_next(&outbox, &status), n as u64);
}

/// Publishes in flight when the broker stops answering are never committed, and reach the
/// subscriber once the broker answers again, on the sink's new connection. The broker is frozen
/// (SIGSTOP) and thawed, not killed: mosquitto acknowledges QoS 1 before it saves its state, so a
/// kill -9 of the broker loses what it had acknowledged and not yet passed on, whoever the
/// publisher (the broker's durability, not the sink's; a stop and restart is the outage test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_publishes_are_not_committed_and_are_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&dir.path().join("broker"));
    let sub = subscribe(broker.port, "camgate/gw-frz/events/#", true).await;
    let outbox = open_outbox(dir.path()).await;
    let status = Arc::new(SinkStatus::default());
    let stop = CancellationToken::new();
    let cfg = MqttConfig {
        keep_alive_secs: 2,
        ..sink_config(broker.port, "gw-frz")
    };
    let task = tokio::spawn(mqtt::run(
        outbox.clone(),
        cfg,
        "gw-frz".into(),
        status.clone(),
        stop.clone(),
    ));
    let n: i64 = 800;
    let ob = outbox.clone();
    let feeder = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        for id in 1..=n {
            tick.tick().await;
            ob.append(Bytes::from(sample_envelope(
                "door-1",
                id,
                camgate::clock::unix_now_ms(),
            )))
            .await
            .unwrap();
        }
    });
    assert!(
        eventually(Duration::from_secs(20), || sub.messages().len() >= 100).await,
        "forwarding did not start"
    );
    broker.freeze();
    let frozen_at = settled_commit(&outbox, &status).await;
    let snap = status.snapshot(&outbox.stats(), camgate::clock::unix_now_ms());
    assert!(
        snap.oldest_pending_age_ms > 1000,
        "publishes are out and unacknowledged: {snap:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        committed_next(&outbox, &status),
        frozen_at,
        "nothing unacknowledged may be committed"
    );
    // The sink gives the frozen connection up (keep-alive 2 s) before the broker comes back.
    assert!(
        eventually(Duration::from_secs(20), || !status
            .snapshot(&outbox.stats(), 0)
            .connected)
        .await,
        "the sink did not notice"
    );
    broker.thaw();
    feeder.await.unwrap();
    assert!(
        eventually(Duration::from_secs(60), || sub.counts().len() == n as usize).await,
        "{} of {n} distinct events delivered",
        sub.counts().len()
    );
    let counts = sub.counts();
    let received: u32 = counts.values().sum();
    let duplicated = counts.values().filter(|c| **c > 1).count();
    println!("frozen then thawed broker: sent {n}, delivered {} distinct ({received} messages), duplicated {duplicated}, committed at the freeze {frozen_at}", counts.len());
    assert!(status.retries.load(Ordering::Relaxed) >= 1);
    assert!(
        eventually(Duration::from_secs(15), || status
            .snapshot(&outbox.stats(), 0)
            .lag_events
            == 0)
        .await
    );
    stop.cancel();
    task.await.unwrap().unwrap();
}

fn write_config(dir: &std::path::Path, sim: &SimCamera, mqtt_port: u16) -> std::path::PathBuf {
    let mqtt = format!("[mqtt]\nhost = \"127.0.0.1\"\nport = {mqtt_port}\ngateway_id = \"gw-proc\"\nbackoff_min_ms = 200\nbackoff_max_ms = 1000\n");
    write_run_config(
        dir,
        &format!("{mqtt}{}", channel_camera_toml(sim, "door-1")),
    )
}

fn spawn_run(cfg: &std::path::Path) -> Daemon {
    Daemon(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_camgate_mid_forwarding_then_restart_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&dir.path().join("broker"));
    let sub = subscribe(broker.port, "camgate/gw-proc/events/#", true).await;
    let sim = SimCamera::start(sim_config(100.0)).await.unwrap();
    let cfg = write_config(dir.path(), &sim, broker.port);
    let check = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let mut d = spawn_run(&cfg);
    assert!(
        eventually(Duration::from_secs(30), || sub.messages().len() >= 100).await,
        "forwarding did not start: {}",
        sub.messages().len()
    );
    d.0.kill().unwrap(); // SIGKILL
    d.0.wait().unwrap();
    eventually_retained(
        broker.port,
        "camgate/gw-proc/status",
        "offline",
        Duration::from_secs(5),
    )
    .await;
    let at_kill = sub.counts().len();
    // The camera keeps publishing into the void, then re-sends what was not acknowledged.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut d = spawn_run(&cfg);
    eventually_retained(
        broker.port,
        "camgate/gw-proc/status",
        "online",
        Duration::from_secs(20),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(20), || sub.counts().len()
            > at_kill + 100)
        .await,
        "forwarding did not resume"
    );
    sim.set_paused(true);
    let outbox_dir = dir.path().join("outbox");
    let all_delivered = || {
        let got = sub.counts();
        stored_events(&outbox_dir)
            .iter()
            .all(|k| got.contains_key(k))
    };
    assert!(
        eventually(Duration::from_secs(30), all_delivered).await,
        "stored events missing at the subscriber"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let t0 = Instant::now();
    while d.0.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "camgate did not stop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually_retained(
        broker.port,
        "camgate/gw-proc/status",
        "offline",
        Duration::from_secs(5),
    )
    .await;

    let stored = stored_events(&outbox_dir);
    assert_acked_are_stored(&sim, "FS101D8BS00106", &outbox_dir);
    let counts = sub.counts();
    let missing: Vec<_> = stored.iter().filter(|k| !counts.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "stored but never delivered: {missing:?}"
    );
    let received: u32 = counts.values().sum();
    let duplicated = counts.values().filter(|c| **c > 1).count();
    println!(
        "kill -9: camera acked {}, stored {}, delivered {} distinct ({received} messages), duplicated {duplicated}, delivered before the kill {at_kill}",
        sim.totals().acked,
        stored.len(),
        counts.len()
    );
    assert!(
        stored.len() > at_kill,
        "events were stored after the restart too"
    );
}
