//! One camgate connection as the camera sees it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{interval, sleep_until, timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{count, SimConfig, SimState};
use crate::channel::frame::{self, FrameCodec, FrameError, PacketType, Role};
use crate::channel::packet::{self, Code, Connect, EventList, PacketError, Puback};
use crate::event::{DYNAMIC_DETECT_EVENT, FACE_RECOG_EVENT};
use crate::sign::{self, Verifier};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Packet(#[from] PacketError),
    #[error("CONNECT sign rejected: {0}")]
    Sign(#[from] sign::SignError),
    #[error("unexpected {0} before CONNECT/SUBSCRIBE")]
    Unexpected(&'static str),
    #[error("client missed 3 heartbeats")]
    KeepAlive,
    #[error("fault injected: {0}")]
    Injected(&'static str),
    #[error("refused by configuration (code {0})")]
    Refused(i64),
}

pub(crate) struct Conn {
    pub cfg: Arc<SimConfig>,
    pub state: Arc<SimState>,
    pub verifier: Arc<Verifier>,
    pub media_addr: Option<SocketAddr>,
    pub shutdown: CancellationToken,
}

#[derive(PartialEq, Eq)]
enum Phase {
    AwaitConnect,
    Connected,
    Ready,
}

/// What one frame asked the connection to do next.
enum Next {
    Continue,
    Close(Result<(), SimError>),
}

impl Conn {
    pub async fn serve(
        self,
        acceptor: tokio_rustls::TlsAcceptor,
        tcp: TcpStream,
    ) -> Result<(), SimError> {
        let tls = timeout(Duration::from_secs(10), acceptor.accept(tcp))
            .await
            .map_err(|_| SimError::HandshakeTimeout)??;
        count(&self.state.connects);
        let (mut rd, mut wr) = tokio::io::split(tls);
        let codec = FrameCodec::new(Role::Server).with_crc_scope(self.cfg.crc_scope);
        let mut buf = BytesMut::with_capacity(8192);
        let mut out = Vec::with_capacity(8192);
        let mut phase = Phase::AwaitConnect;
        let mut subscribed: Vec<String> = Vec::new();
        let mut keep_alive = Duration::from_secs(30);
        let mut last_ping = Instant::now();
        let mut published_here = 0u64;
        let period = if self.cfg.rate_per_sec > 0.0 {
            Duration::from_secs_f64(1.0 / self.cfg.rate_per_sec)
        } else {
            Duration::from_secs(3600)
        };
        let mut ticker = interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);

        let result = loop {
            let ping_deadline = last_ping + keep_alive * 3 + Duration::from_secs(1);
            tokio::select! {
                _ = self.shutdown.cancelled() => break Ok(()),
                n = rd.read_buf(&mut buf) => {
                    match n {
                        Ok(0) => break Ok(()),
                        Ok(_) => {}
                        Err(e) => break Err(e.into()),
                    }
                    let mut next = Next::Continue;
                    loop {
                        let decoded = match codec.decode(&buf) {
                            Ok(Some((f, used))) => (f.packet_type, f.payload.to_vec(), used),
                            Ok(None) => break,
                            Err(e) => { next = Next::Close(Err(e.into())); break; }
                        };
                        let (ty, payload, used) = decoded;
                        let _ = buf.split_to(used);
                        next = self.on_frame(ty, &payload, &mut phase, &mut subscribed, &mut keep_alive, &mut last_ping, &mut out);
                        if matches!(next, Next::Close(_)) {
                            break;
                        }
                    }
                    if let Next::Close(r) = next {
                        let _ = wr.write_all(&out).await;
                        let _ = wr.shutdown().await;
                        break r;
                    }
                }
                _ = ticker.tick(), if phase == Phase::Ready && self.cfg.rate_per_sec > 0.0 && !subscribed.is_empty() => {
                    if self.state.paused.load(Ordering::Relaxed) {
                        continue;
                    }
                    if let Some(max) = self.cfg.max_events {
                        if self.state.next_event_id.load(Ordering::Relaxed) > max as i64 {
                            continue;
                        }
                    }
                    let id = self.state.next_event_id.fetch_add(1, Ordering::Relaxed);
                    let kind = &subscribed[(id as usize) % subscribed.len()];
                    let payload = Bytes::from(self.event_json(id, kind));
                    let now = Instant::now();
                    self.state.unacked.lock().unwrap().insert(id, (payload.clone(), now, false));
                    if self.cfg.record_send_times {
                        self.state.sent_at.lock().unwrap().insert(id, now);
                    }
                    count(&self.state.published);
                    published_here += 1;
                    let faults = self.state.faults.lock().unwrap().clone();
                    let start = out.len();
                    frame::encode(PacketType::Publish, &payload, self.cfg.crc_scope, &mut out)?;
                    if faults.duplicate_every.is_some_and(|n| n > 0 && id as u64 % n == 0) {
                        frame::encode(PacketType::Publish, &payload, self.cfg.crc_scope, &mut out)?;
                    }
                    if faults.bad_crc_every.is_some_and(|n| n > 0 && self.state.published.load(Ordering::Relaxed) % n == 0) {
                        let last = out.len() - 1;
                        out[last] ^= 0x5A;
                    }
                    if faults.close_mid_frame_after.is_some_and(|n| published_here > n) {
                        let half = start + (out.len() - start) / 2;
                        let _ = wr.write_all(&out[..half]).await;
                        let _ = wr.flush().await;
                        break Err(SimError::Injected("closed mid-frame"));
                    }
                    if faults.disconnect_0x11_after.is_some_and(|n| published_here > n) {
                        out.truncate(start);
                        frame::encode_raw(0x11, 1, b"", self.cfg.crc_scope, &mut out)?;
                        let _ = wr.write_all(&out).await;
                        let _ = wr.shutdown().await;
                        break Err(SimError::Injected("DISCONNECT 0x11"));
                    }
                }
                _ = sleep_until(ping_deadline), if phase != Phase::AwaitConnect => break Err(SimError::KeepAlive),
            }
            if !out.is_empty() {
                if let Err(e) = wr.write_all(&out).await {
                    break Err(e.into());
                }
                out.clear();
            }
        };
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn on_frame(
        &self,
        ty: PacketType,
        payload: &[u8],
        phase: &mut Phase,
        subscribed: &mut Vec<String>,
        keep_alive: &mut Duration,
        last_ping: &mut Instant,
        out: &mut Vec<u8>,
    ) -> Next {
        let scope = self.cfg.crc_scope;
        let faults = self.state.faults.lock().unwrap().clone();
        let reply = |ty: PacketType, code: i64, out: &mut Vec<u8>| {
            packet::encode_json(ty, &Code { code }, scope, out).expect("code fits");
        };
        match (&*phase, ty) {
            (Phase::AwaitConnect, PacketType::Connect) => {
                let c: Connect = match packet::parse(ty, payload) {
                    Ok(c) => c,
                    Err(e) => return Next::Close(Err(e.into())),
                };
                *self.state.keep_alive_seen.lock().unwrap() = Some(c.keep_alive);
                let params = c.sign_params();
                let refs: Vec<(&str, &str)> =
                    params.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let checked = if c.app_id != self.cfg.app_id {
                    Err(sign::SignError::UnknownAppId)
                } else {
                    self.verifier
                        .verify(&refs, &self.cfg.secret, crate::clock::unix_now())
                };
                if let Err(e) = checked {
                    count(&self.state.sign_rejected);
                    // The vendor's codes are undocumented; 2 stands for "sign check failed" here.
                    reply(PacketType::Connack, 2, out);
                    return Next::Close(Err(e.into()));
                }
                if let Some(code) = faults.refuse_connect {
                    reply(PacketType::Connack, code, out);
                    return Next::Close(Err(SimError::Refused(code)));
                }
                *keep_alive = Duration::from_secs(c.keep_alive.clamp(1, 3600));
                *last_ping = Instant::now();
                reply(PacketType::Connack, 0, out);
                *phase = Phase::Connected;
                Next::Continue
            }
            (Phase::AwaitConnect, other) => Next::Close(Err(SimError::Unexpected(other.name()))),
            (_, PacketType::Subscribe) => {
                let list: EventList = match packet::parse(ty, payload) {
                    Ok(l) => l,
                    Err(e) => return Next::Close(Err(e.into())),
                };
                count(&self.state.subscribes);
                if let Some(code) = faults.refuse_subscribe {
                    reply(PacketType::Suback, code, out);
                    return Next::Close(Err(SimError::Refused(code)));
                }
                for e in list.event_list {
                    if (e == FACE_RECOG_EVENT || e == DYNAMIC_DETECT_EVENT)
                        && !subscribed.iter().any(|s| *s == e)
                    {
                        subscribed.push(e.into_owned());
                    }
                }
                reply(PacketType::Suback, 0, out);
                if *phase == Phase::Connected {
                    *phase = Phase::Ready;
                    // A camera keeps what was not acknowledged and sends it again.
                    let again: Vec<(i64, Bytes)> = {
                        let mut u = self.state.unacked.lock().unwrap();
                        u.iter_mut()
                            .map(|(id, (p, _, resent))| {
                                *resent = true;
                                (*id, p.clone())
                            })
                            .collect()
                    };
                    for (_, p) in again {
                        count(&self.state.resent);
                        frame::encode(PacketType::Publish, &p, scope, out).expect("event fits");
                    }
                }
                Next::Continue
            }
            (_, PacketType::Unsubscribe) => {
                let list: EventList = match packet::parse(ty, payload) {
                    Ok(l) => l,
                    Err(e) => return Next::Close(Err(e.into())),
                };
                count(&self.state.unsubscribes);
                subscribed.retain(|s| !list.event_list.iter().any(|e| e == s));
                let code_ty = if faults.unsuback_as_7 {
                    7
                } else {
                    PacketType::Unsuback.code()
                };
                let body = serde_json::to_vec(&Code { code: 0 }).expect("code serialises");
                frame::encode_raw(code_ty, 1, &body, scope, out).expect("fits");
                Next::Continue
            }
            (_, PacketType::PingReq) => {
                count(&self.state.pings);
                *last_ping = Instant::now();
                if !faults.drop_pings {
                    packet::encode_empty(PacketType::PingResp, scope, out);
                }
                Next::Continue
            }
            (_, PacketType::Puback) => {
                let ack: Puback = match packet::parse(ty, payload) {
                    Ok(a) => a,
                    Err(e) => return Next::Close(Err(e.into())),
                };
                match self.state.unacked.lock().unwrap().remove(&ack.event_id.0) {
                    Some((_, sent, resent)) => {
                        count(&self.state.acked);
                        if !resent {
                            let us = sent.elapsed().as_micros().min(u32::MAX as u128) as u32;
                            self.state.latencies_us.lock().unwrap().push(us);
                        }
                    }
                    None => count(&self.state.acks_unknown),
                }
                Next::Continue
            }
            (_, PacketType::Disconnect) => {
                count(&self.state.disconnects_received);
                Next::Close(Ok(()))
            }
            (_, other) => Next::Close(Err(SimError::Unexpected(other.name()))),
        }
    }

    fn event_json(&self, id: i64, kind: &str) -> String {
        let now = crate::clock::unix_now();
        let host = self
            .media_addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "127.0.0.1".into());
        if kind == FACE_RECOG_EVENT {
            let path = format!("/mnt/sd-card/sunmi_image/snap/{now}000_{id}.jpg");
            format!(
                r#"{{"event_id":{id},"event_type":"face_recog_event","sn":"{sn}","report_time":{now},"group_name":"vip","faceid":"{faceid:08}","cloud_faceid":"8798765433","age":34,"age_range":5,"gender":1,"arrive_times":{arrive},"pic_url":"https://{host}{path}?auth_key={auth}","vip_level":"1","hobby":"tennis"}}"#,
                sn = self.cfg.serial,
                faceid = id % 1000,
                arrive = id % 17 + 1,
                auth = super::media::auth_key(&path, now, &self.cfg.secret),
            )
        } else {
            let path = format!("/mnt/sd-card/sunmi_video/video_detect/{now}_{id}.flv");
            format!(
                r#"{{"event_id":{id},"event_type":"dynamic_detect_event","sn":"{sn}","report_time":{now},"detect_type":{dt},"video_url":"https://{host}{path}?auth_key={auth}"}}"#,
                sn = self.cfg.serial,
                dt = id % 3 + 1,
                auth = super::media::auth_key(&path, now, &self.cfg.secret),
            )
        }
    }
}
