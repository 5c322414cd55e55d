//! Typed payloads of the control packets (DECISIONS §3). PUBLISH payloads are events and are
//! read by [`crate::event`]; this module only frames them.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::frame::{self, CrcScope, FrameError, PacketType};
use crate::event::EventId;
use crate::sign;

#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("{packet} payload is not the expected JSON: {source}")]
    BadJson {
        packet: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// CONNECT payload. `timestamp` is a string in the text's example; `keep_alive` a number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connect<'a> {
    #[serde(borrow)]
    pub app_id: Cow<'a, str>,
    #[serde(borrow)]
    pub timestamp: Cow<'a, str>,
    #[serde(borrow)]
    pub random: Cow<'a, str>,
    #[serde(borrow)]
    pub sign: Cow<'a, str>,
    pub keep_alive: u64,
}

impl<'a> Connect<'a> {
    /// A signed CONNECT: sign over `app_id, keep_alive, random, timestamp` (DECISIONS §3).
    pub fn signed(
        app_id: &'a str,
        secret: &str,
        keep_alive: u64,
        unix_now: u64,
        random: String,
    ) -> Connect<'a> {
        let timestamp = unix_now.to_string();
        let ka = keep_alive.to_string();
        let sign = sign::sign(
            &[
                ("app_id", app_id),
                ("keep_alive", &ka),
                ("random", &random),
                ("timestamp", &timestamp),
            ],
            secret,
        );
        Connect {
            app_id: Cow::Borrowed(app_id),
            timestamp: Cow::Owned(timestamp),
            random: Cow::Owned(random),
            sign: Cow::Owned(sign),
            keep_alive,
        }
    }

    /// The parameters covered by the sign, plus `sign`, for [`sign::Verifier::verify`].
    pub fn sign_params(&self) -> [(&'static str, String); 5] {
        [
            ("app_id", self.app_id.to_string()),
            ("keep_alive", self.keep_alive.to_string()),
            ("random", self.random.to_string()),
            ("timestamp", self.timestamp.to_string()),
            ("sign", self.sign.to_string()),
        ]
    }
}

/// CONNACK, SUBACK and UNSUBACK carry `{"code": N}`; 0 is success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Code {
    pub code: i64,
}

/// SUBSCRIBE and UNSUBSCRIBE carry `{"event_list": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventList<'a> {
    #[serde(borrow)]
    pub event_list: Vec<Cow<'a, str>>,
}

/// PUBACK carries `{"event_id": N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Puback {
    pub event_id: EventId,
}

/// Parses a JSON payload of `packet`, mapping the error to a typed one.
pub fn parse<'a, T: Deserialize<'a>>(
    packet: PacketType,
    payload: &'a [u8],
) -> Result<T, PacketError> {
    serde_json::from_slice(payload).map_err(|source| PacketError::BadJson {
        packet: packet.name(),
        source,
    })
}

/// Appends a frame whose payload is `value` as compact JSON.
pub fn encode_json<T: Serialize>(
    packet: PacketType,
    value: &T,
    scope: CrcScope,
    out: &mut Vec<u8>,
) -> Result<(), PacketError> {
    let payload = serde_json::to_vec(value).map_err(|source| PacketError::BadJson {
        packet: packet.name(),
        source,
    })?;
    frame::encode(packet, &payload, scope, out)?;
    Ok(())
}

/// Appends a frame with an empty payload (PINGREQ, PINGRESP, DISCONNECT).
pub fn encode_empty(packet: PacketType, scope: CrcScope, out: &mut Vec<u8>) {
    frame::encode(packet, b"", scope, out).expect("empty payload always fits");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::frame::{FrameCodec, Role};

    /// CONNECT built from fixed inputs, byte for byte. The sign is the MD5 rule over
    /// `app_id=mdk923idkf&keep_alive=30&random=289192&timestamp=1593029283&key=secret`
    /// (python: hashlib.md5(...).hexdigest().upper()); the CRC is zlib.crc32 of the payload.
    #[test]
    fn connect_golden_bytes() {
        let c = Connect::signed("mdk923idkf", "secret", 30, 1_593_029_283, "289192".into());
        assert_eq!(c.sign, CONNECT_SIGN);
        let mut out = Vec::new();
        encode_json(PacketType::Connect, &c, CrcScope::Payload, &mut out).unwrap();
        let payload = format!(
            r#"{{"app_id":"mdk923idkf","timestamp":"1593029283","random":"289192","sign":"{CONNECT_SIGN}","keep_alive":30}}"#
        );
        let mut expected = vec![
            0xFF,
            0x3E,
            0x3E,
            0xFF,
            0x01,
            0x01,
            0x00,
            payload.len() as u8,
        ];
        expected.extend_from_slice(payload.as_bytes());
        expected.extend_from_slice(&CONNECT_CRC.to_be_bytes());
        assert_eq!(out, expected);
        let (f, _) = FrameCodec::new(Role::Server).decode(&out).unwrap().unwrap();
        let back: Connect = parse(f.packet_type, f.payload).unwrap();
        assert_eq!(back, c);
    }

    const CONNECT_SIGN: &str = "1129012AE2E7986451AF734192F45B6A";
    const CONNECT_CRC: u32 = 0x482E_9C56;

    #[test]
    fn subscribe_and_puback_golden_bytes() {
        let mut out = Vec::new();
        let list = EventList {
            event_list: vec!["face_recog_event".into(), "dynamic_detect_event".into()],
        };
        encode_json(PacketType::Subscribe, &list, CrcScope::Payload, &mut out).unwrap();
        let payload = br#"{"event_list":["face_recog_event","dynamic_detect_event"]}"#;
        let mut expected = vec![
            0xFF,
            0x3E,
            0x3E,
            0xFF,
            0x01,
            0x05,
            0x00,
            payload.len() as u8,
        ];
        expected.extend_from_slice(payload);
        expected.extend_from_slice(&SUBSCRIBE_CRC.to_be_bytes());
        assert_eq!(out, expected);

        out.clear();
        encode_json(
            PacketType::Puback,
            &Puback {
                event_id: EventId(1),
            },
            CrcScope::Payload,
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..8], &[0xFF, 0x3E, 0x3E, 0xFF, 0x01, 0x0A, 0x00, 0x0E]);
        assert_eq!(&out[8..22], br#"{"event_id":1}"#);
    }

    const SUBSCRIBE_CRC: u32 = 0x3D48_2BB8;

    /// PUBLISH (camera → camgate) and UNSUBSCRIBE, written out byte by byte; CRCs from zlib.
    #[test]
    fn publish_and_unsubscribe_golden_bytes() {
        let event: &[u8] = br#"{"event_id":1,"event_type":"dynamic_detect_event","sn":"FS101D8BS00106","report_time":15930292837,"detect_type":1,"video_url":"https://192.168.0.1/v.flv"}"#;
        let mut publish = vec![0xFF, 0x3E, 0x3E, 0xFF, 0x01, 0x09, 0x00, 0x9A];
        publish.extend_from_slice(event);
        publish.extend_from_slice(&[0xDE, 0xC1, 0x92, 0xF4]);
        let (f, used) = FrameCodec::new(Role::Client)
            .decode(&publish)
            .unwrap()
            .unwrap();
        assert_eq!(
            (f.packet_type, f.payload, used),
            (PacketType::Publish, event, publish.len())
        );
        let mut out = Vec::new();
        frame::encode(PacketType::Publish, event, CrcScope::Payload, &mut out).unwrap();
        assert_eq!(out, publish);

        let list = EventList {
            event_list: vec!["dynamic_detect_event".into()],
        };
        out.clear();
        encode_json(PacketType::Unsubscribe, &list, CrcScope::Payload, &mut out).unwrap();
        let mut unsub = vec![0xFF, 0x3E, 0x3E, 0xFF, 0x01, 0x07, 0x00, 0x27];
        unsub.extend_from_slice(br#"{"event_list":["dynamic_detect_event"]}"#);
        unsub.extend_from_slice(&[0xA8, 0xB2, 0xCC, 0xB7]);
        assert_eq!(out, unsub);
        let (f, _) = FrameCodec::new(Role::Server)
            .decode(&unsub)
            .unwrap()
            .unwrap();
        assert_eq!(f.packet_type, PacketType::Unsubscribe);
    }

    #[test]
    fn bad_payloads_are_typed_errors() {
        assert!(matches!(
            parse::<Code>(PacketType::Connack, b"{\"code\":"),
            Err(PacketError::BadJson {
                packet: "CONNACK",
                ..
            })
        ));
        assert!(matches!(
            parse::<Code>(PacketType::Connack, b"{}"),
            Err(PacketError::BadJson { .. })
        ));
        assert!(matches!(
            parse::<EventList>(PacketType::Subscribe, b"{\"event_list\":\"x\"}"),
            Err(PacketError::BadJson { .. })
        ));
    }
}
