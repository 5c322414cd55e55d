//! On-disk format of one log segment, with no I/O (the fuzz target and recovery share it).
//!
//! ```text
//! segment = header record*
//! header  = "CGOB" u32:version(=1) u64:base_offset u32:crc32(previous 16 bytes)   (20 bytes, LE)
//! record  = u32:len u32:crc32(len bytes ++ body) body[len]                          (LE)
//! ```
//!
//! The record checksum covers the length field too: a zero-filled tail (what some file systems
//! leave after a crash) would otherwise decode as valid empty records, since crc32("") == 0.
//! Offsets are implicit: the n-th record of a segment has offset `base_offset + n`.

/// Magic bytes at the start of every segment file.
pub const MAGIC: [u8; 4] = *b"CGOB";
/// Format version written in the header.
pub const VERSION: u32 = 1;
/// Size of the segment header.
pub const HEADER_LEN: usize = 20;
/// Size of a record's framing (length + checksum).
pub const RECORD_OVERHEAD: usize = 8;
/// Largest record body the format accepts; a larger length field is corruption, and is never
/// used to size an allocation.
pub const MAX_RECORD_LEN: usize = 1024 * 1024;

/// Decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub base_offset: u64,
}

/// Why a segment header was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("segment shorter than its header ({0} bytes)")]
    Short(usize),
    #[error("bad segment magic")]
    BadMagic,
    #[error("unsupported segment version {0}")]
    BadVersion(u32),
    #[error("segment header checksum mismatch")]
    BadChecksum,
}

pub fn encode_header(base_offset: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&base_offset.to_le_bytes());
    let crc = crc32fast::hash(&h[0..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

pub fn decode_header(buf: &[u8]) -> Result<Header, HeaderError> {
    if buf.len() < HEADER_LEN {
        return Err(HeaderError::Short(buf.len()));
    }
    if buf[0..4] != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let crc = u32::from_le_bytes(le4(&buf[16..20]));
    if crc32fast::hash(&buf[0..16]) != crc {
        return Err(HeaderError::BadChecksum);
    }
    let version = u32::from_le_bytes(le4(&buf[4..8]));
    if version != VERSION {
        return Err(HeaderError::BadVersion(version));
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[8..16]);
    Ok(Header {
        base_offset: u64::from_le_bytes(b),
    })
}

fn le4(s: &[u8]) -> [u8; 4] {
    let mut b = [0u8; 4];
    b.copy_from_slice(&s[..4]);
    b
}

fn record_crc(len: u32, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// Bytes a record of `body_len` takes on disk.
pub fn record_size(body_len: usize) -> u64 {
    (RECORD_OVERHEAD + body_len) as u64
}

/// Appends the framed record to `out`. The caller guarantees `body.len() <= MAX_RECORD_LEN`.
pub fn encode_record(body: &[u8], out: &mut Vec<u8>) {
    debug_assert!(body.len() <= MAX_RECORD_LEN);
    let len = body.len() as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&record_crc(len, body).to_le_bytes());
    out.extend_from_slice(body);
}

/// Why decoding stopped before the end of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The buffer ends inside a record: a torn write when it is the end of the file.
    #[error("incomplete record ({have} of {need} bytes)")]
    Incomplete { have: usize, need: usize },
    #[error("record length {0} exceeds the maximum")]
    TooLong(u32),
    #[error("record checksum mismatch")]
    BadChecksum,
}

/// Result of decoding the record at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A complete, checksummed record and the bytes it took.
    Record {
        body: &'a [u8],
        size: usize,
    },
    Error(RecordError),
}

/// Decodes only the framing; `Ok(len)` means the body has `len` bytes (not yet checked).
pub fn decode_frame(buf: &[u8]) -> Result<(u32, u32), RecordError> {
    if buf.len() < RECORD_OVERHEAD {
        return Err(RecordError::Incomplete {
            have: buf.len(),
            need: RECORD_OVERHEAD,
        });
    }
    let len = u32::from_le_bytes(le4(&buf[0..4]));
    let crc = u32::from_le_bytes(le4(&buf[4..8]));
    if len as usize > MAX_RECORD_LEN {
        return Err(RecordError::TooLong(len));
    }
    Ok((len, crc))
}

/// Checks a body against the framing read by [`decode_frame`].
pub fn check_body(len: u32, crc: u32, body: &[u8]) -> Result<(), RecordError> {
    if record_crc(len, body) == crc {
        Ok(())
    } else {
        Err(RecordError::BadChecksum)
    }
}

pub fn decode_record(buf: &[u8]) -> Decoded<'_> {
    let (len, crc) = match decode_frame(buf) {
        Ok(f) => f,
        Err(e) => return Decoded::Error(e),
    };
    let need = RECORD_OVERHEAD + len as usize;
    if buf.len() < need {
        return Decoded::Error(RecordError::Incomplete {
            have: buf.len(),
            need,
        });
    }
    let body = &buf[RECORD_OVERHEAD..need];
    match check_body(len, crc, body) {
        Ok(()) => Decoded::Record { body, size: need },
        Err(e) => Decoded::Error(e),
    }
}

/// Records decoded from a byte region (the part of a segment after its header).
#[derive(Debug, PartialEq, Eq)]
pub struct RecordScan<'a> {
    /// Every valid record before the first problem, in order.
    pub records: Vec<&'a [u8]>,
    /// Length of the valid prefix of the region (where a torn tail gets truncated).
    pub valid_len: usize,
    /// What stopped the scan, if it did not end exactly at the end of the region.
    pub stop: Option<RecordError>,
}

/// Decodes records until the end of `buf` or the first bad one. Never panics, whatever the bytes.
pub fn parse_records(buf: &[u8]) -> RecordScan<'_> {
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        match decode_record(&buf[pos..]) {
            Decoded::Record { body, size } => {
                records.push(body);
                pos += size;
            }
            Decoded::Error(e) => {
                return RecordScan {
                    records,
                    valid_len: pos,
                    stop: Some(e),
                }
            }
        }
    }
    RecordScan {
        records,
        valid_len: pos,
        stop: None,
    }
}

/// A whole segment file decoded.
#[derive(Debug, PartialEq, Eq)]
pub struct SegmentScan<'a> {
    pub header: Header,
    pub records: Vec<&'a [u8]>,
    /// Length of the valid prefix of the file, header included.
    pub valid_len: usize,
    pub stop: Option<RecordError>,
}

/// Decodes a whole segment file. Never panics, whatever the bytes.
pub fn parse_segment(buf: &[u8]) -> Result<SegmentScan<'_>, HeaderError> {
    let header = decode_header(buf)?;
    let scan = parse_records(&buf[HEADER_LEN..]);
    Ok(SegmentScan {
        header,
        records: scan.records,
        valid_len: HEADER_LEN + scan.valid_len,
        stop: scan.stop,
    })
}

/// File name of the segment whose first record has `base_offset` (sorts in offset order).
pub fn file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.seg")
}

/// Inverse of [`file_name`]; `None` for any other file.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One segment at base 7 holding the records "hi" and "" — bytes written out by hand.
    const GOLDEN: &[u8] = &[
        // header: "CGOB", version 1, base 7, crc32 of those 16 bytes
        b'C', b'G', b'O', b'B', 1, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0xAB, 0x5F, 0x6B, 0xE1, //
        // record "hi": len 2, crc32([02 00 00 00 'h' 'i'])
        2, 0, 0, 0, 0xFB, 0x38, 0x40, 0x65, b'h', b'i', //
        // record "": len 0, crc32([00 00 00 00])
        0, 0, 0, 0, 0x1C, 0xDF, 0x44, 0x21,
    ];

    fn golden_by_encoder() -> Vec<u8> {
        let mut v = encode_header(7).to_vec();
        encode_record(b"hi", &mut v);
        encode_record(b"", &mut v);
        v
    }

    #[test]
    fn golden_bytes_match_encoder() {
        assert_eq!(golden_by_encoder(), GOLDEN);
    }

    #[test]
    fn golden_bytes_decode() {
        let s = parse_segment(GOLDEN).unwrap();
        assert_eq!(s.header, Header { base_offset: 7 });
        assert_eq!(s.records, vec![&b"hi"[..], &b""[..]]);
        assert_eq!(s.valid_len, GOLDEN.len());
        assert_eq!(s.stop, None);
    }

    #[test]
    fn torn_tail_at_every_byte_boundary() {
        let record_ends = [HEADER_LEN, HEADER_LEN + 10, HEADER_LEN + 18];
        for cut in 0..=GOLDEN.len() {
            let buf = &GOLDEN[..cut];
            match parse_segment(buf) {
                Err(HeaderError::Short(n)) => assert!(cut < HEADER_LEN && n == cut),
                Err(e) => panic!("cut {cut}: unexpected {e}"),
                Ok(s) => {
                    assert!(cut >= HEADER_LEN);
                    // The valid prefix is the last record boundary at or before the cut.
                    let end = *record_ends.iter().filter(|&&e| e <= cut).max().unwrap();
                    assert_eq!(s.valid_len, end, "cut {cut}");
                    let n = record_ends.iter().filter(|&&e| e <= cut).count() - 1;
                    assert_eq!(s.records.len(), n, "cut {cut}");
                    if cut == end {
                        assert_eq!(s.stop, None, "cut {cut}");
                    } else {
                        assert!(
                            matches!(s.stop, Some(RecordError::Incomplete { .. })),
                            "cut {cut}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bad_crc_in_body_or_length_stops_scan() {
        // Every single-bit flip inside the first record is detected, and nothing after it is read.
        for byte in HEADER_LEN..HEADER_LEN + 10 {
            for bit in 0..8 {
                let mut buf = GOLDEN.to_vec();
                buf[byte] ^= 1 << bit;
                let s = parse_segment(&buf).unwrap();
                assert!(s.records.is_empty(), "flip {byte}.{bit}");
                assert_eq!(s.valid_len, HEADER_LEN, "flip {byte}.{bit}");
                assert!(s.stop.is_some(), "flip {byte}.{bit}");
            }
        }
    }

    #[test]
    fn bad_header_rejected() {
        for byte in 0..HEADER_LEN {
            let mut buf = GOLDEN.to_vec();
            buf[byte] ^= 0x40;
            assert!(parse_segment(&buf).is_err(), "flip in header byte {byte}");
        }
        let mut v2 = GOLDEN.to_vec();
        v2[4] = 2;
        let crc = crc32fast::hash(&v2[0..16]);
        v2[16..20].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(parse_segment(&v2), Err(HeaderError::BadVersion(2)));
    }

    #[test]
    fn zero_length_record_and_zero_fill() {
        let mut v = Vec::new();
        encode_record(b"", &mut v);
        assert_eq!(decode_record(&v), Decoded::Record { body: b"", size: 8 });
        // A zero-filled tail must not decode as empty records.
        let zeros = [0u8; 64];
        let s = parse_records(&zeros);
        assert!(s.records.is_empty());
        assert_eq!(s.valid_len, 0);
        assert_eq!(s.stop, Some(RecordError::BadChecksum));
    }

    #[test]
    fn huge_length_field_is_corruption_not_allocation() {
        let mut buf = vec![0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];
        buf.extend_from_slice(b"short");
        assert_eq!(
            decode_record(&buf),
            Decoded::Error(RecordError::TooLong(u32::MAX))
        );
        let len = (MAX_RECORD_LEN + 1) as u32;
        let mut buf = len.to_le_bytes().to_vec();
        buf.extend_from_slice(&[0; 4]);
        assert_eq!(parse_records(&buf).stop, Some(RecordError::TooLong(len)));
        // The maximum itself is a legal length: incomplete here, not corrupt.
        let mut buf = (MAX_RECORD_LEN as u32).to_le_bytes().to_vec();
        buf.extend_from_slice(&[0; 4]);
        assert!(matches!(
            parse_records(&buf).stop,
            Some(RecordError::Incomplete { .. })
        ));
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(file_name(42), "00000000000000000042.seg");
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_file_name("42.seg"), None);
        assert_eq!(parse_file_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_file_name("00000000000000000042.seg.tmp"), None);
    }
}
