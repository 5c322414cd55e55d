//! Arbitrary bytes as they could arrive from a camera: the frame codec (both roles, both CRC
//! scopes), the typed control payloads and the typed event view must never panic, must consume
//! exactly what they report, and an accepted frame must re-encode to the same bytes.
#![no_main]

use camgate::channel::frame::{self, CrcScope, FrameCodec, PacketType, Role};
use camgate::channel::packet::{self, Code, Connect, EventList, Puback};
use camgate::event::EventView;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for role in [Role::Client, Role::Server] {
        for scope in [CrcScope::Payload, CrcScope::Frame] {
            let codec = FrameCodec::new(role).with_crc_scope(scope).with_max_payload(4096);
            let mut pos = 0;
            while pos < data.len() {
                match codec.decode(&data[pos..]) {
                    Ok(Some((f, used))) => {
                        assert!(used >= frame::HEADER_LEN + frame::CRC_LEN && used <= data.len() - pos);
                        if f.quirk.is_none() {
                            let mut again = Vec::new();
                            frame::encode(f.packet_type, f.payload, scope, &mut again).unwrap();
                            assert_eq!(&again[..], &data[pos..pos + used]);
                        }
                        match f.packet_type {
                            PacketType::Publish => {
                                let _ = EventView::parse(f.payload).map(|v| (v.kind(), v.detect_label(camgate::event::Source::Channel)));
                            }
                            PacketType::Connect => {
                                let _ = packet::parse::<Connect>(f.packet_type, f.payload);
                            }
                            PacketType::Subscribe | PacketType::Unsubscribe => {
                                let _ = packet::parse::<EventList>(f.packet_type, f.payload);
                            }
                            PacketType::Puback => {
                                let _ = packet::parse::<Puback>(f.packet_type, f.payload);
                            }
                            _ => {
                                let _ = packet::parse::<Code>(f.packet_type, f.payload);
                            }
                        }
                        pos += used;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
    // The payload alone as an event, as the hook path will hand it over.
    let _ = EventView::parse(data);
});
