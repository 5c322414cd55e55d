//! An independent Kafka reader for the sink tests: a plain rdkafka consumer on its own thread,
//! assigned every partition from the beginning, collecting what it sees until dropped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use camgate::event::{Envelope, EventView, Source};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

#[derive(Debug, Clone)]
pub struct Seen {
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub partition: i32,
    pub offset: i64,
}

pub struct Reader {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    pub fn start(brokers: &str, topic: &str, partitions: i32) -> Reader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "camgate-test-reader")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "50")
            .set("topic.metadata.refresh.interval.ms", "500")
            .create()
            .expect("test reader: cannot create the rdkafka consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition offset");
        }
        consumer.assign(&tpl).expect("test reader: assign");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st2.load(Ordering::Relaxed) {
                // Errors (broker gone or restarting) are ignored: the reader keeps polling, like a
                // real consumer.
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|x| {
                                    (
                                        x.key.to_string(),
                                        String::from_utf8_lossy(x.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    s2.lock().unwrap().push(Seen {
                        key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                        payload: m.payload().unwrap_or_default().to_vec(),
                        headers,
                        partition: m.partition(),
                        offset: m.offset(),
                    });
                }
            }
        });
        Reader {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn snapshot(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until at least `n` messages were seen (or `limit` passes), then a moment longer so
    /// that duplicates arriving late are counted too.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Seen> {
        let t0 = Instant::now();
        while self.count() < n && t0.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        self.snapshot()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A stored envelope as the intake writes it, for camera `camera`, serial `sn`, id `id`.
pub fn envelope(camera: &str, sn: &str, id: i64, pad: usize) -> Bytes {
    let raw = format!(
        r#"{{"event_id":{id},"event_type":"face_recog_event","sn":"{sn}","report_time":1,"faceid":"1","pic_url":"{}"}}"#,
        "x".repeat(pad)
    );
    let view = EventView::parse(raw.as_bytes()).unwrap();
    Bytes::from(
        Envelope::encode(
            camera,
            Source::Channel,
            camgate::clock::unix_now_ms(),
            &view,
            raw.as_bytes(),
        )
        .unwrap(),
    )
}

/// Counts per key: (distinct keys, total messages, keys seen more than once).
pub fn tally(seen: &[Seen]) -> (usize, usize, usize) {
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for s in seen {
        *per.entry(&s.key).or_default() += 1;
    }
    (
        per.len(),
        seen.len(),
        per.values().filter(|&&c| c > 1).count(),
    )
}
