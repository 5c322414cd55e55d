//! MQTT forwarding sink: every stored event is published with QoS 1 to
//! `<topic_prefix>/<gateway>/events/<camera>/<event_type>` (payload: the stored envelope JSON,
//! whose `sn`/`event_id` let consumers drop duplicates), and `<topic_prefix>/<gateway>/status`
//! holds a retained `online`/`offline` (last will `offline`). A face result of the vision stage
//! goes to `<topic_prefix>/<gateway>/faces/<camera>`, and once more to
//! `<topic_prefix>/<gateway>/matches/<key>` for each person identified in it (what Double Take
//! users subscribe to); its cursor moves once every one of those publishes is acknowledged.
//!
//! Delivery: rumqttc's `publish()` returns once queued (rumqtt#349), so the cursor is moved only
//! over records whose PubAck came back, in offset order (`sinks::window`). The event loop runs in its
//! own task and is never cancelled mid-write; it hands its events over a bounded channel and, after
//! a connection error, waits for this sink to say when to reconnect (rumqttc has no backoff,
//! rumqtt#703). Before reconnecting it drops whatever it would itself re-send, so that every
//! unacknowledged record is published again by the sink, under packet ids the sink tracks; a
//! broker that kept the persistent session may then see duplicates, never a gap.
//!
//! Three tasks, joined by bounded channels: the event loop driver (above), the forwarder (topics,
//! the commit window, packet-id tracking, reconnect timing) and the outbox reader, which reads one
//! batch ahead and commits the acknowledged prefix, so that a slow cursor fsync delays neither
//! publishing nor ack handling.

pub mod pkid;
pub mod topic;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, NetworkOptions,
    Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::net::backoff::Backoff;
use crate::net::tls::{self, TlsConfig, TlsError};
use crate::outbox::{Offset, Outbox, OutboxError, Record};
use crate::results::Stored;
use crate::sinks::reader::{read_and_commit, Acked, Batch};
use crate::sinks::SinkStatus;

use super::window::CommitWindow;
use pkid::{PkidTracker, Slot};
use topic::Topics;

pub const CONSUMER: &str = "mqtt";

/// Acknowledged records are committed at most this often: a commit is an fsync, and a crash
/// only re-sends what was acknowledged since (duplicates, which the payload identifies).
const COMMIT_EVERY: Duration = Duration::from_millis(100);
/// How long a clean shutdown waits for the PubAck of the retained `offline`.
const OFFLINE_WAIT: Duration = Duration::from_secs(1);
/// MQTT fixed header + topic length + packet id, on top of topic and payload.
const PUBLISH_OVERHEAD: usize = 2 + 4 + 2 + 2;

/// `[mqtt]`. An absent section disables the sink.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Broker host name or address. Required.
    pub host: String,
    /// Default 1883.
    pub port: u16,
    /// Gateway name in topics and the default client id. Precedence: this, else the top-level
    /// `gateway_id`, else the host name (this section is the contract of external checks, so it
    /// wins when both are set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_id: Option<String>,
    /// MQTT client id; must stay the same across restarts for the persistent session.
    /// Default `camgate-<gateway>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// First topic level(s). Default `camgate`.
    pub topic_prefix: String,
    /// Default 30.
    pub keep_alive_secs: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The password inline, or...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// ...a file holding it (relative paths are looked up in `$CREDENTIALS_DIRECTORY`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// TLS to the broker (same keys as a camera's `tls`: exactly one of `ca_file`,
    /// `fingerprint_sha256`, `insecure_skip_verify`); absent means plain TCP. rumqttc checks
    /// the certificate against `host` (`server_name` is not used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Publishes awaiting their PubAck at once (rumqttc's inflight, and the number of records
    /// read ahead of the committed cursor). Default 64.
    pub max_inflight: u16,
    /// Largest PUBLISH sent; a larger record is logged, counted as dead-lettered and skipped,
    /// since no retry can ever deliver it. Default 1048576.
    pub max_packet_bytes: usize,
    /// TCP connect + TLS + CONNACK, seconds. Default 10.
    pub connect_timeout_secs: u64,
    /// Reconnect backoff floor and cap, milliseconds. Defaults 1000 and 60000.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// How long a clean stop waits for PubAcks of what is in flight, milliseconds. Default 2000.
    pub shutdown_ack_timeout_ms: u64,
    /// Lag is logged this often while there is any, seconds. Default 30.
    pub lag_log_secs: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: 1883,
            gateway_id: None,
            client_id: None,
            topic_prefix: "camgate".into(),
            keep_alive_secs: 30,
            username: None,
            password: None,
            password_file: None,
            tls: None,
            max_inflight: 64,
            max_packet_bytes: 1024 * 1024,
            connect_timeout_secs: 10,
            backoff_min_ms: 1000,
            backoff_max_ms: 60_000,
            shutdown_ack_timeout_ms: 2000,
            lag_log_secs: 30,
        }
    }
}

impl MqttConfig {
    pub fn new(host: &str, port: u16, gateway_id: &str) -> Self {
        Self {
            host: host.into(),
            port,
            gateway_id: Some(gateway_id.into()),
            ..Self::default()
        }
    }

    /// The gateway's topic level: this section's `gateway_id`, else `gateway` (the one rule of
    /// `Config::gateway_id`) made a valid topic level.
    pub fn effective_gateway_id(&self, gateway: &str) -> String {
        self.gateway_id
            .clone()
            .unwrap_or_else(|| topic::level(gateway))
    }

    pub fn effective_client_id(&self, gateway: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("camgate-{gateway}"))
    }

    /// The password, read from `password_file` if that is how it is given.
    pub fn resolve_password(&self) -> Result<Option<String>, String> {
        match (&self.password, &self.password_file) {
            (Some(p), None) => Ok(Some(p.clone())),
            (None, None) => Ok(None),
            (None, Some(f)) => {
                crate::net::credentials::read_secret_file(f, "password_file").map(Some)
            }
            (Some(_), Some(_)) => Err("give at most one of password, password_file".into()),
        }
    }

    /// Appends every problem to `errs` (see `Config::validate`).
    pub fn validate(&self, errs: &mut Vec<String>) {
        if self.host.is_empty() {
            errs.push("mqtt.host: must not be empty".into());
        }
        if self.port == 0 {
            errs.push("mqtt.port: must not be 0".into());
        }
        if let Some(g) = &self.gateway_id {
            if g.is_empty() || topic::level(g) != *g {
                errs.push(format!("mqtt.gateway_id: {g:?} must be one non-empty topic level (no '/', '+', '#', control characters, leading '$')"));
            }
        }
        if self
            .client_id
            .as_deref()
            .is_some_and(|c| c.is_empty() || c.len() > 65535)
        {
            errs.push("mqtt.client_id: must be 1..=65535 bytes".into());
        }
        if !topic::valid_prefix(&self.topic_prefix) {
            errs.push(format!(
                "mqtt.topic_prefix: {:?} must be topic levels without wildcards or empty levels",
                self.topic_prefix
            ));
        }
        if !(1..=65535).contains(&self.keep_alive_secs) {
            errs.push(format!(
                "mqtt.keep_alive_secs: {} is outside 1..=65535",
                self.keep_alive_secs
            ));
        }
        if self.max_inflight == 0 {
            errs.push("mqtt.max_inflight: must be at least 1".into());
        }
        if self.max_packet_bytes < 1024 {
            errs.push(format!(
                "mqtt.max_packet_bytes: {} is below 1024",
                self.max_packet_bytes
            ));
        }
        if self.connect_timeout_secs == 0 {
            errs.push("mqtt.connect_timeout_secs: must be at least 1".into());
        }
        if self.backoff_min_ms == 0 || self.backoff_max_ms < self.backoff_min_ms {
            errs.push(format!(
                "mqtt: need 1 <= backoff_min_ms <= backoff_max_ms (got {} and {})",
                self.backoff_min_ms, self.backoff_max_ms
            ));
        }
        if self.lag_log_secs == 0 {
            errs.push("mqtt.lag_log_secs: must be at least 1".into());
        }
        if self.password.is_some() || self.password_file.is_some() {
            if self.username.is_none() {
                errs.push("mqtt.password: needs username".into());
            }
            if let Err(e) = self.resolve_password() {
                errs.push(format!("mqtt.password: {e}"));
            }
        }
        if let Some(t) = &self.tls {
            if let Err(e) = tls::client_config(t, &self.host) {
                errs.push(format!("mqtt.tls: {e}"));
            }
        }
    }

    /// rumqttc options: persistent session, QoS 1 will, bounded inflight.
    pub fn mqtt_options(&self, gateway: &str) -> Result<MqttOptions, MqttError> {
        let topics = Topics::new(&self.topic_prefix, gateway);
        let mut o = MqttOptions::new(
            self.effective_client_id(gateway),
            self.host.clone(),
            self.port,
        );
        o.set_clean_session(false)
            .set_keep_alive(Duration::from_secs(self.keep_alive_secs.max(1)))
            .set_inflight(self.max_inflight.max(1))
            .set_max_packet_size(self.max_packet_bytes, self.max_packet_bytes)
            .set_last_will(LastWill::new(
                topics.status(),
                "offline",
                QoS::AtLeastOnce,
                true,
            ));
        if let Some(u) = &self.username {
            let p = self
                .resolve_password()
                .map_err(MqttError::Config)?
                .unwrap_or_default();
            o.set_credentials(u.clone(), p);
        }
        if let Some(t) = &self.tls {
            let ct = tls::client_config(t, &self.host)?;
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                ct.config,
            )));
        }
        Ok(o)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("mqtt {0}")]
    Tls(#[from] TlsError),
    #[error("mqtt: {0}")]
    Config(String),
}

/// Called with each record's offset when its PubAck arrives (benchmarks measure latency with it).
pub type AckObserver = Arc<dyn Fn(Offset) + Send + Sync>;

/// Most `matches/<key>` publishes of one face result (distinct persons in one picture beyond
/// this are in the `faces/<camera>` publish only); bounds the client's request queue.
const MAX_MATCH_TOPICS: usize = 8;
/// Publishes one record may need: its topic, plus the match topics of a face result.
const MAX_PARTS: usize = 1 + MAX_MATCH_TOPICS;

/// A record on its way to the broker: the topics it goes to (all with the record as payload)
/// and how many of those publishes are not acknowledged yet.
#[derive(Default)]
struct Out {
    topics: Vec<String>,
    payload: Bytes,
    pending: usize,
    received_at_ms: u64,
}

enum LoopMsg {
    Event(Event),
    Down(ConnectionError),
}

/// Owns the event loop so that no `poll()` is ever dropped halfway through a write.
async fn drive(mut el: EventLoop, tx: mpsc::Sender<LoopMsg>, mut resume: mpsc::Receiver<()>) {
    loop {
        let polled = tokio::select! {
            r = el.poll() => r,
            // The sink is gone (stopped or aborted): drop the connection now, so that the
            // broker publishes the last will at once rather than at the next keep-alive.
            _ = tx.closed() => return,
        };
        match polled {
            Ok(ev) => {
                if tx.send(LoopMsg::Event(ev)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Packets read before the error were handled by rumqttc (acks included): they
                // must reach the sink before it forgets the connection's packet ids.
                let buffered: Vec<Event> = el.state.events.drain(..).collect();
                for ev in buffered {
                    if tx.send(LoopMsg::Event(ev)).await.is_err() {
                        return;
                    }
                }
                if tx.send(LoopMsg::Down(e)).await.is_err() || resume.recv().await.is_none() {
                    return;
                }
                // The sink re-publishes everything unacknowledged itself; drop rumqttc's copies
                // (and any request queued for the dead connection) so that nothing goes out
                // under a packet id the sink does not know.
                el.clean();
                el.pending.clear();
                el.state.collision = None;
            }
        }
    }
}

struct Forwarder {
    cfg: MqttConfig,
    topics: Topics,
    client: AsyncClient,
    events: mpsc::Receiver<LoopMsg>,
    resume: mpsc::Sender<()>,
    outbox: Outbox,
    records: mpsc::Receiver<Batch>,
    /// Read but not yet published (the window was full): at most one batch.
    ahead: VecDeque<Record>,
    acked_tx: watch::Sender<Acked>,
    acked: Acked,
    window: CommitWindow<Out>,
    tracker: PkidTracker,
    status: Arc<SinkStatus>,
    connected: bool,
    outbox_closed: bool,
    backoff: Backoff,
    reconnect_at: Option<Instant>,
    status_acked: bool,
    on_ack: Option<AckObserver>,
}

/// Runs until `shutdown`, then waits (bounded) for the PubAcks of what is out, commits, publishes
/// the retained `offline` and disconnects. Returns the number of events delivered.
pub async fn run(
    outbox: Outbox,
    cfg: MqttConfig,
    gateway: String,
    status: Arc<SinkStatus>,
    shutdown: CancellationToken,
) -> Result<u64, MqttError> {
    run_observed(outbox, cfg, gateway, status, shutdown, None).await
}

pub async fn run_observed(
    outbox: Outbox,
    cfg: MqttConfig,
    gateway: String,
    status: Arc<SinkStatus>,
    shutdown: CancellationToken,
    on_ack: Option<AckObserver>,
) -> Result<u64, MqttError> {
    let consumer = outbox.consumer(CONSUMER)?;
    let opts = cfg.mqtt_options(&gateway)?;
    let inflight = usize::from(cfg.max_inflight.max(1));
    // Room for every record of the window plus the status messages: `try_publish` never
    // finds the request channel full.
    let (client, mut el) = AsyncClient::new(opts, inflight * MAX_PARTS + 4);
    let mut net = NetworkOptions::new();
    net.set_connection_timeout(cfg.connect_timeout_secs.max(1));
    el.set_network_options(net);
    let (tx, events) = mpsc::channel(inflight * 2 + 16);
    let (resume, resume_rx) = mpsc::channel(1);
    let driver = tokio::spawn(drive(el, tx, resume_rx));
    let (batches_tx, records) = mpsc::channel(1);
    let (acked_tx, acked_rx) = watch::channel(Acked::default());
    let reader_stop = CancellationToken::new();
    let reader = tokio::spawn(read_and_commit(
        consumer,
        inflight,
        COMMIT_EVERY,
        batches_tx,
        acked_rx,
        status.clone(),
        reader_stop.clone(),
    ));
    let mut f = Forwarder {
        topics: Topics::new(&cfg.topic_prefix, &gateway),
        backoff: Backoff::new(
            Duration::from_millis(cfg.backoff_min_ms.max(1)),
            Duration::from_millis(cfg.backoff_max_ms.max(1)),
        ),
        window: CommitWindow::new(inflight, usize::MAX),
        cfg,
        client,
        events,
        resume,
        outbox,
        records,
        ahead: VecDeque::new(),
        acked_tx,
        acked: Acked::default(),
        tracker: PkidTracker::default(),
        status,
        connected: false,
        outbox_closed: false,
        reconnect_at: None,
        status_acked: false,
        on_ack,
    };
    info!(host = %f.cfg.host, port = f.cfg.port, gateway = %gateway, "mqtt sink starting");
    let result = f.forward(&shutdown).await;
    f.wait_for_acks().await;
    // Commit what is acknowledged before telling the world we are offline.
    reader_stop.cancel();
    let committed = reader
        .await
        .map_err(|e| MqttError::Config(format!("mqtt outbox reader: {e}")));
    f.go_offline().await;
    driver.abort();
    f.status.set_connected(false);
    result?;
    let delivered = committed??;
    info!(delivered, "mqtt sink stopped");
    Ok(delivered)
}

impl Forwarder {
    async fn forward(&mut self, shutdown: &CancellationToken) -> Result<(), MqttError> {
        let lag_every = Duration::from_secs(self.cfg.lag_log_secs.max(1));
        let mut lag_tick = tokio::time::interval_at(Instant::now() + lag_every, lag_every);
        lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let can_read = self.ahead.is_empty() && !self.outbox_closed;
            let reconnect_at = self.reconnect_at;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = lag_tick.tick() => self.log_lag(),
                _ = sleep_until_some(reconnect_at), if reconnect_at.is_some() => {
                    self.reconnect_at = None;
                    // The driver waits for this before it reconnects (capacity 1, one waiter).
                    let _ = self.resume.try_send(());
                }
                msg = self.events.recv() => match msg {
                    Some(m) => self.on_msg(m),
                    None => return Err(MqttError::Config("mqtt event loop task ended".into())),
                },
                batch = self.records.recv(), if can_read => match batch {
                    Some(Ok(records)) => {
                        self.ahead.extend(records);
                        self.pump();
                    }
                    Some(Err(e)) => return Err(e.into()),
                    // The outbox was shut down.
                    None => {
                        self.outbox_closed = true;
                        return Ok(());
                    }
                },
            }
        }
    }

    fn on_msg(&mut self, m: LoopMsg) {
        match m {
            LoopMsg::Event(ev) => self.on_event(ev),
            LoopMsg::Down(e) => self.on_down(e),
        }
    }

    fn on_event(&mut self, ev: Event) {
        let tracked = match ev {
            Event::Incoming(Packet::ConnAck(ack)) => {
                self.on_connected(ack.session_present);
                Ok(())
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                self.on_puback(ack.pkid);
                Ok(())
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => self.tracker.on_publish(pkid),
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => self.tracker.on_await_ack(pkid),
            _ => Ok(()),
        };
        if let Err(e) = tracked {
            // Cannot happen with rumqttc 0.25's ordering; if it does, acks can no longer be
            // attributed: start over on a new connection, which re-sends everything unacked.
            error!(error = %e, "mqtt packet id tracking lost; reconnecting");
            self.status.set_error(&e);
            let _ = self.client.try_disconnect();
        }
    }

    fn on_connected(&mut self, session_present: bool) {
        self.connected = true;
        self.backoff.reset();
        self.status.set_connected(true);
        let resend = self.window.unsettled();
        info!(session_present, resend, "mqtt connected");
        self.status_acked = false;
        self.publish(
            Slot::Status,
            self.topics.status(),
            Bytes::from_static(b"online"),
            true,
        );
        let again: Vec<Offset> = self.window.unsettled_iter().map(|(o, _)| o).collect();
        for o in again {
            self.publish_record(o);
        }
        self.pump();
    }

    fn on_down(&mut self, e: ConnectionError) {
        self.tracker.reset();
        if self.connected {
            warn!(error = %e, unacked = self.window.unsettled(), "mqtt connection lost; unacknowledged events will be published again");
        } else {
            debug!(error = %e, "mqtt connect failed");
        }
        self.connected = false;
        self.status.set_connected(false);
        self.status.retries.fetch_add(1, Ordering::Relaxed);
        self.status.set_error(&e);
        let delay = self.backoff.next_delay(&mut rand::rng());
        self.reconnect_at = Some(Instant::now() + delay);
    }

    fn on_puback(&mut self, pkid: u16) {
        match self.tracker.on_puback(pkid) {
            Some(Slot::Record(o)) => {
                let last = self.window.get_mut(o).is_some_and(|out| {
                    out.pending = out.pending.saturating_sub(1);
                    out.pending == 0
                });
                if last && self.window.settle(o).is_some() {
                    if let Some(cb) = &self.on_ack {
                        cb(o);
                    }
                }
                self.advance();
                self.pump();
            }
            Some(Slot::Status) => self.status_acked = true,
            None => debug!(pkid, "PubAck for no tracked publish"),
        }
    }

    fn publish(&mut self, slot: Slot, topic: String, payload: Bytes, retain: bool) {
        // `try_publish` copies into a Vec; events are small and the channel has room for the
        // whole window, so it never waits.
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
        {
            Ok(()) => self.tracker.queued(slot),
            Err(e) => {
                // Stays unacknowledged in the window: the next connection sends it again.
                error!(error = %e, "mqtt request channel refused a publish; reconnecting");
                let _ = self.client.try_disconnect();
            }
        }
    }

    /// Hands the acknowledged prefix to the reader task for committing.
    fn advance(&mut self) {
        if let Some((last, n)) = self.window.take_committable() {
            self.acked.through = Some(last);
            self.acked.count += n as u64;
            self.acked_tx.send_replace(self.acked);
        }
        self.update_oldest();
    }

    /// Publishes read-ahead records while connected and the window has room.
    fn pump(&mut self) {
        while self.connected && self.window.room() > 0 {
            let Some(r) = self.ahead.pop_front() else {
                break;
            };
            let (topics, received_at_ms) = self.topics_of(&r);
            if topics.is_empty() {
                // Not for MQTT (a transaction's notification): passed over, in order.
                if self
                    .window
                    .push(r.offset, r.data.len(), Out::default())
                    .is_ok()
                {
                    self.window.settle(r.offset);
                    self.advance();
                }
                continue;
            }
            let too_large = topics
                .iter()
                .any(|t| t.len() + r.data.len() + PUBLISH_OVERHEAD > self.cfg.max_packet_bytes);
            let out = Out {
                pending: topics.len(),
                topics,
                payload: r.data.clone(),
                received_at_ms,
            };
            if let Err(e) = self.window.push(r.offset, r.data.len(), out) {
                // `pump` only runs with room; a violation is a bug, not a data issue.
                error!(error = %e, "mqtt commit window refused a record");
                continue;
            }
            if too_large {
                error!(
                    offset = r.offset,
                    bytes = r.data.len(),
                    max = self.cfg.max_packet_bytes,
                    "event larger than mqtt.max_packet_bytes; skipped"
                );
                self.status.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.status.set_error(format!(
                    "event at offset {} too large for mqtt.max_packet_bytes",
                    r.offset
                ));
                self.window.settle(r.offset);
                self.advance();
                continue;
            }
            self.publish_record(r.offset);
        }
        self.update_oldest();
    }

    /// Where a record goes, and its receive time (for the lag figures).
    fn topics_of(&self, r: &Record) -> (Vec<String>, u64) {
        match Stored::parse(&r.data) {
            Ok(Stored::Event(e)) => (
                vec![self.topics.event(&e.camera, &e.event_type)],
                e.received_at_ms,
            ),
            Ok(Stored::FaceResult(h)) => {
                let mut topics = vec![self.topics.faces(&h.camera)];
                let keys = h.matched_keys();
                topics.extend(
                    keys.iter()
                        .take(MAX_MATCH_TOPICS)
                        .map(|k| self.topics.matches(k)),
                );
                (topics, h.received_at_ms)
            }
            Ok(Stored::Notice(_)) => (Vec::new(), 0),
            Err(err) => {
                // Not dropped: whatever is stored is forwarded, under a topic that says so.
                warn!(offset = r.offset, error = %err, "outbox record is neither an event nor a face result; publishing under _unknown");
                (vec![self.topics.event("_unknown", "_unknown")], 0)
            }
        }
    }

    /// Publishes every part of a record in the window (again, after a reconnect).
    fn publish_record(&mut self, offset: Offset) {
        let Some(out) = self.window.get_mut(offset) else {
            return;
        };
        out.pending = out.topics.len();
        let (topics, payload) = (out.topics.clone(), out.payload.clone());
        for t in topics {
            self.publish(Slot::Record(offset), t, payload.clone(), false);
        }
    }

    fn update_oldest(&self) {
        self.status.set_oldest_pending(
            self.window
                .oldest_unsettled()
                .map(|(_, o)| o.received_at_ms),
        );
    }

    fn log_lag(&self) {
        let snap = self
            .status
            .snapshot(&self.outbox.stats(), crate::clock::unix_now_ms());
        if snap.lag_events > 0 {
            info!(
                lag_events = snap.lag_events,
                lag_bytes = snap.lag_bytes,
                oldest_pending_age_ms = snap.oldest_pending_age_ms,
                connected = snap.connected,
                retries = snap.retries,
                "mqtt sink lag"
            );
        }
    }

    /// Waits for a loop message until `deadline`; `false` when it passed or the loop is gone.
    async fn step_until(&mut self, deadline: Instant) -> bool {
        match tokio::time::timeout_at(deadline, self.events.recv()).await {
            Ok(Some(m)) => {
                self.on_msg(m);
                true
            }
            _ => false,
        }
    }

    /// Stop reading; give what is out a bounded time to be acknowledged.
    async fn wait_for_acks(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(self.cfg.shutdown_ack_timeout_ms);
        while self.connected && self.window.unsettled() > 0 && self.step_until(deadline).await {}
        if self.window.unsettled() > 0 {
            warn!(unacked = self.window.unsettled(), "mqtt sink stopping with unacknowledged events; they are sent again at the next start");
        }
    }

    /// Retained `offline` (acknowledged, bounded wait), then DISCONNECT.
    async fn go_offline(&mut self) {
        if !self.connected {
            return;
        }
        self.status_acked = false;
        self.publish(
            Slot::Status,
            self.topics.status(),
            Bytes::from_static(b"offline"),
            true,
        );
        let until = Instant::now() + OFFLINE_WAIT;
        while self.connected && !self.status_acked && self.step_until(until).await {}
        if !self.status_acked {
            warn!("retained offline not acknowledged before disconnecting");
        }
        let _ = self.client.try_disconnect();
        let until = Instant::now() + Duration::from_millis(500);
        while self.connected {
            match tokio::time::timeout_at(until, self.events.recv()).await {
                Ok(Some(LoopMsg::Event(Event::Outgoing(Outgoing::Disconnect))))
                | Ok(None)
                | Err(_) => break,
                Ok(Some(m)) => self.on_msg(m),
            }
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    #[test]
    fn contract_section_parses_with_defaults() {
        let c =
            Config::from_toml("[mqtt]\nhost = \"127.0.0.1\"\nport = 1883\ngateway_id = \"gw-1\"\n")
                .unwrap();
        c.validate().unwrap();
        let m = c.mqtt.unwrap();
        assert_eq!(m, MqttConfig::new("127.0.0.1", 1883, "gw-1"));
        assert_eq!(m.max_inflight, 64);
        assert_eq!(m.effective_client_id("gw-1"), "camgate-gw-1");
        assert!(
            Config::from_toml("").unwrap().mqtt.is_none(),
            "absent section disables the sink"
        );
        assert!(
            Config::from_toml("[mqtt]\nhost = \"h\"\nbogus = 1\n").is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn gateway_id_precedence() {
        let mut m = MqttConfig::new("h", 1883, "from-mqtt");
        assert_eq!(m.effective_gateway_id("top"), "from-mqtt");
        m.gateway_id = None;
        assert_eq!(m.effective_gateway_id("top"), "top");
        // The gateway id of the one rule, made a single topic level.
        assert_eq!(m.effective_gateway_id("a/b+#"), "a_b__");
        let host = m.effective_gateway_id(&Config::default().gateway_id());
        assert!(!host.is_empty() && topic::level(&host) == host);
    }

    #[test]
    fn every_mqtt_error_is_reported() {
        let text = "[mqtt]\nhost = \"\"\nport = 0\ngateway_id = \"a/b\"\ntopic_prefix = \"x/#\"\nkeep_alive_secs = 0\nmax_inflight = 0\nbackoff_min_ms = 10\nbackoff_max_ms = 5\npassword = \"p\"\npassword_file = \"/nonexistent\"\ntls = { ca_file = \"/nonexistent.pem\" }\n";
        let err = Config::from_toml(text).unwrap().validate().unwrap_err();
        let ConfigError::Invalid(list) = err else {
            panic!("{err}")
        };
        let all = list.join("\n");
        for needle in [
            "mqtt.host",
            "mqtt.port",
            "mqtt.gateway_id",
            "mqtt.topic_prefix",
            "mqtt.keep_alive_secs",
            "mqtt.max_inflight",
            "backoff_min_ms",
            "needs username",
            "at most one of password",
            "mqtt.tls",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn password_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        let m = MqttConfig {
            username: Some("u".into()),
            password_file: Some(p),
            ..MqttConfig::new("h", 1, "g")
        };
        assert_eq!(m.resolve_password().unwrap().as_deref(), Some("s3cret"));
        let mut errs = Vec::new();
        m.validate(&mut errs);
        assert!(errs.is_empty(), "{errs:?}");
    }

    /// rumqttc has no reconnect backoff (rumqtt#703); without ours a refused connection would be
    /// retried in a tight loop. On a paused clock, 60 virtual seconds against a closed port with
    /// a 1..4 s backoff allow at most 61 attempts, and the sink keeps trying.
    #[tokio::test(start_paused = true)]
    async fn reconnects_are_spaced_by_the_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&crate::outbox::OutboxConfig {
            dir: dir.path().into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = MqttConfig {
            backoff_min_ms: 1000,
            backoff_max_ms: 4000,
            connect_timeout_secs: 1,
            ..MqttConfig::new("127.0.0.1", port, "gw")
        };
        let status = Arc::new(SinkStatus::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            outbox.clone(),
            cfg,
            "gw".into(),
            status.clone(),
            stop.clone(),
        ));
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let retries = status.retries.load(Ordering::Relaxed);
        assert!((3..=61).contains(&retries), "{retries} attempts in 60 s");
        let snap = status.snapshot(&outbox.stats(), 0);
        assert!(!snap.connected);
        assert!(snap.last_error.is_some());
        stop.cancel();
        assert_eq!(task.await.unwrap().unwrap(), 0);
    }
}
