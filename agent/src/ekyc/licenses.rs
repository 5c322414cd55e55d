//! The last `register_license` face of each client, for a `compare_face` whose picture holds
//! only the live face (DECISIONS §5). One file per client under `<dir>/licenses/`: the aligned
//! 112×112 BGR face, written to a temporary name, fsynced and renamed, so a crash leaves the old
//! face or the new one. The aligned face rather than its embedding: it serves both modes (split
//! sends it on as `idface`) and survives a model change. Bounded: past `max_clients`, the client
//! registered longest ago is forgotten.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use serde_json::Value;

use super::messages::{AlignedBgr, ALIGNED_SIDE};

const BYTES: usize = ALIGNED_SIDE * ALIGNED_SIDE * 3;

#[derive(Debug, thiserror::Error)]
#[error("ekyc licenses {path}: {source}")]
pub struct LicenseError {
    path: PathBuf,
    source: std::io::Error,
}

pub struct Licenses {
    dir: PathBuf,
    max: usize,
    /// File name → order of registration (higher is newer).
    index: HashMap<String, u64>,
    next: u64,
}

/// The file name of a client: the MD5 of its id as JSON (`124` and `"124"` are two clients, as
/// they are two values to the web side), so any id makes a safe, fixed-length name.
fn file_name(client_id: &Value) -> String {
    let digest = Md5::digest(client_id.to_string().as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.bgr")
}

impl Licenses {
    /// Opens (creating) `<dir>/licenses`; a file of the wrong size is a torn write from before
    /// atomic renames existed or foreign, and is removed.
    pub fn open(dir: &Path, max: usize) -> Result<Licenses, LicenseError> {
        let dir = dir.join("licenses");
        let err = |source| LicenseError {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(err)?;
        let mut found: Vec<(std::time::SystemTime, String)> = Vec::new();
        for e in fs::read_dir(&dir).map_err(err)? {
            let e = e.map_err(err)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = e.metadata().map_err(err)?;
            if !name.ends_with(".bgr") || meta.len() != BYTES as u64 {
                let _ = fs::remove_file(e.path());
                continue;
            }
            found.push((meta.modified().map_err(err)?, name));
        }
        found.sort();
        let next = found.len() as u64;
        let index = found
            .into_iter()
            .enumerate()
            .map(|(i, (_, n))| (n, i as u64))
            .collect();
        let mut l = Licenses {
            dir,
            max,
            index,
            next,
        };
        l.evict()?;
        Ok(l)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn get(&self, client_id: &Value) -> Result<Option<AlignedBgr>, LicenseError> {
        let name = file_name(client_id);
        if !self.index.contains_key(&name) {
            return Ok(None);
        }
        let path = self.dir.join(&name);
        match fs::read(&path) {
            Ok(b) if b.len() == BYTES => Ok(Some(AlignedBgr(b))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(LicenseError { path, source }),
        }
    }

    /// Keeps `face` as the client's license, durably, before the request is answered.
    pub fn put(&mut self, client_id: &Value, face: &AlignedBgr) -> Result<(), LicenseError> {
        let name = file_name(client_id);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let err = |source| LicenseError {
            path: path.clone(),
            source,
        };
        let mut f = fs::File::create(&tmp).map_err(err)?;
        f.write_all(&face.0).map_err(err)?;
        f.sync_all().map_err(err)?;
        fs::rename(&tmp, &path).map_err(err)?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        self.index.insert(name, self.next);
        self.next += 1;
        self.evict()
    }

    fn evict(&mut self) -> Result<(), LicenseError> {
        while self.index.len() > self.max {
            let Some(oldest) = self
                .index
                .iter()
                .min_by_key(|(_, &order)| order)
                .map(|(n, _)| n.clone())
            else {
                break;
            };
            self.index.remove(&oldest);
            let path = self.dir.join(&oldest);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(LicenseError { path, source }),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(v: u8) -> AlignedBgr {
        AlignedBgr(vec![v; BYTES])
    }

    #[test]
    fn a_license_survives_reopening_and_the_oldest_goes_first() {
        let tmp = tempfile::tempdir().unwrap();
        let mut l = Licenses::open(tmp.path(), 2).unwrap();
        let (a, b, c) = (Value::from(1), Value::from("1"), Value::from(3));
        assert_eq!(l.get(&a).unwrap(), None);
        l.put(&a, &face(1)).unwrap();
        l.put(&b, &face(2)).unwrap();
        assert_eq!(l.get(&a).unwrap(), Some(face(1)));
        assert_eq!(
            l.get(&b).unwrap(),
            Some(face(2)),
            "124 and \"124\" are two clients"
        );
        l.put(&a, &face(4)).unwrap();
        l.put(&c, &face(3)).unwrap();
        assert_eq!(
            l.get(&b).unwrap(),
            None,
            "the least recently registered is forgotten"
        );
        assert_eq!(l.len(), 2);
        drop(l);
        // A torn file is dropped at open; the others are kept.
        fs::write(tmp.path().join("licenses/0123.bgr"), b"short").unwrap();
        let l = Licenses::open(tmp.path(), 2).unwrap();
        assert_eq!(l.get(&a).unwrap(), Some(face(4)));
        assert_eq!(l.get(&c).unwrap(), Some(face(3)));
        assert_eq!(l.len(), 2);
        assert!(!tmp.path().join("licenses/0123.bgr").exists());
    }
}
