//! The dead-letter file: records the broker will never accept, set aside with the reason so the
//! stream goes on and an operator can replay them by hand. One JSON line each, synced before the
//! cursor moves past the record.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::io::AsyncWriteExt;
use tracing::error;

#[derive(Serialize)]
struct Line<'a> {
    offset: u64,
    key: &'a str,
    reason: &'a str,
    at_ms: u64,
    /// The stored envelope as JSON when it is JSON, else as text (lossy).
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    record_text: Option<String>,
}

pub(super) struct DeadLetter {
    path: PathBuf,
    file: Option<tokio::fs::File>,
}

impl DeadLetter {
    pub fn new(path: PathBuf) -> Self {
        Self { path, file: None }
    }

    pub async fn write(
        &mut self,
        offset: u64,
        key: &str,
        reason: &str,
        record: &[u8],
    ) -> std::io::Result<()> {
        let res = self.try_write(offset, key, reason, record).await;
        if let Err(e) = &res {
            error!(path = %self.path.display(), offset, error = %e, "cannot write the kafka dead-letter file");
            // Reopened on the next attempt (the file may have been removed or the disk replaced).
            self.file = None;
        }
        res
    }

    async fn try_write(
        &mut self,
        offset: u64,
        key: &str,
        reason: &str,
        record: &[u8],
    ) -> std::io::Result<()> {
        let raw = std::str::from_utf8(record)
            .ok()
            .and_then(|s| serde_json::from_str::<&RawValue>(s).ok());
        let line = Line {
            offset,
            key,
            reason,
            at_ms: crate::clock::unix_now_ms(),
            record: raw,
            record_text: raw
                .is_none()
                .then(|| String::from_utf8_lossy(record).into_owned()),
        };
        let mut buf = serde_json::to_vec(&line).map_err(std::io::Error::other)?;
        buf.push(b'\n');
        if self.file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(dir).await?;
            }
            self.file = Some(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .await?,
            );
        }
        let f = self.file.as_mut().expect("opened above");
        f.write_all(&buf).await?;
        f.sync_data().await
    }
}
