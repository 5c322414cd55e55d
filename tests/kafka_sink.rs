//! The Kafka sink against librdkafka's mock cluster: exactly-once arrival with key and headers,
//! commits only after delivery (broker down → nothing committed, events wait; back → all
//! delivered), permanent refusals dead-lettered while the rest flows, and restart from the
//! committed cursor.
#![cfg(feature = "kafka")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use camgate::outbox::{Outbox, OutboxConfig};
use camgate::sinks::kafka::{KafkaConfig, KafkaSink, OptionValue};
use camgate::sinks::SinkStatus;
use common::kafka::{envelope, tally, Reader};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "camgate.events";

fn mock(partitions: i32) -> MockCluster<'static, DefaultProducerContext> {
    let m = MockCluster::new(1).expect("librdkafka mock cluster must start");
    m.create_topic(TOPIC, partitions, 1).expect("mock topic");
    m
}

fn kafka_cfg(brokers: &str, dir: &std::path::Path) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.to_string(),
        topic: TOPIC.into(),
        dead_letter_path: dir.join("dead.jsonl"),
        retry_backoff_min_ms: 50,
        retry_backoff_max_ms: 500,
        commit_interval_ms: 50,
        shutdown_flush_ms: 2000,
        ..KafkaConfig::default()
    }
}

async fn open_outbox(dir: &std::path::Path) -> Outbox {
    Outbox::open(&OutboxConfig {
        dir: dir.join("outbox"),
        ..OutboxConfig::default()
    })
    .await
    .unwrap()
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<u64, camgate::sinks::kafka::KafkaSinkError>>,
    status: Arc<SinkStatus>,
}

impl Running {
    fn start(outbox: &Outbox, cfg: KafkaConfig) -> Running {
        let status = Arc::new(SinkStatus::default());
        let stop = CancellationToken::new();
        let sink = KafkaSink {
            cfg,
            gateway_id: "gw-test".into(),
            status: status.clone(),
            observer: None,
        };
        let task = tokio::spawn(sink.run(outbox.clone(), stop.clone()));
        Running { stop, task, status }
    }

    async fn stop(self) -> u64 {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("sink stops in time")
            .unwrap()
            .unwrap()
    }

    fn lag(&self, outbox: &Outbox) -> u64 {
        self.status.snapshot(&outbox.stats(), 0).lag_events
    }
}

async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

fn committed(outbox_dir: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(outbox_dir.join("outbox").join("kafka.consumer"))
        .ok()
        .and_then(|t| {
            t.trim()
                .strip_prefix("committed ")
                .and_then(|v| v.parse().ok())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_once_with_key_and_headers() {
    let m = mock(3);
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path()).await;
    let reader = Reader::start(&m.bootstrap_servers(), TOPIC, 3);
    let mut sent = Vec::new();
    for i in 1..=300 {
        let data = envelope(&format!("cam-{}", i % 3), "SN1", i, 50);
        outbox.append(data.clone()).await.unwrap();
        sent.push(data);
    }
    let sink = Running::start(&outbox, kafka_cfg(&m.bootstrap_servers(), dir.path()));
    assert!(
        until(Duration::from_secs(30), || sink.lag(&outbox) == 0).await,
        "{:?}",
        sink.status.snapshot(&outbox.stats(), 0)
    );
    let seen = tokio::task::spawn_blocking(move || reader.wait_for(300, Duration::from_secs(30)))
        .await
        .unwrap();
    let (distinct, total, dup) = tally(&seen);
    println!(
        "mock: sent 300, delivered {distinct} distinct, {total} messages, {dup} duplicated keys"
    );
    assert_eq!((distinct, total, dup), (300, 300, 0), "exactly once");
    for s in &seen {
        let id: i64 = s
            .key
            .strip_prefix("SN1/")
            .expect("key is <sn>/<event_id>")
            .parse()
            .unwrap();
        assert_eq!(
            s.payload,
            sent[(id - 1) as usize],
            "value is the stored envelope, byte for byte"
        );
        assert_eq!(
            s.headers.get("camera").map(String::as_str),
            Some(format!("cam-{}", id % 3).as_str())
        );
        assert_eq!(
            s.headers.get("event_type").map(String::as_str),
            Some("face_recog_event")
        );
        assert_eq!(
            s.headers.get("gateway_id").map(String::as_str),
            Some("gw-test")
        );
    }
    let snap = sink.status.snapshot(&outbox.stats(), 0);
    assert_eq!((snap.delivered, snap.dead_lettered), (300, 0));
    assert!(snap.connected);
    assert_eq!(sink.stop().await, 300);
    assert_eq!(committed(dir.path()), Some(299));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_committed_while_the_broker_is_down_and_all_arrive_after() {
    let m = mock(2);
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path()).await;
    let reader = Reader::start(&m.bootstrap_servers(), TOPIC, 2);
    let mut cfg = kafka_cfg(&m.bootstrap_servers(), dir.path());
    // Short librdkafka timeout: messages time out (MsgTimedOut) during the outage and must be
    // produced again, not dropped.
    cfg.options
        .insert("message.timeout.ms".into(), OptionValue::Int(1500));
    cfg.max_in_flight = 40;
    // Connected first, so the outage hits an established producer.
    for i in 1..=10 {
        outbox.append(envelope("door", "SN2", i, 10)).await.unwrap();
    }
    let sink = Running::start(&outbox, cfg);
    assert!(
        until(Duration::from_secs(20), || sink.lag(&outbox) == 0).await,
        "first 10 delivered"
    );
    m.broker_down(1).unwrap();
    for i in 11..=110 {
        outbox.append(envelope("door", "SN2", i, 10)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let snap = sink
        .status
        .snapshot(&outbox.stats(), camgate::clock::unix_now_ms());
    println!("during outage: {snap:?}");
    assert_eq!(snap.delivered, 10, "nothing delivered while down");
    assert_eq!(
        snap.lag_events, 100,
        "nothing committed while down: the events wait in the outbox"
    );
    assert_eq!(committed(dir.path()), Some(9));
    assert!(snap.retries > 0, "timed-out messages were retried");
    assert!(!snap.connected);
    assert!(
        snap.oldest_pending_age_ms >= 4000,
        "the oldest waiting event ages: {snap:?}"
    );
    m.broker_up(1).unwrap();
    assert!(
        until(Duration::from_secs(60), || sink.lag(&outbox) == 0).await,
        "{:?}",
        sink.status.snapshot(&outbox.stats(), 0)
    );
    let seen = tokio::task::spawn_blocking(move || reader.wait_for(110, Duration::from_secs(30)))
        .await
        .unwrap();
    let (distinct, total, dup) = tally(&seen);
    println!("mock outage: sent 110, delivered {distinct} distinct, {total} messages, {dup} duplicated keys, retries {}", sink.status.snapshot(&outbox.stats(), 0).retries);
    assert_eq!(distinct, 110, "every event delivered after the outage");
    sink.stop().await;
    assert_eq!(committed(dir.path()), Some(109));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_too_large_is_dead_lettered_and_the_rest_flows() {
    let m = mock(1);
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path()).await;
    let reader = Reader::start(&m.bootstrap_servers(), TOPIC, 1);
    let mut cfg = kafka_cfg(&m.bootstrap_servers(), dir.path());
    // librdkafka refuses records over message.max.bytes before sending them.
    cfg.options
        .insert("message.max.bytes".into(), OptionValue::Int(20_000));
    let sink = Running::start(&outbox, cfg);
    for i in 1..=20 {
        outbox.append(envelope("door", "SN3", i, 10)).await.unwrap();
    }
    outbox
        .append(envelope("door", "SN3", 21, 50_000))
        .await
        .unwrap();
    for i in 22..=40 {
        outbox.append(envelope("door", "SN3", i, 10)).await.unwrap();
    }
    assert!(
        until(Duration::from_secs(30), || sink.lag(&outbox) == 0).await,
        "{:?}",
        sink.status.snapshot(&outbox.stats(), 0)
    );
    // The broker refuses one for size (error injected on the next Produce request).
    m.request_errors(
        rdkafka::types::RDKafkaApiKey::Produce,
        &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    outbox
        .append(envelope("door", "SN3", 41, 10))
        .await
        .unwrap();
    assert!(
        until(Duration::from_secs(30), || sink.lag(&outbox) == 0).await,
        "{:?}",
        sink.status.snapshot(&outbox.stats(), 0)
    );
    for i in 42..=60 {
        outbox.append(envelope("door", "SN3", i, 10)).await.unwrap();
    }
    assert!(
        until(Duration::from_secs(30), || sink.lag(&outbox) == 0).await,
        "{:?}",
        sink.status.snapshot(&outbox.stats(), 0)
    );
    let snap = sink.status.snapshot(&outbox.stats(), 0);
    assert_eq!(snap.dead_lettered, 2, "{snap:?}");
    assert_eq!(snap.delivered, 58);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("dead.jsonl"))
        .expect("dead-letter file written")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["key"], "SN3/21");
    assert_eq!(lines[0]["offset"], 20);
    assert_eq!(lines[1]["key"], "SN3/41");
    for l in &lines {
        let reason = l["reason"].as_str().unwrap();
        assert!(reason.contains("MessageSizeTooLarge"), "{reason}");
        assert_eq!(
            l["record"]["sn"], "SN3",
            "the whole stored envelope is kept"
        );
    }
    let seen = tokio::task::spawn_blocking(move || reader.wait_for(58, Duration::from_secs(30)))
        .await
        .unwrap();
    let (distinct, total, dup) = tally(&seen);
    println!("mock too-large: sent 60, dead-lettered 2, delivered {distinct} distinct, {total} messages, {dup} duplicated keys");
    assert_eq!((distinct, total), (58, 58));
    assert!(seen.iter().all(|s| s.key != "SN3/21" && s.key != "SN3/41"));
    sink.stop().await;
    assert_eq!(committed(dir.path()), Some(59));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sink_resumes_after_its_last_commit() {
    let m = mock(1);
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path()).await;
    let reader = Reader::start(&m.bootstrap_servers(), TOPIC, 1);
    for i in 1..=50 {
        outbox.append(envelope("door", "SN4", i, 10)).await.unwrap();
    }
    let sink = Running::start(&outbox, kafka_cfg(&m.bootstrap_servers(), dir.path()));
    assert!(until(Duration::from_secs(30), || sink.lag(&outbox) == 0).await);
    // Graceful stop commits what was delivered; the next run starts after it.
    assert_eq!(sink.stop().await, 50);
    for i in 51..=80 {
        outbox.append(envelope("door", "SN4", i, 10)).await.unwrap();
    }
    let sink = Running::start(&outbox, kafka_cfg(&m.bootstrap_servers(), dir.path()));
    assert!(until(Duration::from_secs(30), || sink.lag(&outbox) == 0).await);
    assert_eq!(sink.stop().await, 30, "only the new events");
    let seen = tokio::task::spawn_blocking(move || reader.wait_for(80, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(tally(&seen), (80, 80, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_producer_queue_backs_off_and_loses_nothing() {
    let m = mock(2);
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path()).await;
    let reader = Reader::start(&m.bootstrap_servers(), TOPIC, 2);
    for i in 1..=400 {
        outbox.append(envelope("door", "SN5", i, 50)).await.unwrap();
    }
    let mut cfg = kafka_cfg(&m.bootstrap_servers(), dir.path());
    // librdkafka's queue far smaller than the sink's window: most enqueues are refused with
    // QueueFull until deliveries drain it.
    cfg.options
        .insert("queue.buffering.max.messages".into(), OptionValue::Int(8));
    cfg.options.insert("linger.ms".into(), OptionValue::Int(20));
    cfg.max_in_flight = 1000;
    let sink = Running::start(&outbox, cfg);
    assert!(
        until(Duration::from_secs(60), || sink.lag(&outbox) == 0).await,
        "{:?}",
        sink.status.snapshot(&outbox.stats(), 0)
    );
    let snap = sink.status.snapshot(&outbox.stats(), 0);
    assert_eq!((snap.delivered, snap.dead_lettered), (400, 0), "{snap:?}");
    assert!(
        snap.queue_full > 0,
        "librdkafka's queue of 8 must have refused some of 400: {snap:?}"
    );
    assert_eq!(
        snap.retries, 0,
        "a full local queue is not a broker failure: {snap:?}"
    );
    let seen = tokio::task::spawn_blocking(move || reader.wait_for(400, Duration::from_secs(30)))
        .await
        .unwrap();
    let (distinct, total, dup) = tally(&seen);
    println!("mock queue full: sent 400, delivered {distinct} distinct, {total} messages, {dup} duplicated keys");
    assert_eq!((distinct, total, dup), (400, 400, 0));
    // In offset order per key prefix: the retries kept the outbox order.
    let mut ids: Vec<i64> = seen
        .iter()
        .map(|s| s.key.strip_prefix("SN5/").unwrap().parse().unwrap())
        .collect();
    ids.sort_unstable();
    assert!(ids.iter().copied().eq(1..=400));
    sink.stop().await;
    assert_eq!(committed(dir.path()), Some(399));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_dead_letter_file_holds_the_cursor_until_it_can_be_written() {
    let m = mock(1);
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path()).await;
    let mut cfg = kafka_cfg(&m.bootstrap_servers(), dir.path());
    cfg.options
        .insert("message.max.bytes".into(), OptionValue::Int(20_000));
    // The dead-letter file's directory is a plain file: not creatable, not even by root.
    let blocker = dir.path().join("blocked");
    std::fs::write(&blocker, b"not a directory").unwrap();
    cfg.dead_letter_path = blocker.join("dead.jsonl");
    let sink = Running::start(&outbox, cfg);
    for i in 1..=10 {
        outbox.append(envelope("door", "SN6", i, 10)).await.unwrap();
    }
    outbox
        .append(envelope("door", "SN6", 11, 50_000))
        .await
        .unwrap();
    for i in 12..=20 {
        outbox.append(envelope("door", "SN6", i, 10)).await.unwrap();
    }
    assert!(
        until(Duration::from_secs(30), || sink
            .status
            .snapshot(&outbox.stats(), 0)
            .last_error
            .is_some_and(|e| e.contains("not writable")))
        .await,
        "{:?}",
        sink.status.snapshot(&outbox.stats(), 0)
    );
    // The record that could be neither sent nor set aside holds the cursor: it and what follows
    // stay in the outbox (the ten before it are committed; commits of those are spaced by the
    // disk's fsync time, so wait for them, then check that the cursor stays).
    assert!(
        until(Duration::from_secs(30), || sink.lag(&outbox) == 10).await,
        "{:?}",
        sink.status.snapshot(&outbox.stats(), 0)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let snap = sink.status.snapshot(&outbox.stats(), 0);
    assert_eq!(snap.lag_events, 10, "{snap:?}");
    assert_eq!(snap.dead_lettered, 0);
    assert!(
        committed(dir.path()).is_some_and(|c| c <= 9),
        "{:?}",
        committed(dir.path())
    );
    // The operator fixes the disk: the record is set aside and everything flows.
    std::fs::remove_file(&blocker).unwrap();
    assert!(
        until(Duration::from_secs(30), || sink.lag(&outbox) == 0).await,
        "{:?}",
        sink.status.snapshot(&outbox.stats(), 0)
    );
    let snap = sink.status.snapshot(&outbox.stats(), 0);
    assert_eq!((snap.delivered, snap.dead_lettered), (19, 1), "{snap:?}");
    let dead = std::fs::read_to_string(blocker.join("dead.jsonl"))
        .expect("dead-letter written once writable");
    assert_eq!(dead.lines().count(), 1);
    assert!(dead.contains("\"key\":\"SN6/11\""), "{dead}");
    sink.stop().await;
    assert_eq!(committed(dir.path()), Some(19));
}
