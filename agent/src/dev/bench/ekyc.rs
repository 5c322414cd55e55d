//! `camgate bench ekyc`: one EKYC worker (inline mode) against librdkafka's mock cluster, and a
//! real broker with `--brokers`:
//! 1. requests/s with a backlog of `register_face` requests of 1616×948 JPEGs, and request →
//!    result latency p50/p99 one request at a time; the reference is the same pictures through
//!    the face pipeline alone, in the same run (what `camgate face` does per picture);
//! 2. the worker's reply production (each record acknowledged before the next, idempotent,
//!    `acks=all`) next to a raw rdkafka producer sending the same records all in flight.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::faces::{engine, other, pictures, reference_pass, tempfile_dir};
use super::{median, BenchError};
use crate::ekyc::config::{EkycConfig, Topics};
use crate::ekyc::messages::{self as msg, ApiType};
use crate::ekyc::serve::{Answer, Reply, Topic};
use crate::ekyc::worker::{producer, Worker};
use crate::vision::pool::VisionPool;

const W: u32 = 1616;
const H: u32 = 948;

#[derive(Debug, Clone, clap::Args)]
pub struct EkycBenchArgs {
    /// Requests in the backlog phase; half as many are then sent one at a time.
    #[arg(long, default_value_t = 20)]
    pub requests: usize,
    /// Requests whose replies are produced in the reply phase (two records each).
    #[arg(long, default_value_t = 1000)]
    pub replies: usize,
    /// A real broker (e.g. tansu) to measure as well; it must create topics on first use.
    #[arg(long)]
    pub brokers: Option<String>,
}

/// Topics of their own per run, so a real broker's earlier runs are not read again.
fn run_config(brokers: &str, dir: &std::path::Path) -> EkycConfig {
    let run = crate::clock::unix_now_ms();
    let t = |name: &str| format!("{name}.bench-{run}");
    EkycConfig {
        brokers: brokers.into(),
        group_id: t("camgate-ekyc"),
        topics: Topics {
            mtcnn_request: t("MTCNN_REQUEST"),
            insightface_request: t("INSIGHTFACE_REQUEST"),
            insightface_reply: t("INSIGHTFACE_REPLY"),
            result: t("EKYC_RESULT"),
            licenses: t("EKYC_LICENSES"),
        },
        dir: dir.to_path_buf(),
        ..EkycConfig::default()
    }
}

fn requests(pics: &[(String, bytes::Bytes)], n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let v = json!({"request_api_type": "register_face", "client_id": i,
                "image_shape": [H, W, 3], "image": B64.encode(&pics[i % pics.len()].1)});
            serde_json::to_vec(&v).expect("JSON")
        })
        .collect()
}

/// Reads the result topic from its beginning.
fn results(cfg: &EkycConfig) -> Result<StreamConsumer, BenchError> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", format!("{}.bench-reader", cfg.group_id))
        .set("fetch.wait.max.ms", "10")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(other)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&cfg.topics.result, 0, Offset::Beginning)
        .map_err(other)?;
    c.assign(&tpl).map_err(other)?;
    Ok(c)
}

struct Client {
    producer: FutureProducer,
    results: StreamConsumer,
    topic: String,
}

impl Client {
    async fn send(&self, key: &str, value: &[u8]) -> Result<(), BenchError> {
        let r = FutureRecord::to(&self.topic).key(key).payload(value);
        let sent = self.producer.send(r, Duration::from_secs(30)).await;
        sent.map(drop).map_err(|(e, _)| other(e))
    }

    /// Waits for the results of `keys`; when each arrived.
    async fn wait(&self, keys: &[String]) -> Result<HashMap<String, Instant>, BenchError> {
        let mut got = HashMap::new();
        while keys.iter().any(|k| !got.contains_key(k)) {
            let m = tokio::time::timeout(Duration::from_secs(300), self.results.recv())
                .await
                .map_err(|_| other("no result within 300 s"))?
                .map_err(other)?;
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            got.entry(key).or_insert_with(Instant::now);
        }
        Ok(got)
    }
}

/// The face pipeline alone, per picture.
#[derive(Clone, Copy)]
struct Reference {
    mean_ms: f64,
    median_ms: f64,
}

struct Figures {
    backlog_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn requests_phase(
    cfg: &EkycConfig,
    pool: VisionPool,
    reqs: &[Vec<u8>],
) -> Result<Figures, BenchError> {
    let stop = CancellationToken::new();
    let worker = Worker::new(cfg, "bench".into(), pool).map_err(other)?;
    let task = tokio::spawn(worker.run(stop.clone()));
    let client = Client {
        producer: ClientConfig::new()
            .set("bootstrap.servers", &cfg.brokers)
            .set("message.max.bytes", "16777216")
            .create()
            .map_err(other)?,
        results: results(cfg)?,
        topic: cfg.topics.mtcnn_request.clone(),
    };
    // The group's first join is not part of the figures.
    client.send("warm", &reqs[0]).await?;
    client.wait(&["warm".into()]).await?;
    let keys: Vec<String> = (0..reqs.len()).map(|i| format!("b{i}")).collect();
    let t0 = Instant::now();
    for (k, v) in keys.iter().zip(reqs) {
        client.send(k, v).await?;
    }
    let done = client.wait(&keys).await?;
    let last = done.values().max().map_or(0.0, |t| (*t - t0).as_secs_f64());
    let mut lat = Vec::new();
    for (i, v) in reqs.iter().take(reqs.len().div_ceil(2)).enumerate() {
        let key = format!("s{i}");
        let t = Instant::now();
        client.send(&key, v).await?;
        client.wait(std::slice::from_ref(&key)).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    stop.cancel();
    let _ = task.await;
    lat.sort_by(f64::total_cmp);
    let p99 = lat[((lat.len() as f64 * 0.99).ceil() as usize).clamp(1, lat.len()) - 1];
    Ok(Figures {
        backlog_per_sec: reqs.len() as f64 / last.max(1e-9),
        p50_ms: median(lat),
        p99_ms: p99,
    })
}

/// A `register_face` answer as the worker produces it: the features reply and the result.
fn answer(i: usize) -> Answer {
    let feature = vec![0.044f32; 512];
    let reply =
        msg::insightface_reply_value(ApiType::RegisterFace, &json!(i), None, Some(&feature));
    let result = msg::result_value(&format!("r{i}"), Some(ApiType::RegisterFace), true, None);
    let r = |topic, value| Reply {
        topic,
        key: None,
        value,
    };
    Answer {
        replies: vec![r(Topic::InsightfaceReply, reply), r(Topic::Result, result)],
        error: None,
    }
}

/// Replies/s: the worker's own production, then a raw producer of the same records.
async fn replies_phase(
    cfg: &EkycConfig,
    pool: VisionPool,
    n: usize,
) -> Result<(f64, f64), BenchError> {
    let stop = CancellationToken::new();
    let worker = Worker::new(cfg, "bench".into(), pool).map_err(other)?;
    let p = producer(cfg, "bench").map_err(other)?;
    let answers: Vec<Answer> = (0..n).map(answer).collect();
    let t = Instant::now();
    for (i, a) in answers.iter().enumerate() {
        if !worker
            .produce(&p, Some(i.to_string().as_bytes()), a, &stop)
            .await
        {
            return Err(other("the worker's producer stopped"));
        }
    }
    let worker_rate = (2 * n) as f64 / t.elapsed().as_secs_f64();
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .create()
        .map_err(other)?;
    let keys: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let t = Instant::now();
    let mut inflight = FuturesUnordered::new();
    for (a, k) in answers.iter().zip(&keys) {
        for (r, topic) in a
            .replies
            .iter()
            .zip([&cfg.topics.insightface_reply, &cfg.topics.result])
        {
            let rec = FutureRecord::to(topic).key(k).payload(&r.value);
            inflight.push(raw.send(rec, Duration::from_secs(30)));
        }
    }
    while let Some(r) = inflight.next().await {
        r.map_err(|(e, _)| other(e))?;
    }
    Ok((worker_rate, (2 * n) as f64 / t.elapsed().as_secs_f64()))
}

type Mock = MockCluster<'static, DefaultProducerContext>;

/// The run's topics, one partition each (a broker may not create them on first use); the mock
/// cluster has no admin API.
async fn create_topics(cfg: &EkycConfig, mock: Option<&Mock>) -> Result<(), BenchError> {
    let t = &cfg.topics;
    let names = [
        &t.mtcnn_request,
        &t.insightface_request,
        &t.insightface_reply,
        &t.result,
        &t.licenses,
    ];
    if let Some(m) = mock {
        for n in names {
            m.create_topic(n, 1, 1).map_err(other)?;
        }
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .create()
        .map_err(other)?;
    let new: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, 1, TopicReplication::Fixed(1)))
        .collect();
    let made = admin.create_topics(&new, &AdminOptions::new()).await;
    for r in made.map_err(other)? {
        r.map_err(|(topic, e)| other(format!("cannot create {topic}: {e}")))?;
    }
    Ok(())
}

async fn measure(
    name: &str,
    brokers: &str,
    mock: Option<&Mock>,
    args: &EkycBenchArgs,
    pool: &VisionPool,
    reqs: &[Vec<u8>],
    reference: Reference,
) -> Result<(), BenchError> {
    let dir = tempfile_dir()?;
    let cfg = run_config(brokers, &dir);
    create_topics(&cfg, mock).await?;
    let f = requests_phase(&cfg, pool.clone(), reqs).await;
    let replies = replies_phase(&cfg, pool.clone(), args.replies).await;
    let _ = std::fs::remove_dir_all(&dir);
    let (f, (worker, raw)) = (f?, replies?);
    println!("{name}:");
    println!(
        "  backlog of {}: {:.2} requests/s = {:.2}x the pipeline alone (its mean)",
        reqs.len(),
        f.backlog_per_sec,
        f.backlog_per_sec * reference.mean_ms / 1e3
    );
    println!(
        "  one at a time: request -> result p50 {:.0} ms, p99 {:.0} ms; p50 / pipeline alone (its median) = {:.2} (target <= 1.15)",
        f.p50_ms,
        f.p99_ms,
        f.p50_ms / reference.median_ms
    );
    println!(
        "  replies: worker {worker:.0} records/s (each acknowledged before the next, idempotent, acks=all); raw producer {raw:.0} records/s (all in flight); worker / raw = {:.2}",
        worker / raw
    );
    Ok(())
}

pub async fn run(args: EkycBenchArgs) -> Result<(), BenchError> {
    let engine = Arc::new(engine().ok_or_else(|| other("the face models cannot be loaded"))?);
    let pool = VisionPool::new(engine.clone());
    let pics = pictures(W, H)?;
    let reqs = requests(&pics, args.requests.max(1));
    let mock = MockCluster::new(1).map_err(other)?;
    println!(
        "ekyc bench: register_face requests of {W}x{H} JPEGs (q90) of the {} fixture photos, inline mode, one worker",
        pics.len()
    );
    let per_pic = reference_pass(&engine, &pics, args.requests.max(pics.len()))?;
    let reference = Reference {
        mean_ms: per_pic.iter().sum::<f64>() / per_pic.len() as f64 * 1e3,
        median_ms: median(per_pic) * 1e3,
    };
    println!(
        "reference, the face pipeline alone on the same pictures (decode, detect, align, embed; what `camgate face` does): {:.0} ms per picture (mean; median {:.0})",
        reference.mean_ms, reference.median_ms
    );
    measure(
        "mock cluster (librdkafka, 1 broker)",
        &mock.bootstrap_servers(),
        Some(&mock),
        &args,
        &pool,
        &reqs,
        reference,
    )
    .await?;
    if let Some(b) = &args.brokers {
        measure(
            &format!("broker {b}"),
            b,
            None,
            &args,
            &pool,
            &reqs,
            reference,
        )
        .await?;
    }
    Ok(())
}
