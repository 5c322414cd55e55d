//! Message Channel framing (DECISIONS §2): bytes ⇄ frames. No I/O, no async, no allocation on decode.
//!
//! ```text
//! offset size  field
//! 0      4     flag      FF 3E 3E FF
//! 4      1     version   0x01
//! 5      1     type      packet type
//! 6      2     length    payload length, big-endian
//! 8      N     payload   UTF-8 JSON (empty for PINGREQ/PINGRESP/DISCONNECT)
//! 8+N    4     crc       CRC-32 (IEEE) of the payload (or of header+payload: `CrcScope::Frame`), big-endian
//! ```
//!
//! Decoding follows the `tokio_util::codec` contract: `Ok(None)` while the frame is incomplete, the
//! length cap is checked from the header alone (before anything is buffered), and exactly one frame
//! is consumed per call so trailing bytes stay for the next one. [`FrameCodec`] implements
//! [`Decoder`] (yielding [`OwnedFrame`]s whose payload is a slice of the read buffer, so a frame is
//! decoded once) and [`Encoder`]; [`FrameCodec::decode`] is the same rule over a plain slice.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

pub const FLAG: [u8; 4] = [0xFF, 0x3E, 0x3E, 0xFF];
pub const VERSION: u8 = 0x01;
pub const HEADER_LEN: usize = 8;
pub const CRC_LEN: usize = 4;
/// The length field is a u16, so no payload can be longer than this.
pub const MAX_PAYLOAD: usize = u16::MAX as usize;

/// Packet types of the Message Channel. Type 0 is reserved and is a protocol error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    Connect,
    Connack,
    PingReq,
    PingResp,
    Subscribe,
    Suback,
    Unsubscribe,
    Unsuback,
    Publish,
    Puback,
    Disconnect,
}

impl PacketType {
    /// The code camgate writes on the wire (strict in what it sends).
    pub const fn code(self) -> u8 {
        match self {
            PacketType::Connect => 1,
            PacketType::Connack => 2,
            PacketType::PingReq => 3,
            PacketType::PingResp => 4,
            PacketType::Subscribe => 5,
            PacketType::Suback => 6,
            PacketType::Unsubscribe => 7,
            PacketType::Unsuback => 8,
            PacketType::Publish => 9,
            PacketType::Puback => 10,
            PacketType::Disconnect => 11,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            PacketType::Connect => "CONNECT",
            PacketType::Connack => "CONNACK",
            PacketType::PingReq => "PINGREQ",
            PacketType::PingResp => "PINGRESP",
            PacketType::Subscribe => "SUBSCRIBE",
            PacketType::Suback => "SUBACK",
            PacketType::Unsubscribe => "UNSUBSCRIBE",
            PacketType::Unsuback => "UNSUBACK",
            PacketType::Publish => "PUBLISH",
            PacketType::Puback => "PUBACK",
            PacketType::Disconnect => "DISCONNECT",
        }
    }
}

/// Which side of the channel is decoding: the same byte means different packets by direction
/// (a camera answers UNSUBSCRIBE with type 7, which only a client reads as UNSUBACK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// camgate: reads what the camera (server) sends.
    Client,
    /// The camera simulator: reads what camgate sends.
    Server,
}

pub use crate::camera::CrcScope;

/// Deviations from the text that are accepted (DECISIONS §2) and must be counted by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quirk {
    /// DISCONNECT sent as 0x11 (the text's own example) instead of 11.
    Disconnect0x11,
    /// Unsubscribe answered with type 7 instead of UNSUBACK (8).
    UnsubackAs7,
    /// A version byte other than 0x01.
    Version(u8),
}

/// One decoded frame, borrowing its payload from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub version: u8,
    pub packet_type: PacketType,
    pub payload: &'a [u8],
    pub quirk: Option<Quirk>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad frame flag {0:02X?} (expected FF 3E 3E FF)")]
    BadFlag([u8; 4]),
    #[error("unknown packet type {0}")]
    UnknownType(u8),
    #[error("payload length {len} exceeds the limit of {max} bytes")]
    Oversize { len: usize, max: usize },
    #[error("bad CRC: frame says {received:08X}, computed {computed:08X}")]
    BadCrc { received: u32, computed: u32 },
}

/// What the tokio-util [`Decoder`] and [`Encoder`] fail with: a bad frame, or the transport.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A decoded frame that owns its payload: a reference-counted slice of the bytes read, taken out
/// of the read buffer without copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedFrame {
    pub version: u8,
    pub packet_type: PacketType,
    pub payload: Bytes,
    pub quirk: Option<Quirk>,
}

impl OwnedFrame {
    /// The borrowed view the session state machine takes.
    pub fn as_frame(&self) -> Frame<'_> {
        Frame {
            version: self.version,
            packet_type: self.packet_type,
            payload: &self.payload,
            quirk: self.quirk,
        }
    }
}

/// Decoder settings; one per connection.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    pub role: Role,
    pub crc_scope: CrcScope,
    /// Longest payload accepted; frames announcing more are refused from the header alone.
    pub max_payload: usize,
}

impl FrameCodec {
    pub const fn new(role: Role) -> Self {
        Self {
            role,
            crc_scope: CrcScope::Payload,
            max_payload: MAX_PAYLOAD,
        }
    }

    pub const fn with_crc_scope(mut self, scope: CrcScope) -> Self {
        self.crc_scope = scope;
        self
    }

    pub const fn with_max_payload(mut self, max: usize) -> Self {
        self.max_payload = max;
        self
    }

    /// Decodes one frame from the front of `buf`.
    ///
    /// Returns `Ok(None)` while more bytes are needed, `Ok(Some((frame, consumed)))` otherwise.
    /// Errors are reported as soon as the bytes that prove them have arrived (a bad flag or an
    /// oversize length before the payload is buffered).
    pub fn decode<'a>(&self, buf: &'a [u8]) -> Result<Option<(Frame<'a>, usize)>, FrameError> {
        // Check the flag on whatever prefix we have, so garbage is refused without waiting.
        let flag_len = buf.len().min(4);
        if buf[..flag_len] != FLAG[..flag_len] {
            let mut got = [0u8; 4];
            got[..flag_len].copy_from_slice(&buf[..flag_len]);
            return Err(FrameError::BadFlag(got));
        }
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let version = buf[4];
        let raw_type = buf[5];
        let packet_type = self.packet_type(raw_type)?;
        let len = u16::from_be_bytes([buf[6], buf[7]]) as usize;
        if len > self.max_payload {
            return Err(FrameError::Oversize {
                len,
                max: self.max_payload,
            });
        }
        let total = HEADER_LEN + len + CRC_LEN;
        if buf.len() < total {
            return Ok(None);
        }
        let payload = &buf[HEADER_LEN..HEADER_LEN + len];
        let crc_bytes = &buf[HEADER_LEN + len..total];
        let received = u32::from_be_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
        let computed = match self.crc_scope {
            CrcScope::Payload => crc32fast::hash(payload),
            CrcScope::Frame => crc32fast::hash(&buf[..HEADER_LEN + len]),
        };
        if received != computed {
            return Err(FrameError::BadCrc { received, computed });
        }
        let quirk = if raw_type == 0x11 {
            Some(Quirk::Disconnect0x11)
        } else if raw_type == 7 && self.role == Role::Client {
            Some(Quirk::UnsubackAs7)
        } else if version != VERSION {
            Some(Quirk::Version(version))
        } else {
            None
        };
        Ok(Some((
            Frame {
                version,
                packet_type,
                payload,
                quirk,
            },
            total,
        )))
    }

    fn packet_type(&self, raw: u8) -> Result<PacketType, FrameError> {
        Ok(match raw {
            1 => PacketType::Connect,
            2 => PacketType::Connack,
            3 => PacketType::PingReq,
            4 => PacketType::PingResp,
            5 => PacketType::Subscribe,
            6 => PacketType::Suback,
            7 if self.role == Role::Client => PacketType::Unsuback,
            7 => PacketType::Unsubscribe,
            8 => PacketType::Unsuback,
            9 => PacketType::Publish,
            10 => PacketType::Puback,
            11 | 0x11 => PacketType::Disconnect,
            other => return Err(FrameError::UnknownType(other)),
        })
    }
}

impl Decoder for FrameCodec {
    type Item = OwnedFrame;
    type Error = CodecError;

    /// Takes exactly one frame off the front of `src` (trailing bytes stay), or nothing while the
    /// frame is incomplete.
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<OwnedFrame>, CodecError> {
        let Some((f, used)) = FrameCodec::decode(self, src)? else {
            return Ok(None);
        };
        let (version, packet_type, quirk, len) =
            (f.version, f.packet_type, f.quirk, f.payload.len());
        let bytes = src.split_to(used).freeze();
        Ok(Some(OwnedFrame {
            version,
            packet_type,
            payload: bytes.slice(HEADER_LEN..HEADER_LEN + len),
            quirk,
        }))
    }
}

impl Encoder<Frame<'_>> for FrameCodec {
    type Error = CodecError;

    /// Writes `item` with its own version byte and type code, and this codec's CRC scope.
    fn encode(&mut self, item: Frame<'_>, dst: &mut BytesMut) -> Result<(), CodecError> {
        if item.payload.len() > self.max_payload {
            return Err(FrameError::Oversize {
                len: item.payload.len(),
                max: self.max_payload,
            }
            .into());
        }
        let mut out = Vec::with_capacity(HEADER_LEN + item.payload.len() + CRC_LEN);
        encode_raw(
            item.packet_type.code(),
            item.version,
            item.payload,
            self.crc_scope,
            &mut out,
        )?;
        dst.extend_from_slice(&out);
        Ok(())
    }
}

/// Appends one frame to `out`. The payload must fit the u16 length field.
pub fn encode(
    packet_type: PacketType,
    payload: &[u8],
    scope: CrcScope,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    encode_raw(packet_type.code(), VERSION, payload, scope, out)
}

/// Like [`encode`] with any type byte and version: used by the simulator to send the quirks
/// (0x11, type 7, other versions) that camgate must accept.
pub fn encode_raw(
    type_byte: u8,
    version: u8,
    payload: &[u8],
    scope: CrcScope,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(FrameError::Oversize {
            len: payload.len(),
            max: MAX_PAYLOAD,
        });
    }
    let start = out.len();
    out.reserve(HEADER_LEN + payload.len() + CRC_LEN);
    out.extend_from_slice(&FLAG);
    out.push(version);
    out.push(type_byte);
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    let crc = match scope {
        CrcScope::Payload => crc32fast::hash(payload),
        CrcScope::Frame => crc32fast::hash(&out[start..]),
    };
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden vectors written by hand from the spec: header, payload, and the CRC-32 of the
    /// payload as zlib computes it (`zlib.crc32(payload)`).
    fn golden() -> Vec<(PacketType, &'static [u8], Vec<u8>)> {
        let pingreq = vec![
            0xFF, 0x3E, 0x3E, 0xFF, 0x01, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        let pingresp = vec![
            0xFF, 0x3E, 0x3E, 0xFF, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        let disconnect = vec![
            0xFF, 0x3E, 0x3E, 0xFF, 0x01, 0x0B, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        let code0: &'static [u8] = br#"{"code":0}"#;
        let mut connack = vec![0xFF, 0x3E, 0x3E, 0xFF, 0x01, 0x02, 0x00, 0x0A];
        connack.extend_from_slice(code0);
        connack.extend_from_slice(&CODE0_CRC.to_be_bytes());
        let mut suback = connack.clone();
        suback[5] = 0x06;
        let mut unsuback = connack.clone();
        unsuback[5] = 0x08;
        let puback_payload: &'static [u8] = br#"{"event_id":1}"#;
        let mut puback = vec![0xFF, 0x3E, 0x3E, 0xFF, 0x01, 0x0A, 0x00, 0x0E];
        puback.extend_from_slice(puback_payload);
        puback.extend_from_slice(&EVENT1_CRC.to_be_bytes());
        vec![
            (PacketType::PingReq, b"", pingreq),
            (PacketType::PingResp, b"", pingresp),
            (PacketType::Disconnect, b"", disconnect),
            (PacketType::Connack, code0, connack),
            (PacketType::Suback, code0, suback),
            (PacketType::Unsuback, code0, unsuback),
            (PacketType::Puback, puback_payload, puback),
        ]
    }

    /// zlib.crc32(b'{"code":0}')
    const CODE0_CRC: u32 = 0x723C_AE98;
    /// zlib.crc32(b'{"event_id":1}')
    const EVENT1_CRC: u32 = 0xD727_9D90;

    #[test]
    fn crc_constants_match_zlib() {
        // The check value of CRC-32/ISO-HDLC ("123456789" -> CBF43926) pins the algorithm.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32fast::hash(br#"{"code":0}"#), CODE0_CRC);
        assert_eq!(crc32fast::hash(br#"{"event_id":1}"#), EVENT1_CRC);
    }

    #[test]
    fn golden_vectors_encode_and_decode() {
        for (ty, payload, bytes) in golden() {
            let mut out = Vec::new();
            encode(ty, payload, CrcScope::Payload, &mut out).unwrap();
            assert_eq!(out, bytes, "encode {}", ty.name());
            let (frame, used) = FrameCodec::new(Role::Client)
                .decode(&bytes)
                .unwrap()
                .unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(frame.packet_type, ty);
            assert_eq!(frame.payload, payload);
            assert_eq!(frame.quirk, None);
        }
    }

    #[test]
    fn client_to_server_types_decode_on_the_server() {
        for ty in [
            PacketType::Connect,
            PacketType::Subscribe,
            PacketType::Unsubscribe,
            PacketType::Publish,
            PacketType::PingReq,
        ] {
            let mut out = Vec::new();
            encode(ty, b"{}", CrcScope::Payload, &mut out).unwrap();
            let (frame, _) = FrameCodec::new(Role::Server).decode(&out).unwrap().unwrap();
            assert_eq!(frame.packet_type, ty);
        }
    }

    /// The tokio-util `Decoder`, fed the golden stream a few bytes at a time (scripted partial
    /// reads, as tokio-util's `read_multi_frame_across_packets`): every frame comes out once, whole,
    /// and the bytes of the next frame stay in the buffer.
    #[test]
    fn decoder_yields_each_frame_once_across_partial_reads() {
        let mut stream = Vec::new();
        for (_, _, bytes) in golden() {
            stream.extend_from_slice(&bytes);
        }
        for chunk in [1, 3, 7, 64] {
            let mut codec = FrameCodec::new(Role::Client);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(f) = Decoder::decode(&mut codec, &mut buf).unwrap() {
                    got.push((f.packet_type, f.payload.to_vec()));
                }
            }
            assert!(buf.is_empty(), "chunk {chunk}: {} bytes left", buf.len());
            let want: Vec<_> = golden()
                .into_iter()
                .map(|(t, p, _)| (t, p.to_vec()))
                .collect();
            assert_eq!(got, want, "chunk {chunk}");
        }
    }

    #[test]
    fn encoder_writes_the_golden_bytes_and_refuses_oversize() {
        let mut codec = FrameCodec::new(Role::Client);
        for (ty, payload, bytes) in golden() {
            let mut dst = BytesMut::new();
            let frame = Frame {
                version: VERSION,
                packet_type: ty,
                payload,
                quirk: None,
            };
            codec.encode(frame, &mut dst).unwrap();
            assert_eq!(&dst[..], &bytes[..], "{}", ty.name());
        }
        let mut small = FrameCodec::new(Role::Client).with_max_payload(4);
        let frame = Frame {
            version: VERSION,
            packet_type: PacketType::Publish,
            payload: b"12345",
            quirk: None,
        };
        let err = small.encode(frame, &mut BytesMut::new()).unwrap_err();
        assert!(
            matches!(
                err,
                CodecError::Frame(FrameError::Oversize { len: 5, max: 4 })
            ),
            "{err}"
        );
    }

    #[test]
    fn split_reads_at_every_boundary() {
        let mut stream = Vec::new();
        for (_, _, bytes) in golden() {
            stream.extend_from_slice(&bytes);
        }
        let codec = FrameCodec::new(Role::Client);
        // Feed the stream one prefix at a time: every prefix that ends inside a frame is Ok(None).
        for cut in 0..stream.len() {
            let mut pos = 0;
            let mut frames = 0;
            // Everything before `cut` is available; decode as much as possible.
            while let Some((_, used)) = codec.decode(&stream[pos..cut]).unwrap() {
                pos += used;
                frames += 1;
            }
            let expected: usize = golden()
                .iter()
                .scan(0, |acc, (_, _, b)| {
                    *acc += b.len();
                    Some(*acc)
                })
                .filter(|end| *end <= cut)
                .count();
            assert_eq!(frames, expected, "cut at {cut}");
        }
    }

    #[test]
    fn trailing_bytes_are_not_consumed() {
        let (_, _, mut bytes) = golden().remove(3);
        let len = bytes.len();
        bytes.extend_from_slice(&[0xFF, 0x3E, 0x3E]);
        let (frame, used) = FrameCodec::new(Role::Client)
            .decode(&bytes)
            .unwrap()
            .unwrap();
        assert_eq!(used, len);
        assert_eq!(frame.packet_type, PacketType::Connack);
    }

    #[test]
    fn bad_flag_is_refused_on_the_first_byte() {
        assert_eq!(
            FrameCodec::new(Role::Client).decode(&[0x00]),
            Err(FrameError::BadFlag([0, 0, 0, 0]))
        );
        assert_eq!(
            FrameCodec::new(Role::Client).decode(&[0xFF, 0x3E, 0x3F]),
            Err(FrameError::BadFlag([0xFF, 0x3E, 0x3F, 0]))
        );
        assert_eq!(FrameCodec::new(Role::Client).decode(&[]), Ok(None));
    }

    #[test]
    fn bad_crc_is_refused() {
        let (_, _, mut bytes) = golden().remove(3);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        assert!(matches!(
            FrameCodec::new(Role::Client).decode(&bytes),
            Err(FrameError::BadCrc { .. })
        ));
    }

    #[test]
    fn unknown_and_reserved_types_are_refused() {
        for t in [0u8, 12, 0x10, 0x12, 0xFF] {
            let mut out = Vec::new();
            encode_raw(t, 1, b"", CrcScope::Payload, &mut out).unwrap();
            assert_eq!(
                FrameCodec::new(Role::Client).decode(&out),
                Err(FrameError::UnknownType(t))
            );
        }
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let codec = FrameCodec::new(Role::Client).with_max_payload(1024);
        let header = [0xFF, 0x3E, 0x3E, 0xFF, 0x01, 0x09, 0x04, 0x01];
        assert_eq!(
            codec.decode(&header),
            Err(FrameError::Oversize {
                len: 1025,
                max: 1024
            })
        );
        let mut big = Vec::new();
        assert!(encode(
            PacketType::Publish,
            &vec![b' '; MAX_PAYLOAD + 1],
            CrcScope::Payload,
            &mut big
        )
        .is_err());
    }

    #[test]
    fn quirks_are_accepted_and_reported() {
        let codec = FrameCodec::new(Role::Client);
        let mut out = Vec::new();
        encode_raw(0x11, 1, b"", CrcScope::Payload, &mut out).unwrap();
        let (f, _) = codec.decode(&out).unwrap().unwrap();
        assert_eq!(
            (f.packet_type, f.quirk),
            (PacketType::Disconnect, Some(Quirk::Disconnect0x11))
        );

        out.clear();
        encode_raw(7, 1, br#"{"code":0}"#, CrcScope::Payload, &mut out).unwrap();
        let (f, _) = codec.decode(&out).unwrap().unwrap();
        assert_eq!(
            (f.packet_type, f.quirk),
            (PacketType::Unsuback, Some(Quirk::UnsubackAs7))
        );

        out.clear();
        encode_raw(4, 2, b"", CrcScope::Payload, &mut out).unwrap();
        let (f, _) = codec.decode(&out).unwrap().unwrap();
        assert_eq!(
            (f.packet_type, f.quirk),
            (PacketType::PingResp, Some(Quirk::Version(2)))
        );
    }

    #[test]
    fn frame_crc_scope_round_trips_and_differs() {
        let mut out = Vec::new();
        encode(
            PacketType::Puback,
            br#"{"event_id":1}"#,
            CrcScope::Frame,
            &mut out,
        )
        .unwrap();
        let codec = FrameCodec::new(Role::Client).with_crc_scope(CrcScope::Frame);
        assert!(codec.decode(&out).unwrap().is_some());
        assert!(matches!(
            FrameCodec::new(Role::Client).decode(&out),
            Err(FrameError::BadCrc { .. })
        ));
    }
}
