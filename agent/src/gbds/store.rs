//! The transactions on disk: `tx/<tguid>.json` (the state, rewritten atomically at each step)
//! and `tx/<tguid>.images` (the pictures, from acceptance until the faces are taken from them).

use std::path::{Path, PathBuf};

use tracing::warn;

use super::tx::Tx;
use super::GbdsError;
use crate::gallery::log::{create_dir_adopted, write_file_atomic};

const IMAGES_MAGIC: &[u8; 8] = b"CGIMG1\n\0";

#[derive(Debug, Clone)]
pub struct TxFiles {
    dir: PathBuf,
}

impl TxFiles {
    /// Opens (creating) `<dir>/tx` and reads every transaction in it. A file that does not
    /// parse is set aside as `<name>.damaged` with a warning: one bad file must not stop the
    /// transactions of everyone else.
    pub fn open(dir: &Path) -> Result<(TxFiles, Vec<Tx>), GbdsError> {
        std::fs::create_dir_all(dir).map_err(GbdsError::io(dir))?;
        let txdir = dir.join("tx");
        create_dir_adopted(&txdir, dir)?;
        let mut txs = Vec::new();
        for entry in std::fs::read_dir(&txdir).map_err(GbdsError::io(&txdir))? {
            let path = entry.map_err(GbdsError::io(&txdir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(GbdsError::io(&path))?;
            match Tx::parse(&bytes) {
                Ok(tx) => txs.push(tx),
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "damaged transaction file set aside");
                    let _ = std::fs::rename(&path, path.with_extension("damaged"));
                }
            }
        }
        txs.sort_by_key(|t| t.seq);
        Ok((TxFiles { dir: txdir }, txs))
    }

    fn path(&self, tguid: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{tguid}.{ext}"))
    }

    /// Writes the state durably (fsync of the file and the directory).
    pub fn save(&self, tx: &Tx) -> Result<(), GbdsError> {
        let bytes = serde_json::to_vec(tx).map_err(|e| GbdsError::Internal(e.to_string()))?;
        Ok(write_file_atomic(&self.path(&tx.tguid, "json"), &bytes)?)
    }

    pub fn save_images(&self, tguid: &str, images: &[Vec<u8>]) -> Result<(), GbdsError> {
        Ok(write_file_atomic(
            &self.path(tguid, "images"),
            &encode_images(images),
        )?)
    }

    pub fn images(&self, tguid: &str) -> Result<Vec<Vec<u8>>, GbdsError> {
        let path = self.path(tguid, "images");
        let bytes = std::fs::read(&path).map_err(GbdsError::io(&path))?;
        decode_images(&bytes).map_err(|reason| GbdsError::Damaged { path, reason })
    }

    pub fn drop_images(&self, tguid: &str) {
        let _ = std::fs::remove_file(self.path(tguid, "images"));
    }

    pub fn remove(&self, tguid: &str) {
        self.drop_images(tguid);
        let _ = std::fs::remove_file(self.path(tguid, "json"));
    }
}

/// `CGIMG1\n\0`, then per image a little-endian u32 length and the bytes.
pub fn encode_images(images: &[Vec<u8>]) -> Vec<u8> {
    let mut out = IMAGES_MAGIC.to_vec();
    for i in images {
        out.extend((i.len() as u32).to_le_bytes());
        out.extend(i);
    }
    out
}

pub fn decode_images(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut rest = bytes
        .strip_prefix(IMAGES_MAGIC)
        .ok_or("not a camgate images file")?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or("truncated length")?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(format!("image {} truncated", out.len()));
        }
        out.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_round_trip_and_damage_is_named() {
        let imgs = vec![b"\xff\xd8abc".to_vec(), Vec::new(), vec![7; 300]];
        let enc = encode_images(&imgs);
        assert_eq!(decode_images(&enc).unwrap(), imgs);
        assert_eq!(
            decode_images(&enc[..enc.len() - 1]).unwrap_err(),
            "image 2 truncated"
        );
        assert!(decode_images(b"junk").is_err());
        assert_eq!(decode_images(&enc[..10]).unwrap_err(), "truncated length");
    }
}
