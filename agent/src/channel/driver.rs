//! One tokio task per camera: owns the TCP+TLS connection, feeds bytes and time to the sans-IO
//! [`Session`], hands events to the [`Intake`], and sends PUBACK only once the intake says the
//! event is durable. Reconnects with backoff; on shutdown it drains pending acks, then sends
//! DISCONNECT.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use tokio_util::codec::Decoder;

use super::frame::{CodecError, FrameCodec, FrameError, OwnedFrame, Role};
use super::session::{Session, SessionConfig, SessionError, SessionEvent, State};
use crate::camera::CameraConfig;
use crate::clock::SharedClock;
use crate::event::{EventView, Source};
use crate::intake::{Accepted, Intake, IntakeError};
use crate::net::backoff::Backoff;
use crate::net::tls::{self, ClientTls, TlsError};
use crate::outbox::OutboxError;
use crate::status::{inc, CameraStatus, LinkState};

/// Events read but not yet durable, per camera. When reached, the task stops reading the
/// socket (TCP back-pressure reaches the camera) instead of buffering more.
pub const MAX_IN_FLIGHT: usize = 512;
/// An event on its way into the outbox; its PUBACK waits for it.
type StoreFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Accepted, IntakeError>> + Send>>;

/// How long shutdown or a protocol error waits for pending stores before giving up on acking.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("camera config: {0}")]
    Config(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("TCP connect to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake: {0}")]
    Handshake(#[source] std::io::Error),
    #[error("timed out after {0:?} in {1}")]
    Timeout(Duration, &'static str),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("camera closed the connection")]
    Eof,
    #[error("protocol error: {0}")]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("protocol error: PUBLISH payload: {0}")]
    BadEvent(#[source] crate::event::EventError),
    #[error("outbox cannot take events ({0}); not acking, camera keeps them")]
    OutboxRefused(#[source] OutboxError),
}

impl From<CodecError> for DriverError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Frame(f) => DriverError::Frame(f),
            CodecError::Io(io) => DriverError::Io(io),
        }
    }
}

impl DriverError {
    /// Stable label for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            DriverError::Config(_) => "config",
            DriverError::Tls(_) => "tls_config",
            DriverError::Connect { .. } => "connect",
            DriverError::Handshake(_) => "tls_handshake",
            DriverError::Timeout(..) => "timeout",
            DriverError::Io(_) => "io",
            DriverError::Eof => "eof",
            DriverError::Frame(FrameError::BadCrc { .. }) => "bad_crc",
            DriverError::Frame(FrameError::BadFlag(_)) => "bad_flag",
            DriverError::Frame(FrameError::UnknownType(_)) => "unknown_type",
            DriverError::Frame(FrameError::Oversize { .. }) => "oversize",
            DriverError::Session(e) => e.kind(),
            DriverError::BadEvent(_) => "bad_event",
            DriverError::OutboxRefused(OutboxError::Full { .. }) => "outbox_full",
            DriverError::OutboxRefused(_) => "outbox_io",
        }
    }

    /// Whether the camera broke the protocol: DISCONNECT is sent before closing (DECISIONS §2).
    pub fn is_protocol_error(&self) -> bool {
        match self {
            DriverError::Frame(_) | DriverError::BadEvent(_) => true,
            DriverError::Session(e) => e.is_protocol_error(),
            _ => false,
        }
    }
}

/// Everything a camera task needs.
pub struct CameraTask {
    pub cfg: CameraConfig,
    pub intake: Arc<Intake>,
    pub status: Arc<CameraStatus>,
    pub shutdown: CancellationToken,
    /// Wall time for CONNECT's signed `timestamp`.
    pub clock: SharedClock,
}

enum Ended {
    Shutdown,
}

/// One connection's session state, as the I/O loop and the frame handler share it.
struct Link<'a> {
    session: &'a mut Session,
    pending: &'a mut FuturesUnordered<StoreFuture>,
    /// Set once SUBSCRIBE is acknowledged (the backoff then starts over).
    reached_ready: &'a mut bool,
}

impl CameraTask {
    /// Runs until `shutdown` is cancelled. Only a configuration error ends it early.
    pub async fn run(self) -> Result<(), DriverError> {
        let name = self.cfg.name.clone();
        let result = self.run_inner().await;
        if let Err(e) = &result {
            warn!(camera = %name, error = %e, "camera task stopped");
        }
        result
    }

    async fn run_inner(self) -> Result<(), DriverError> {
        let secret = self.cfg.resolve_secret().map_err(DriverError::Config)?;
        let tls = tls::client_config(&self.cfg.tls, self.cfg.host())?;
        let scfg = SessionConfig {
            app_id: self.cfg.app_id.clone(),
            secret,
            keep_alive: self.cfg.keep_alive(),
            events: self.cfg.events.clone(),
            connect_timeout: Duration::from_secs(self.cfg.connect_timeout),
            subscribe_timeout: Duration::from_secs(self.cfg.subscribe_timeout),
            max_missed_pings: 3,
            crc_scope: self.cfg.crc_scope,
        };
        let camera: Arc<str> = self.cfg.name.as_str().into();
        let mut backoff = Backoff::new(
            Duration::from_secs(self.cfg.backoff_min),
            Duration::from_secs(self.cfg.backoff_max),
        );
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            self.status.set_state(LinkState::Connecting);
            inc(&self.status.connects);
            let mut reached_ready = false;
            match self
                .connect_and_serve(&tls, &scfg, &camera, &mut reached_ready)
                .await
            {
                Ok(Ended::Shutdown) => break,
                Err(e) => {
                    self.status.count_error(e.kind(), e.to_string());
                    let sn = self.status.serial();
                    if e.is_protocol_error() {
                        warn!(camera = %camera, address = %self.cfg.address, sn = sn.as_deref().unwrap_or("-"), kind = e.kind(), error = %e, "protocol error; reconnecting");
                    } else {
                        warn!(camera = %camera, address = %self.cfg.address, sn = sn.as_deref().unwrap_or("-"), kind = e.kind(), error = %e, "session ended; reconnecting");
                    }
                }
            }
            if reached_ready {
                backoff.reset();
            }
            let delay = backoff.next_delay(&mut rand::rng());
            self.status.set_state(LinkState::Backoff);
            debug!(camera = %camera, delay_ms = delay.as_millis() as u64, attempt = backoff.attempt(), "backing off");
            tokio::select! {
                _ = sleep(delay) => {}
                _ = self.shutdown.cancelled() => break,
            }
        }
        self.status.set_state(LinkState::Stopped);
        Ok(())
    }

    async fn connect_and_serve(
        &self,
        tls: &ClientTls,
        scfg: &SessionConfig,
        camera: &Arc<str>,
        reached_ready: &mut bool,
    ) -> Result<Ended, DriverError> {
        let Some(stream) = self.connect(tls, camera).await? else {
            return Ok(Ended::Shutdown);
        };
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut session = Session::new(
            scfg.clone(),
            Instant::now().into_std(),
            self.clock.now_secs(),
            crate::sign::random_token(),
        );
        wr.write_all(&session.take_transmit()).await?;
        let mut pending: FuturesUnordered<StoreFuture> = FuturesUnordered::new();
        let mut link = Link {
            session: &mut session,
            pending: &mut pending,
            reached_ready,
        };
        let result = self.serve(&mut rd, &mut wr, &mut link, scfg, camera).await;
        self.close(&mut wr, &mut session, &mut pending, &result)
            .await;
        if let Ok(Ended::Shutdown) = result {
            info!(camera = %camera, "disconnected for shutdown");
        }
        result
    }

    /// TCP connect and TLS handshake, each within `connect_timeout`; `None` on shutdown.
    async fn connect(
        &self,
        tls: &ClientTls,
        camera: &Arc<str>,
    ) -> Result<Option<TlsStream<TcpStream>>, DriverError> {
        let limit = Duration::from_secs(self.cfg.connect_timeout);
        let tcp = tokio::select! {
            r = timeout(limit, TcpStream::connect(&self.cfg.address)) => r
                .map_err(|_| DriverError::Timeout(limit, "TCP connect"))?
                .map_err(|source| DriverError::Connect { address: self.cfg.address.clone(), source })?,
            _ = self.shutdown.cancelled() => return Ok(None),
        };
        tcp.set_nodelay(true)?;
        if tls.insecure {
            warn!(camera = %camera, address = %self.cfg.address, "TLS certificate NOT verified (insecure_skip_verify = true); lab use only");
        }
        let connector = TlsConnector::from(tls.config.clone());
        tokio::select! {
            r = timeout(limit, connector.connect(tls.server_name.clone(), tcp)) => Ok(Some(r
                .map_err(|_| DriverError::Timeout(limit, "TLS handshake"))?
                .map_err(DriverError::Handshake)?)),
            _ = self.shutdown.cancelled() => Ok(None),
        }
    }

    /// The session's I/O loop: bytes in, frames through the session, stored events acked, timers,
    /// bytes out. Ends on shutdown or the first error.
    async fn serve(
        &self,
        rd: &mut (impl AsyncRead + Unpin),
        wr: &mut (impl AsyncWrite + Unpin),
        link: &mut Link<'_>,
        scfg: &SessionConfig,
        camera: &Arc<str>,
    ) -> Result<Ended, DriverError> {
        let mut codec = FrameCodec::new(Role::Client).with_crc_scope(scfg.crc_scope);
        let mut buf = BytesMut::with_capacity(16 * 1024);
        loop {
            let deadline = link.session.poll_deadline().map(Instant::from_std);
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Ok(Ended::Shutdown),
                Some(done) = link.pending.next(), if !link.pending.is_empty() => {
                    self.on_stored(link.session, done)?;
                }
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    link.session.handle_timeout(Instant::now().into_std())?;
                }
                n = rd.read_buf(&mut buf), if link.pending.len() < MAX_IN_FLIGHT => {
                    // A camera that drops the TCP connection without TLS close_notify is
                    // the same event as a clean close for us.
                    match n {
                        Ok(0) => return Err(DriverError::Eof),
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(DriverError::Eof),
                        Err(e) => return Err(e.into()),
                    }
                    // Decode every complete frame in the buffer; a partial one waits for more bytes.
                    while let Some(frame) = Decoder::decode(&mut codec, &mut buf)? {
                        self.on_frame(link, frame, camera, &scfg.events)?;
                    }
                    buf.reserve(4096);
                }
            }
            if link.session.has_transmit() {
                wr.write_all(&link.session.take_transmit()).await?;
            }
        }
    }

    /// Whatever ended the session: events already handed to the outbox are acked if they become
    /// durable soon (so the camera need not re-send them), then DISCONNECT where the end calls
    /// for it.
    async fn close(
        &self,
        wr: &mut (impl AsyncWrite + Unpin),
        session: &mut Session,
        pending: &mut FuturesUnordered<StoreFuture>,
        result: &Result<Ended, DriverError>,
    ) {
        let drain = async {
            while let Some(done) = pending.next().await {
                if self.on_stored(session, done).is_err() {
                    break;
                }
            }
        };
        let _ = timeout(DRAIN_TIMEOUT, drain).await;
        let protocol_error = matches!(result, Err(e) if e.is_protocol_error());
        if session.state() != State::Closed
            && (protocol_error
                || matches!(
                    result,
                    Ok(Ended::Shutdown) | Err(DriverError::OutboxRefused(_))
                ))
        {
            session.disconnect();
        }
        if session.has_transmit() {
            let _ = timeout(Duration::from_secs(1), async {
                wr.write_all(&session.take_transmit()).await?;
                wr.flush().await?;
                wr.shutdown().await
            })
            .await;
        }
    }

    /// One decoded frame through the session; a PUBLISH goes to the intake (acked once stored).
    fn on_frame(
        &self,
        link: &mut Link<'_>,
        frame: OwnedFrame,
        camera: &Arc<str>,
        events: &[String],
    ) -> Result<(), DriverError> {
        if frame.quirk.is_some() {
            inc(&self.status.quirks);
            debug!(camera = %camera, quirk = ?frame.quirk, "accepted protocol quirk");
        }
        match link
            .session
            .handle_frame(frame.as_frame(), Instant::now().into_std())?
        {
            SessionEvent::Connected => debug!(camera = %camera, "CONNACK ok"),
            SessionEvent::Subscribed => {
                *link.reached_ready = true;
                inc(&self.status.sessions_ready);
                self.status.set_state(LinkState::Ready);
                info!(camera = %camera, events = ?events, "subscribed");
            }
            SessionEvent::Unsubscribed => info!(camera = %camera, "unsubscribed"),
            SessionEvent::Publish(_) => {
                if self.status.serial().is_none() {
                    note_serial(&self.status, &frame.payload);
                }
                link.pending.push(Box::pin(self.intake.clone().accept(
                    camera.clone(),
                    Source::Channel,
                    frame.payload,
                )));
            }
            SessionEvent::Nothing => {}
        }
        Ok(())
    }

    fn on_stored(
        &self,
        session: &mut Session,
        done: Result<Accepted, IntakeError>,
    ) -> Result<(), DriverError> {
        match done {
            Ok(acc) => {
                match acc {
                    Accepted::Stored { .. } => inc(&self.status.events_stored),
                    Accepted::Duplicate { .. } => inc(&self.status.duplicates),
                }
                session.puback(acc.event_id());
                inc(&self.status.pubacks);
                Ok(())
            }
            Err(IntakeError::Event(e)) => Err(DriverError::BadEvent(e)),
            Err(IntakeError::Outbox(e)) => {
                inc(&self.status.not_acked);
                // Reconnecting makes the camera re-send what it still holds once there is room.
                Err(DriverError::OutboxRefused(e))
            }
            Err(IntakeError::ConcurrentFailure) => {
                inc(&self.status.not_acked);
                Ok(())
            }
        }
    }
}

/// Remembers the camera's serial from its events, for logs.
pub fn note_serial(status: &CameraStatus, raw: &[u8]) {
    if let Ok(v) = EventView::parse(raw) {
        status.set_serial(&v.sn);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn camera_task_is_send() {
        fn is_send<T: Send>(_: &T) {}
        fn check(t: super::CameraTask) {
            is_send(&t.run());
        }
        let _ = check;
    }
}
