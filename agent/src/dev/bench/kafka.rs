//! `camgate bench kafka`: events/s from the outbox to Kafka through the sink (delivery tracked,
//! cursor committed), next to a raw rdkafka producer sending the same records in the same run
//! (produce + await delivery, no outbox), and append→delivery latency at a steady rate.
//! Against librdkafka's mock cluster always, and a real broker when `--brokers` is given.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::dev::bench::{BenchError, FACE_EVENT};
use crate::event::{Envelope, EventView, Source};
use crate::outbox::{Offset, Outbox, OutboxConfig};
use crate::sinks::kafka::{KafkaConfig, KafkaSink, CONSUMER};
use crate::sinks::SinkStatus;

#[derive(Debug, Clone, clap::Args)]
pub struct KafkaBenchArgs {
    /// Events per throughput phase.
    #[arg(long, default_value_t = 50_000)]
    pub events: usize,
    /// A real broker (e.g. tansu) to measure as well; the topic must exist or be creatable.
    #[arg(long)]
    pub brokers: Option<String>,
    #[arg(long, default_value = "camgate.bench")]
    pub topic: String,
    /// Events/s appended during the latency phase.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// In-flight window of both the sink and the raw producer.
    #[arg(long, default_value_t = 1000)]
    pub window: usize,
    /// Events/s of the simulated camera in the end-to-end phase (camera PUBLISH -> broker).
    #[arg(long, default_value_t = 200.0)]
    pub e2e_rate: f64,
}

fn other(e: impl std::fmt::Display) -> BenchError {
    BenchError::Other(e.to_string())
}

/// A stored envelope around the spec's face event, as the intake would write it.
fn envelope(i: u64) -> Bytes {
    let raw = FACE_EVENT.replacen("\"event_id\":2,", &format!("\"event_id\":{i},"), 1);
    let view = EventView::parse(raw.as_bytes()).expect("valid event");
    Bytes::from(
        Envelope::encode(
            "bench-cam",
            Source::Channel,
            crate::clock::unix_now_ms(),
            &view,
            raw.as_bytes(),
        )
        .expect("encodes"),
    )
}

pub struct Figures {
    pub raw_before: f64,
    pub raw_after: f64,
    /// Mean of the two reference runs.
    pub raw_per_sec: f64,
    pub sink_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub latency_samples: usize,
}

pub async fn run(args: KafkaBenchArgs) -> Result<(), BenchError> {
    let mock = MockCluster::new(1).map_err(other)?;
    mock.create_topic(&args.topic, 3, 1).map_err(other)?;
    let n = args.events;
    let size = envelope(1).len();
    println!(
        "kafka bench: {n} events of {size} B, window {} records",
        args.window
    );
    let f = measure(&mock.bootstrap_servers(), &args).await?;
    print(
        "mock cluster (librdkafka, 1 broker, 3 partitions)",
        &f,
        &args,
    );
    let e2e = camera_to_kafka(&mock.bootstrap_servers(), &args).await?;
    println!("  {e2e}");
    if let Some(b) = &args.brokers {
        let f = measure(b, &args).await?;
        print(&format!("broker {b}"), &f, &args);
        let e2e = camera_to_kafka(b, &args).await?;
        println!("  {e2e}");
    }
    Ok(())
}

/// A simulated camera -> `camgate run` (channel session, outbox, this sink) -> `brokers`, timed
/// by an independent consumer assigned to the end of every partition of the topic.
async fn camera_to_kafka(
    brokers: &str,
    args: &KafkaBenchArgs,
) -> Result<crate::dev::bench::EndToEnd, BenchError> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("camgate-bench-e2e-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .map_err(other)?;
    let meta = consumer
        .fetch_metadata(Some(&args.topic), Duration::from_secs(10))
        .map_err(other)?;
    let mut tpl = TopicPartitionList::new();
    for t in meta.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(&args.topic, p.id(), Offset::End)
                .map_err(other)?;
        }
    }
    if tpl.count() == 0 {
        return Err(other(format!(
            "topic {} has no partitions on {brokers}",
            args.topic
        )));
    }
    consumer.assign(&tpl).map_err(other)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let prefix = format!("{}/", crate::dev::bench::E2E_SERIAL);
    let reader = tokio::spawn(async move {
        while let Ok(m) = consumer.recv().await {
            let id = m
                .key()
                .and_then(|k| std::str::from_utf8(k).ok())
                .and_then(|k| k.strip_prefix(&prefix))
                .and_then(|id| id.parse().ok());
            if let Some(id) = id {
                if tx.send((id, tokio::time::Instant::now())).is_err() {
                    break;
                }
            }
        }
    });
    let dead = std::env::temp_dir().join("camgate-bench-e2e-dead.jsonl");
    let sink = format!(
        "[kafka]\nbrokers = {brokers:?}\ntopic = {:?}\ndead_letter_path = {dead:?}\n",
        args.topic
    );
    let r = crate::dev::bench::camera_to_broker(&sink, args.e2e_rate, args.seconds, rx).await;
    reader.abort();
    r
}

fn print(name: &str, f: &Figures, args: &KafkaBenchArgs) {
    println!("{name}:");
    println!(
        "  raw rdkafka producer (produce + await delivery): {:>9.0} events/s (mean of {:.0} before and {:.0} after the sink)",
        f.raw_per_sec, f.raw_before, f.raw_after
    );
    println!(
        "  camgate kafka sink (outbox -> kafka, commit after delivery): {:>9.0} events/s",
        f.sink_per_sec
    );
    println!(
        "  ratio sink/raw: {:.2} (goal >= 0.8)",
        f.sink_per_sec / f.raw_per_sec
    );
    println!(
        "  append -> delivery latency at {:.0} events/s for {} s: p50 {:.1} ms, p99 {:.1} ms ({} samples)",
        args.rate, args.seconds, f.p50_ms, f.p99_ms, f.latency_samples
    );
}

pub async fn measure(brokers: &str, args: &KafkaBenchArgs) -> Result<Figures, BenchError> {
    let kcfg = KafkaConfig {
        brokers: brokers.to_string(),
        topic: args.topic.clone(),
        max_in_flight: args.window,
        max_in_flight_bytes: 64 * 1024 * 1024,
        commit_interval_ms: 100,
        dead_letter_path: std::env::temp_dir().join("camgate-bench-kafka-dead.jsonl"),
        ..KafkaConfig::default()
    };
    let records: Vec<Bytes> = (1..=args.events as u64).map(envelope).collect();
    // Warm-up: metadata, connections, producer id.
    raw(&kcfg, &records[..records.len().min(1000)], args).await?;
    // The reference runs before and after the sink: a broker whose speed drifts during the run
    // (its log growing, other load) must not favour whichever runs first.
    let raw_before = raw(&kcfg, &records, args).await?;
    let (sink_per_sec, p50_ms, p99_ms, latency_samples) =
        through_sink(&kcfg, &records, args).await?;
    let raw_after = raw(&kcfg, &records, args).await?;
    Ok(Figures {
        raw_before,
        raw_after,
        raw_per_sec: (raw_before + raw_after) / 2.0,
        sink_per_sec,
        p50_ms,
        p99_ms,
        latency_samples,
    })
}

/// The reference: the same records (key, value, headers), same producer settings, same window,
/// no outbox.
async fn raw(
    kcfg: &KafkaConfig,
    records: &[Bytes],
    args: &KafkaBenchArgs,
) -> Result<f64, BenchError> {
    let producer: FutureProducer = kcfg.client_config("bench").create().map_err(other)?;
    let t0 = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for (i, data) in records.iter().enumerate() {
        let key = format!("BENCH/{i}");
        loop {
            if in_flight.len() >= args.window {
                check(in_flight.next().await)?;
            }
            // The same record the sink sends: key, value and its three headers.
            let headers = OwnedHeaders::new_with_capacity(3)
                .insert(Header {
                    key: "camera",
                    value: Some("bench-cam"),
                })
                .insert(Header {
                    key: "event_type",
                    value: Some("face_recog_event"),
                })
                .insert(Header {
                    key: "gateway_id",
                    value: Some("bench"),
                });
            match producer.send_result(
                FutureRecord::to(&kcfg.topic)
                    .key(&key)
                    .payload(&data[..])
                    .headers(headers),
            ) {
                Ok(f) => {
                    in_flight.push(f);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => return Err(other(e)),
            }
        }
    }
    while let Some(r) = in_flight.next().await {
        check(Some(r))?;
    }
    Ok(records.len() as f64 / t0.elapsed().as_secs_f64())
}

fn check<C>(
    r: Option<Result<rdkafka::producer::future_producer::OwnedDeliveryResult, C>>,
) -> Result<(), BenchError> {
    match r {
        Some(Ok(Ok(_))) | None => Ok(()),
        Some(Ok(Err((e, _)))) => Err(other(format!("raw delivery failed: {e}"))),
        Some(Err(_)) => Err(other("raw delivery canceled")),
    }
}

/// The outbox filled with `records` first, then drained by the sink (the throughput), then a
/// steady append rate with the sink running (the latency).
async fn through_sink(
    kcfg: &KafkaConfig,
    records: &[Bytes],
    args: &KafkaBenchArgs,
) -> Result<(f64, f64, f64, usize), BenchError> {
    let dir = std::env::temp_dir().join(format!(
        "camgate-bench-kafka-{}-{}",
        std::process::id(),
        crate::clock::unix_now_ms()
    ));
    let ocfg = OutboxConfig {
        dir: dir.join("outbox"),
        max_bytes: 2 * 1024 * 1024 * 1024,
        ..OutboxConfig::default()
    };
    let outbox = Outbox::open(&ocfg).await.map_err(other)?;
    // Registered before appending, so the records are kept for it.
    drop(outbox.consumer(CONSUMER).map_err(other)?);
    for chunk in records.chunks(1024) {
        let appends: Vec<_> = chunk.iter().map(|r| outbox.append(r.clone())).collect();
        for r in futures_util::future::join_all(appends).await {
            r.map_err(other)?;
        }
    }
    let deliveries: Arc<Mutex<Vec<(Offset, Instant)>>> =
        Arc::new(Mutex::new(Vec::with_capacity(records.len() * 2)));
    let d2 = deliveries.clone();
    let status = Arc::new(SinkStatus::default());
    let stop = CancellationToken::new();
    let sink = KafkaSink {
        cfg: kcfg.clone(),
        gateway_id: "bench".into(),
        status: status.clone(),
        observer: Some(Arc::new(move |o| {
            d2.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((o, Instant::now()))
        })),
    };
    let t0 = Instant::now();
    let task = tokio::spawn(sink.run(outbox.clone(), stop.clone()));
    let n = records.len() as u64;
    let sink_t = loop {
        // The broker's delivery report for the last record ends the measure, as for the raw
        // producer. The cursor commit follows on its own schedule (coalesced, up to 2 s apart on a
        // slow disk), which is latency, not throughput; `status.delivered` counts only committed.
        {
            let d = deliveries.lock().unwrap_or_else(|p| p.into_inner());
            if d.len() as u64 >= n {
                let last = d.iter().map(|(_, t)| *t).max();
                break last.map_or_else(|| t0.elapsed(), |t| t.saturating_duration_since(t0));
            }
        }
        let snap = status.snapshot(&outbox.stats(), 0);
        if task.is_finished() {
            return Err(other("sink stopped early"));
        }
        if t0.elapsed() > Duration::from_secs(600) {
            return Err(other(format!(
                "sink did not deliver {n} events in 600 s: {snap:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let sink_per_sec = n as f64 / sink_t.as_secs_f64();

    // Latency: appends at a steady rate while the sink runs.
    let appended: Arc<Mutex<Vec<(Offset, Instant)>>> = Arc::default();
    let period = Duration::from_secs_f64(1.0 / args.rate.max(1.0));
    let total = (args.rate * args.seconds as f64) as u64;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut pending = FuturesUnordered::new();
    for i in 0..total {
        tick.tick().await;
        let (ob, app, data) = (outbox.clone(), appended.clone(), envelope(1_000_000 + i));
        pending.push(tokio::spawn(async move {
            let t = Instant::now();
            let off = ob.append(data).await?;
            app.lock().unwrap_or_else(|p| p.into_inner()).push((off, t));
            Ok::<_, crate::outbox::OutboxError>(())
        }));
        while let Some(Some(r)) = futures_util::FutureExt::now_or_never(pending.next()) {
            r.map_err(other)?.map_err(other)?;
        }
    }
    while let Some(r) = pending.next().await {
        r.map_err(other)?.map_err(other)?;
    }
    let want = n + total;
    let t1 = Instant::now();
    while status.delivered.load(std::sync::atomic::Ordering::Relaxed) < want {
        if t1.elapsed() > Duration::from_secs(120) {
            return Err(other("latency phase: not everything delivered in 120 s"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    task.await.map_err(other)?.map_err(other)?;
    outbox.shutdown().await.map_err(other)?;
    let _ = std::fs::remove_dir_all(&dir);
    let delivered: std::collections::HashMap<Offset, Instant> = deliveries
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .copied()
        .collect();
    let mut lat: Vec<f64> = appended
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(|(o, t)| {
            delivered
                .get(o)
                .map(|d| d.saturating_duration_since(*t).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if lat.is_empty() {
            f64::NAN
        } else {
            lat[((lat.len() - 1) as f64 * p).round() as usize]
        }
    };
    Ok((sink_per_sec, pct(0.5), pct(0.99), lat.len()))
}
