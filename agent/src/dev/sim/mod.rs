//! A simulated camera: the server side of the Message Channel as a camera speaks it, for tests,
//! `camgate demo`, `camgate sim-camera` and the benchmarks.
//!
//! It checks the CONNECT sign (window + replay), answers PINGREQ, publishes
//! `dynamic_detect_event` / `face_recog_event` at a set rate, keeps every event until PUBACK and
//! re-sends the unacknowledged ones after a reconnect, serves `pic_url` pictures over HTTPS,
//! and injects faults on demand ([`Faults`]).

mod cert;
mod conn;
pub mod hook;
mod media;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use cert::SimCert;
pub use media::SNAPSHOT_JPEG;

use crate::channel::frame::CrcScope;
use crate::sign::Verifier;

/// Faults the simulator injects; changeable while it runs ([`SimCamera::set_faults`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Corrupt the CRC of every Nth PUBLISH.
    pub bad_crc_every: Option<u64>,
    /// Do not answer PINGREQ.
    pub drop_pings: bool,
    /// After N PUBLISHes on a connection, write half a frame and close.
    pub close_mid_frame_after: Option<u64>,
    /// After N PUBLISHes on a connection, send DISCONNECT as 0x11 and close.
    pub disconnect_0x11_after: Option<u64>,
    /// Answer CONNECT with this non-zero code.
    pub refuse_connect: Option<i64>,
    /// Answer SUBSCRIBE with this non-zero code.
    pub refuse_subscribe: Option<i64>,
    /// Answer UNSUBSCRIBE with type 7 instead of 8 (the text's "0x06 or 0x07").
    pub unsuback_as_7: bool,
    /// Publish every Nth event twice in a row (as firmware that re-sends too early would).
    pub duplicate_every: Option<u64>,
}

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub listen: SocketAddr,
    pub app_id: String,
    pub secret: String,
    /// The camera's serial number (`sn` in events).
    pub serial: String,
    /// Events published per second on each subscribed connection (0: none).
    pub rate_per_sec: f64,
    /// Stop generating new events after this many (re-sends still happen).
    pub max_events: Option<u64>,
    pub crc_scope: CrcScope,
    pub faults: Faults,
    /// Serve pictures over HTTPS for `pic_url` (a second port).
    pub serve_media: bool,
    /// CONNECT sign time window, seconds.
    pub sign_window_secs: u64,
    /// Require a client certificate issued by this CA (DER).
    pub require_client_ca: Option<rustls::pki_types::CertificateDer<'static>>,
    /// Keep the first send time of every event for [`SimCamera::take_send_times`] (benchmarks
    /// that time an event beyond camgate; grows with every event, so off by default).
    pub record_send_times: bool,
}

impl SimConfig {
    pub fn new(app_id: &str, secret: &str) -> Self {
        SimConfig {
            listen: "127.0.0.1:0".parse().expect("literal address"),
            app_id: app_id.into(),
            secret: secret.into(),
            serial: "FS101D8BS00106".into(),
            rate_per_sec: 10.0,
            max_events: None,
            crc_scope: CrcScope::Payload,
            faults: Faults::default(),
            serve_media: true,
            sign_window_secs: 300,
            require_client_ca: None,
            record_send_times: false,
        }
    }
}

/// What the simulator observed; tests and benchmarks read it.
#[derive(Default)]
pub struct SimState {
    pub(crate) next_event_id: AtomicI64,
    /// Published and not yet acknowledged: id → (payload, first sent at, re-sent since).
    pub(crate) unacked: Mutex<BTreeMap<i64, (Bytes, Instant, bool)>>,
    pub acked: AtomicU64,
    pub acks_unknown: AtomicU64,
    pub published: AtomicU64,
    pub resent: AtomicU64,
    pub connects: AtomicU64,
    pub sign_rejected: AtomicU64,
    pub pings: AtomicU64,
    pub disconnects_received: AtomicU64,
    pub subscribes: AtomicU64,
    pub unsubscribes: AtomicU64,
    pub media_served: AtomicU64,
    pub media_refused: AtomicU64,
    /// PUBACK latency of each first-time publish, microseconds.
    pub(crate) latencies_us: Mutex<Vec<u32>>,
    /// Event id → first PUBLISH, when `SimConfig::record_send_times`.
    pub(crate) sent_at: Mutex<std::collections::HashMap<i64, Instant>>,
    pub(crate) faults: Mutex<Faults>,
    pub(crate) keep_alive_seen: Mutex<Option<u64>>,
    pub(crate) media_secret: Mutex<String>,
    /// While set, no new events are generated (re-sends still happen).
    pub(crate) paused: std::sync::atomic::AtomicBool,
    /// The pictures served for face events, event id `i` getting `pictures[i % len]`; empty:
    /// the built-in snapshot.
    pub(crate) pictures: Mutex<Vec<Bytes>>,
    /// While set, the picture server accepts connections and never answers.
    pub(crate) media_stall: std::sync::atomic::AtomicBool,
}

/// A running simulated camera.
pub struct SimCamera {
    pub addr: SocketAddr,
    pub media_addr: Option<SocketAddr>,
    pub cert: Arc<SimCert>,
    pub state: Arc<SimState>,
    shutdown: CancellationToken,
}

/// Totals for summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SimTotals {
    pub published: u64,
    pub acked: u64,
    pub unacked: u64,
    pub resent: u64,
    pub connects: u64,
    pub sign_rejected: u64,
}

impl SimCamera {
    /// Binds and starts serving with a freshly generated self-signed certificate.
    pub async fn start(cfg: SimConfig) -> std::io::Result<SimCamera> {
        let cert = Arc::new(SimCert::generate().map_err(std::io::Error::other)?);
        Self::start_with_cert(cfg, cert).await
    }

    pub async fn start_with_cert(cfg: SimConfig, cert: Arc<SimCert>) -> std::io::Result<SimCamera> {
        let listener = TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let state = Arc::new(SimState::default());
        state.next_event_id.store(1, Ordering::Relaxed);
        *state.faults.lock().unwrap() = cfg.faults.clone();
        *state.media_secret.lock().unwrap() = cfg.secret.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(
            cert.server_config(cfg.require_client_ca.as_ref())
                .map_err(std::io::Error::other)?,
        );
        let media_addr = if cfg.serve_media {
            Some(
                media::serve(
                    SocketAddr::new(addr.ip(), 0),
                    acceptor.clone(),
                    state.clone(),
                    shutdown.clone(),
                )
                .await?,
            )
        } else {
            None
        };
        let verifier = Arc::new(Verifier::new(cfg.sign_window_secs, 100_000));
        let cfg = Arc::new(cfg);
        {
            let (state, shutdown) = (state.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    let (tcp, peer) = tokio::select! {
                        r = listener.accept() => match r {
                            Ok(x) => x,
                            Err(e) => { warn!(error = %e, "sim: accept failed"); tokio::time::sleep(Duration::from_millis(50)).await; continue; }
                        },
                        _ = shutdown.cancelled() => break,
                    };
                    let _ = tcp.set_nodelay(true);
                    let c = conn::Conn {
                        cfg: cfg.clone(),
                        state: state.clone(),
                        verifier: verifier.clone(),
                        media_addr,
                        shutdown: shutdown.clone(),
                    };
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        if let Err(e) = c.serve(acceptor, tcp).await {
                            debug!(%peer, error = %e, "sim: connection ended");
                        }
                    });
                }
            });
        }
        Ok(SimCamera {
            addr,
            media_addr,
            cert,
            state,
            shutdown,
        })
    }

    /// SHA-256 fingerprint of the certificate, for `tls.fingerprint_sha256`.
    pub fn fingerprint(&self) -> String {
        self.cert.fingerprint()
    }

    pub fn set_faults(&self, f: Faults) {
        *self.state.faults.lock().unwrap() = f;
    }

    pub fn totals(&self) -> SimTotals {
        let s = &self.state;
        SimTotals {
            published: s.published.load(Ordering::Relaxed),
            acked: s.acked.load(Ordering::Relaxed),
            unacked: s.unacked.lock().unwrap().len() as u64,
            resent: s.resent.load(Ordering::Relaxed),
            connects: s.connects.load(Ordering::Relaxed),
            sign_rejected: s.sign_rejected.load(Ordering::Relaxed),
        }
    }

    /// Ids published and still waiting for PUBACK.
    pub fn unacked_ids(&self) -> Vec<i64> {
        self.state.unacked.lock().unwrap().keys().copied().collect()
    }

    /// PUBACK latencies (µs) recorded so far, and clears them.
    pub fn take_latencies(&self) -> Vec<u32> {
        std::mem::take(&mut *self.state.latencies_us.lock().unwrap())
    }

    /// First PUBLISH time of each event since the last call (needs `record_send_times`).
    pub fn take_send_times(&self) -> std::collections::HashMap<i64, Instant> {
        std::mem::take(&mut *self.state.sent_at.lock().unwrap())
    }

    /// The keep_alive camgate asked for in its last CONNECT.
    pub fn keep_alive_seen(&self) -> Option<u64> {
        *self.state.keep_alive_seen.lock().unwrap()
    }

    /// The pictures served for face events from now on (event id `i` gets `pictures[i % len]`;
    /// empty: the built-in snapshot). Any bytes: tests serve broken images too.
    pub fn set_pictures(&self, pictures: Vec<Bytes>) {
        *self.state.pictures.lock().unwrap() = pictures;
    }

    /// A picture server that accepts and never answers (`true`), or works again (`false`).
    pub fn set_media_stall(&self, stall: bool) {
        self.state.media_stall.store(stall, Ordering::Relaxed);
    }

    /// Pauses or resumes generating new events.
    pub fn set_paused(&self, paused: bool) {
        self.state.paused.store(paused, Ordering::Relaxed);
    }

    /// Stops accepting and closes every connection.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for SimCamera {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(crate) fn count(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}
