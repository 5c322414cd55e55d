//! The embedded default sink: every stored event as one JSON line, to a file (rotated once) or
//! to stdout. The cursor is committed only after the lines are written (and synced for files).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::outbox::{Outbox, OutboxError, Record};

/// `[sinks.jsonl]`: every stored event as one JSON line, so camgate is useful with no broker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JsonlSinkConfig {
    /// Default true.
    pub enabled: bool,
    /// File to append to, or `-` for stdout. Default `/var/lib/camgate/events.jsonl`.
    pub path: PathBuf,
    /// Size at which the file is rotated to `<path>.1` (one old file kept). Default 16 MiB.
    pub max_file_bytes: u64,
}

impl Default for JsonlSinkConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: PathBuf::from("/var/lib/camgate/events.jsonl"),
            max_file_bytes: 16 * 1024 * 1024,
        }
    }
}

impl JsonlSinkConfig {
    /// Appends every problem of `[sinks.jsonl]` to `errs`.
    pub fn validate(&self, errs: &mut Vec<String>) {
        if self.enabled && self.path.as_os_str().is_empty() {
            errs.push("sinks.jsonl.path: must not be empty (use \"-\" for stdout)".into());
        }
    }
}

pub const CONSUMER: &str = "jsonl";

#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("jsonl sink {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

enum Out {
    Stdout(tokio::io::Stdout),
    File {
        path: PathBuf,
        file: tokio::fs::File,
        len: u64,
        max: u64,
    },
}

impl Out {
    async fn open(cfg: &JsonlSinkConfig) -> Result<Out, JsonlError> {
        if cfg.path.as_os_str() == "-" {
            return Ok(Out::Stdout(tokio::io::stdout()));
        }
        let (file, len) = open_append(&cfg.path).await?;
        Ok(Out::File {
            path: cfg.path.clone(),
            file,
            len,
            max: cfg.max_file_bytes,
        })
    }

    async fn write(&mut self, batch: &[Record]) -> Result<(), JsonlError> {
        let mut buf = Vec::with_capacity(batch.iter().map(|r| r.data.len() + 1).sum());
        for r in batch {
            buf.extend_from_slice(&r.data);
            buf.push(b'\n');
        }
        match self {
            Out::Stdout(s) => {
                let io = |source| JsonlError::Io {
                    path: PathBuf::from("-"),
                    source,
                };
                s.write_all(&buf).await.map_err(io)?;
                s.flush().await.map_err(io)?;
            }
            Out::File {
                path,
                file,
                len,
                max,
            } => {
                if *len > 0 && *len + buf.len() as u64 > *max {
                    let old = path.with_extension("jsonl.1");
                    tokio::fs::rename(&*path, &old)
                        .await
                        .map_err(|source| JsonlError::Io {
                            path: old.clone(),
                            source,
                        })?;
                    (*file, *len) = open_append(path).await?;
                }
                let io = |source| JsonlError::Io {
                    path: path.clone(),
                    source,
                };
                file.write_all(&buf).await.map_err(io)?;
                file.sync_data().await.map_err(io)?;
                *len += buf.len() as u64;
            }
        }
        Ok(())
    }
}

async fn open_append(path: &Path) -> Result<(tokio::fs::File, u64), JsonlError> {
    let io = |source| JsonlError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
    }
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(io)?;
    let len = file.metadata().await.map_err(io)?.len();
    Ok((file, len))
}

/// Runs until `shutdown`; then takes what is already stored for a moment longer and stops.
/// Returns the number of events written.
pub async fn run(
    outbox: Outbox,
    cfg: JsonlSinkConfig,
    shutdown: CancellationToken,
) -> Result<u64, JsonlError> {
    let mut consumer = outbox.consumer(CONSUMER)?;
    let mut out = Out::open(&cfg).await?;
    let mut written = 0u64;
    loop {
        let batch = tokio::select! {
            b = consumer.next_batch(256) => b,
            _ = shutdown.cancelled() => break,
        };
        match batch {
            Ok(batch) => {
                written += write_and_commit(&mut out, &mut consumer, &batch).await?;
            }
            Err(OutboxError::Closed) => return Ok(written),
            Err(e) => return Err(e.into()),
        }
    }
    // Drain what is already there without waiting for new events.
    while let Ok(Ok(batch)) =
        tokio::time::timeout(Duration::from_millis(100), consumer.next_batch(256)).await
    {
        written += write_and_commit(&mut out, &mut consumer, &batch).await?;
    }
    debug!(written, "jsonl sink stopped");
    Ok(written)
}

async fn write_and_commit(
    out: &mut Out,
    consumer: &mut crate::outbox::Consumer,
    batch: &[Record],
) -> Result<u64, JsonlError> {
    let Some(last) = batch.last() else {
        return Ok(0);
    };
    if let Err(e) = out.write(batch).await {
        warn!(error = %e, "jsonl sink write failed; will retry from the last commit");
        return Err(e);
    }
    consumer.commit(last.offset).await?;
    Ok(batch.len() as u64)
}
