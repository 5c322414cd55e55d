//! The client side of a Message Channel session as a pure state machine (DECISIONS §3).
//!
//! Frames and the current time go in; bytes to send, session events and deadlines come out.
//! No sockets, no clocks: the driver owns those, and tests run it with made-up instants.
//!
//! ```text
//!   new ──CONNECT──▶ AwaitConnack ──CONNACK 0──SUBSCRIBE──▶ AwaitSuback ──SUBACK 0──▶ Ready
//!                         │ code≠0 / timeout        │ code≠0 / timeout                 │
//!                         ▼                         ▼                                  ▼
//!                       error (driver backs off, reconnects, resubscribes)     PINGREQ every keep_alive;
//!                                                                              3 unanswered → dead
//! ```

use std::time::{Duration, Instant};

use super::frame::{CrcScope, Frame, PacketType};
use super::packet::{self, Code, Connect, EventList, PacketError, Puback};
use crate::event::EventId;

/// Per-session settings, taken from the camera's config.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub app_id: String,
    pub secret: String,
    pub keep_alive: Duration,
    pub events: Vec<String>,
    /// Longest wait for CONNACK after CONNECT.
    pub connect_timeout: Duration,
    /// Longest wait for SUBACK / UNSUBACK.
    pub subscribe_timeout: Duration,
    /// Unanswered PINGREQs after which the session is dead (the protocol says 3).
    pub max_missed_pings: u32,
    pub crc_scope: CrcScope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    AwaitConnack,
    AwaitSuback,
    Ready,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connect,
    Subscribe,
    Unsubscribe,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Connect => "CONNECT",
            Phase::Subscribe => "SUBSCRIBE",
            Phase::Unsubscribe => "UNSUBSCRIBE",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("camera refused {phase} with code {code}")]
    Refused { phase: Phase, code: i64 },
    #[error("no answer to {phase} within {timeout:?}")]
    Timeout { phase: Phase, timeout: Duration },
    #[error("keep-alive expired: {missed} PINGREQs unanswered")]
    KeepAliveExpired { missed: u32 },
    #[error("unexpected {packet} in state {state:?}")]
    Unexpected { packet: &'static str, state: State },
    #[error("camera sent DISCONNECT")]
    PeerDisconnected,
    #[error(transparent)]
    Packet(#[from] PacketError),
}

impl SessionError {
    /// Whether the camera broke the protocol (counted and logged as such; DECISIONS §2).
    pub fn is_protocol_error(&self) -> bool {
        matches!(
            self,
            SessionError::Unexpected { .. } | SessionError::Packet(_)
        )
    }

    /// Stable label for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            SessionError::Refused { .. } => "refused",
            SessionError::Timeout { .. } => "timeout",
            SessionError::KeepAliveExpired { .. } => "keep_alive_expired",
            SessionError::Unexpected { .. } => "unexpected_packet",
            SessionError::PeerDisconnected => "peer_disconnected",
            SessionError::Packet(_) => "bad_payload",
        }
    }
}

/// What a received frame meant, for the driver.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionEvent<'a> {
    /// CONNACK 0: the camera accepted the sign.
    Connected,
    /// SUBACK 0: events will flow.
    Subscribed,
    Unsubscribed,
    /// An event to store; acknowledge it with [`Session::puback`] once it is durable.
    Publish(&'a [u8]),
    /// A PINGRESP (or anything else that needs no action).
    Nothing,
}

pub struct Session {
    cfg: SessionConfig,
    state: State,
    transmit: Vec<u8>,
    /// Deadline of the answer currently awaited (CONNACK, SUBACK, UNSUBACK).
    answer_deadline: Option<(Phase, Instant)>,
    next_ping: Option<Instant>,
    outstanding_pings: u32,
}

impl Session {
    /// Starts a session on a freshly connected transport: queues CONNECT.
    pub fn new(cfg: SessionConfig, now: Instant, unix_now: u64, random: String) -> Self {
        let mut s = Session {
            state: State::AwaitConnack,
            transmit: Vec::with_capacity(256),
            answer_deadline: Some((Phase::Connect, now + cfg.connect_timeout)),
            next_ping: None,
            outstanding_pings: 0,
            cfg,
        };
        let connect = Connect::signed(
            &s.cfg.app_id,
            &s.cfg.secret,
            s.cfg.keep_alive.as_secs(),
            unix_now,
            random,
        );
        let scope = s.cfg.crc_scope;
        packet::encode_json(PacketType::Connect, &connect, scope, &mut s.transmit)
            .expect("CONNECT fits in a frame");
        s
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Bytes to write to the socket; the buffer is emptied.
    pub fn take_transmit(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.transmit)
    }

    pub fn has_transmit(&self) -> bool {
        !self.transmit.is_empty()
    }

    /// The next instant at which [`Session::handle_timeout`] must be called.
    pub fn poll_deadline(&self) -> Option<Instant> {
        let answer = self.answer_deadline.map(|(_, t)| t);
        match (answer, self.next_ping) {
            (Some(a), Some(p)) => Some(a.min(p)),
            (a, p) => a.or(p),
        }
    }

    /// Handles one frame from the camera.
    pub fn handle_frame<'a>(
        &mut self,
        frame: Frame<'a>,
        now: Instant,
    ) -> Result<SessionEvent<'a>, SessionError> {
        let unexpected = |state| SessionError::Unexpected {
            packet: frame.packet_type.name(),
            state,
        };
        match (self.state, frame.packet_type) {
            (State::Closed, _) => Err(unexpected(State::Closed)),
            (_, PacketType::Disconnect) => {
                self.state = State::Closed;
                Err(SessionError::PeerDisconnected)
            }
            (State::AwaitConnack, PacketType::Connack) => {
                self.expect_success(&frame, Phase::Connect)?;
                self.state = State::AwaitSuback;
                self.next_ping = Some(now + self.cfg.keep_alive);
                let list = EventList {
                    event_list: self.cfg.events.iter().map(|e| e.as_str().into()).collect(),
                };
                packet::encode_json(
                    PacketType::Subscribe,
                    &list,
                    self.cfg.crc_scope,
                    &mut self.transmit,
                )?;
                self.answer_deadline = Some((Phase::Subscribe, now + self.cfg.subscribe_timeout));
                Ok(SessionEvent::Connected)
            }
            (State::AwaitSuback, PacketType::Suback) => {
                self.expect_success(&frame, Phase::Subscribe)?;
                self.state = State::Ready;
                self.answer_deadline = None;
                Ok(SessionEvent::Subscribed)
            }
            // The text answers UNSUBSCRIBE with "0x06 or 0x07": SUBACK is taken as UNSUBACK here.
            (State::Ready, PacketType::Unsuback | PacketType::Suback)
                if matches!(self.answer_deadline, Some((Phase::Unsubscribe, _))) =>
            {
                let Code { code } = packet::parse(frame.packet_type, frame.payload)?;
                self.answer_deadline = None;
                if code != 0 {
                    return Err(SessionError::Refused {
                        phase: Phase::Unsubscribe,
                        code,
                    });
                }
                Ok(SessionEvent::Unsubscribed)
            }
            // A repeated SUBACK changes nothing; tolerated rather than reconnecting over it.
            (State::Ready, PacketType::Suback) => Ok(SessionEvent::Nothing),
            // Heartbeats are the client's to send, but a camera that pings is answered.
            (State::AwaitSuback | State::Ready, PacketType::PingReq) => {
                packet::encode_empty(PacketType::PingResp, self.cfg.crc_scope, &mut self.transmit);
                Ok(SessionEvent::Nothing)
            }
            (State::AwaitSuback | State::Ready, PacketType::PingResp) => {
                self.outstanding_pings = 0;
                Ok(SessionEvent::Nothing)
            }
            // Some cameras start publishing before their SUBACK arrives; events are never refused.
            (State::AwaitSuback | State::Ready, PacketType::Publish) => {
                Ok(SessionEvent::Publish(frame.payload))
            }
            (state, _) => Err(unexpected(state)),
        }
    }

    /// Reads `{"code": N}`; a refused CONNECT or SUBSCRIBE ends the session.
    fn expect_success(&mut self, frame: &Frame<'_>, phase: Phase) -> Result<(), SessionError> {
        let Code { code } = packet::parse(frame.packet_type, frame.payload)?;
        if code != 0 {
            self.state = State::Closed;
            return Err(SessionError::Refused { phase, code });
        }
        Ok(())
    }

    /// Called at (or after) [`Session::poll_deadline`].
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        if let Some((phase, deadline)) = self.answer_deadline {
            if now >= deadline {
                self.state = State::Closed;
                let timeout = match phase {
                    Phase::Connect => self.cfg.connect_timeout,
                    _ => self.cfg.subscribe_timeout,
                };
                return Err(SessionError::Timeout { phase, timeout });
            }
        }
        if let Some(at) = self.next_ping {
            if now >= at {
                if self.outstanding_pings >= self.cfg.max_missed_pings {
                    self.state = State::Closed;
                    return Err(SessionError::KeepAliveExpired {
                        missed: self.outstanding_pings,
                    });
                }
                packet::encode_empty(PacketType::PingReq, self.cfg.crc_scope, &mut self.transmit);
                self.outstanding_pings += 1;
                self.next_ping = Some(now + self.cfg.keep_alive);
            }
        }
        Ok(())
    }

    /// Queues PUBACK for an event that is now durable (or was already stored: a duplicate).
    pub fn puback(&mut self, event_id: EventId) {
        if self.state == State::Closed {
            return;
        }
        packet::encode_json(
            PacketType::Puback,
            &Puback { event_id },
            self.cfg.crc_scope,
            &mut self.transmit,
        )
        .expect("PUBACK fits in a frame");
    }

    /// Queues UNSUBSCRIBE for `events`; the answer is awaited like SUBACK.
    pub fn unsubscribe(&mut self, events: &[String], now: Instant) -> Result<(), SessionError> {
        if self.state != State::Ready {
            return Err(SessionError::Unexpected {
                packet: "UNSUBSCRIBE",
                state: self.state,
            });
        }
        let list = EventList {
            event_list: events.iter().map(|e| e.as_str().into()).collect(),
        };
        packet::encode_json(
            PacketType::Unsubscribe,
            &list,
            self.cfg.crc_scope,
            &mut self.transmit,
        )?;
        self.answer_deadline = Some((Phase::Unsubscribe, now + self.cfg.subscribe_timeout));
        Ok(())
    }

    /// Queues DISCONNECT and closes the session (shutdown, or after a protocol error).
    pub fn disconnect(&mut self) {
        if self.state != State::Closed {
            packet::encode_empty(
                PacketType::Disconnect,
                self.cfg.crc_scope,
                &mut self.transmit,
            );
            self.state = State::Closed;
        }
        self.answer_deadline = None;
        self.next_ping = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::frame::{self, FrameCodec, Role};

    fn cfg() -> SessionConfig {
        SessionConfig {
            app_id: "app".into(),
            secret: "secret".into(),
            keep_alive: Duration::from_secs(30),
            events: vec!["face_recog_event".into()],
            connect_timeout: Duration::from_secs(10),
            subscribe_timeout: Duration::from_secs(10),
            max_missed_pings: 3,
            crc_scope: CrcScope::Payload,
        }
    }

    /// Frames the session queued, decoded as the camera would.
    fn sent(s: &mut Session) -> Vec<(PacketType, Vec<u8>)> {
        let bytes = s.take_transmit();
        let codec = FrameCodec::new(Role::Server);
        let mut pos = 0;
        let mut out = Vec::new();
        while let Some((f, used)) = codec.decode(&bytes[pos..]).unwrap() {
            out.push((f.packet_type, f.payload.to_vec()));
            pos += used;
        }
        assert_eq!(pos, bytes.len());
        out
    }

    fn frame_bytes(ty: PacketType, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        frame::encode(ty, payload, CrcScope::Payload, &mut v).unwrap();
        v
    }

    fn feed<'a>(
        s: &mut Session,
        bytes: &'a [u8],
        now: Instant,
    ) -> Result<SessionEvent<'a>, SessionError> {
        let (f, _) = FrameCodec::new(Role::Client)
            .decode(bytes)
            .unwrap()
            .unwrap();
        s.handle_frame(f, now)
    }

    fn ready(now: Instant) -> Session {
        let mut s = Session::new(cfg(), now, 1_700_000_000, "abcdef12".into());
        let out = sent(&mut s);
        assert_eq!(out[0].0, PacketType::Connect);
        let c: Connect = serde_json::from_slice(&out[0].1).unwrap();
        let v = crate::sign::Verifier::new(300, 10);
        let p = c.sign_params();
        let refs: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
        v.verify(&refs, "secret", 1_700_000_000).unwrap();
        assert_eq!(
            feed(
                &mut s,
                &frame_bytes(PacketType::Connack, br#"{"code":0}"#),
                now
            )
            .unwrap(),
            SessionEvent::Connected
        );
        let out = sent(&mut s);
        assert_eq!(
            out,
            vec![(
                PacketType::Subscribe,
                br#"{"event_list":["face_recog_event"]}"#.to_vec()
            )]
        );
        assert_eq!(
            feed(
                &mut s,
                &frame_bytes(PacketType::Suback, br#"{"code":0}"#),
                now
            )
            .unwrap(),
            SessionEvent::Subscribed
        );
        assert_eq!(s.state(), State::Ready);
        s
    }

    #[test]
    fn connect_subscribe_publish_puback() {
        let t0 = Instant::now();
        let mut s = ready(t0);
        let ev = frame_bytes(
            PacketType::Publish,
            br#"{"event_id":5,"event_type":"x","sn":"S"}"#,
        );
        assert!(matches!(
            feed(&mut s, &ev, t0).unwrap(),
            SessionEvent::Publish(_)
        ));
        assert!(
            !s.has_transmit(),
            "no PUBACK before the outbox says durable"
        );
        s.puback(EventId(5));
        assert_eq!(
            sent(&mut s),
            vec![(PacketType::Puback, br#"{"event_id":5}"#.to_vec())]
        );
    }

    #[test]
    fn refused_connect_and_subscribe_are_typed() {
        let t0 = Instant::now();
        let mut s = Session::new(cfg(), t0, 1, "abcdef12".into());
        let err = feed(
            &mut s,
            &frame_bytes(PacketType::Connack, br#"{"code":2}"#),
            t0,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            SessionError::Refused {
                phase: Phase::Connect,
                code: 2
            }
        ));

        let mut s = Session::new(cfg(), t0, 1, "abcdef12".into());
        feed(
            &mut s,
            &frame_bytes(PacketType::Connack, br#"{"code":0}"#),
            t0,
        )
        .unwrap();
        let err = feed(
            &mut s,
            &frame_bytes(PacketType::Suback, br#"{"code":310}"#),
            t0,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            SessionError::Refused {
                phase: Phase::Subscribe,
                code: 310
            }
        ));
    }

    #[test]
    fn connack_and_suback_time_out() {
        let t0 = Instant::now();
        let mut s = Session::new(cfg(), t0, 1, "abcdef12".into());
        assert_eq!(s.poll_deadline(), Some(t0 + Duration::from_secs(10)));
        s.handle_timeout(t0 + Duration::from_secs(9)).unwrap();
        assert!(matches!(
            s.handle_timeout(t0 + Duration::from_secs(10)),
            Err(SessionError::Timeout {
                phase: Phase::Connect,
                ..
            })
        ));

        let mut s = Session::new(cfg(), t0, 1, "abcdef12".into());
        feed(
            &mut s,
            &frame_bytes(PacketType::Connack, br#"{"code":0}"#),
            t0,
        )
        .unwrap();
        assert!(matches!(
            s.handle_timeout(t0 + Duration::from_secs(10)),
            Err(SessionError::Timeout {
                phase: Phase::Subscribe,
                ..
            })
        ));
    }

    #[test]
    fn three_unanswered_pings_kill_the_session() {
        let t0 = Instant::now();
        let mut s = ready(t0);
        let ka = Duration::from_secs(30);
        for i in 1..=3u32 {
            let at = s.poll_deadline().unwrap();
            assert_eq!(at, t0 + ka * i);
            s.handle_timeout(at).unwrap();
            assert_eq!(sent(&mut s), vec![(PacketType::PingReq, vec![])]);
        }
        let at = s.poll_deadline().unwrap();
        assert!(matches!(
            s.handle_timeout(at),
            Err(SessionError::KeepAliveExpired { missed: 3 })
        ));
    }

    #[test]
    fn answered_pings_keep_the_session_alive() {
        let t0 = Instant::now();
        let mut s = ready(t0);
        for _ in 0..10 {
            let at = s.poll_deadline().unwrap();
            s.handle_timeout(at).unwrap();
            assert_eq!(sent(&mut s)[0].0, PacketType::PingReq);
            feed(&mut s, &frame_bytes(PacketType::PingResp, b""), at).unwrap();
        }
        assert_eq!(s.state(), State::Ready);
    }

    #[test]
    fn unsubscribe_round_trip_accepts_type_7_answer() {
        let t0 = Instant::now();
        let mut s = ready(t0);
        s.unsubscribe(&["face_recog_event".into()], t0).unwrap();
        assert_eq!(sent(&mut s)[0].0, PacketType::Unsubscribe);
        let mut quirk = Vec::new();
        frame::encode_raw(7, 1, br#"{"code":0}"#, CrcScope::Payload, &mut quirk).unwrap();
        assert_eq!(
            feed(&mut s, &quirk, t0).unwrap(),
            SessionEvent::Unsubscribed
        );
    }

    #[test]
    fn protocol_errors_and_disconnect() {
        let t0 = Instant::now();
        let mut s = ready(t0);
        let err = feed(
            &mut s,
            &frame_bytes(PacketType::Connack, br#"{"code":0}"#),
            t0,
        )
        .unwrap_err();
        assert!(err.is_protocol_error());

        let mut s = ready(t0);
        let bad = frame_bytes(PacketType::Puback, br#"{"event_id":1}"#);
        let err = feed(&mut s, &bad, t0);
        assert!(matches!(err, Err(SessionError::Unexpected { .. })));
        // Tolerated: a repeated SUBACK, a PINGREQ from the camera (answered).
        let mut s = ready(t0);
        assert_eq!(
            feed(
                &mut s,
                &frame_bytes(PacketType::Suback, br#"{"code":0}"#),
                t0
            )
            .unwrap(),
            SessionEvent::Nothing
        );
        assert_eq!(
            feed(&mut s, &frame_bytes(PacketType::PingReq, b""), t0).unwrap(),
            SessionEvent::Nothing
        );
        assert_eq!(sent(&mut s), vec![(PacketType::PingResp, vec![])]);

        let mut s = Session::new(cfg(), t0, 1, "abcdef12".into());
        let err = feed(&mut s, &frame_bytes(PacketType::Connack, br#"{"code"#), t0).unwrap_err();
        assert!(matches!(err, SessionError::Packet(_)) && err.is_protocol_error());

        let mut s = ready(t0);
        let mut dis = Vec::new();
        frame::encode_raw(0x11, 1, b"", CrcScope::Payload, &mut dis).unwrap();
        assert!(matches!(
            feed(&mut s, &dis, t0),
            Err(SessionError::PeerDisconnected)
        ));
        assert_eq!(s.state(), State::Closed);
    }

    #[test]
    fn disconnect_is_sent_once() {
        let t0 = Instant::now();
        let mut s = ready(t0);
        s.disconnect();
        s.disconnect();
        assert_eq!(sent(&mut s), vec![(PacketType::Disconnect, vec![])]);
        assert_eq!(s.poll_deadline(), None);
    }
}
