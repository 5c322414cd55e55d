//! The task every forwarding sink runs beside its broker loop: it owns the sink's outbox
//! consumer, reads ahead into a bounded channel and commits the cursor over what the broker
//! acknowledged. The broker loop never waits on the disk, and reading never races acks for the
//! consumer: a read in progress is not dropped each time an ack arrives.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::outbox::{Consumer, Offset, OutboxError, Record};
use crate::sinks::SinkStatus;

/// Longest spacing of commits however slow the disk (the re-sent duplicates after a crash).
pub const COMMIT_MAX_SPACING: Duration = Duration::from_secs(2);

/// The acknowledged prefix the cursor may move over, and the broker-confirmed deliveries the sink
/// has counted so far (added to `status.delivered` as they are committed).
#[derive(Debug, Clone, Copy, Default)]
pub struct Acked {
    pub through: Option<Offset>,
    pub count: u64,
}

pub type Batch = Result<Vec<Record>, OutboxError>;

/// Owns the consumer: reads ahead (bounded: one batch in hand, `tx`'s capacity queued) and
/// commits what the forwarder reports acknowledged. A cursor commit is an fsync that can take
/// hundreds of milliseconds on a busy disk; here it never stalls publishing or ack handling.
/// Commits are coalesced: at most one per `commit_every`, and spaced by nine times the last
/// commit's duration (at most [`COMMIT_MAX_SPACING`]), so that a slow disk costs reading at most
/// a tenth of its time. `acked.count` is added to `status.delivered` as it is committed. Returns
/// the records committed.
pub async fn read_and_commit(
    mut consumer: Consumer,
    batch: usize,
    commit_every: Duration,
    tx: mpsc::Sender<Batch>,
    mut acked: watch::Receiver<Acked>,
    status: Arc<SinkStatus>,
    stop: CancellationToken,
) -> Result<u64, OutboxError> {
    let mut done = Acked::default();
    let mut dirty = false;
    let mut due = Instant::now();
    let mut permit = None;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = acked.changed(), if !dirty => match r {
                Ok(()) => dirty = true,
                Err(_) => break,
            },
            _ = tokio::time::sleep_until(due), if dirty => {
                dirty = false;
                let want = *acked.borrow_and_update();
                let t0 = Instant::now();
                match commit_to(&mut consumer, &mut done, want, &status).await {
                    Ok(()) => {}
                    Err(OutboxError::Closed) => break,
                    Err(e) => return Err(e),
                }
                due = Instant::now() + commit_every.max((Instant::now() - t0) * 9).min(COMMIT_MAX_SPACING);
            }
            p = tx.reserve(), if permit.is_none() => match p {
                Ok(p) => permit = Some(p),
                Err(_) => break,
            },
            b = consumer.next_batch(batch), if permit.is_some() => {
                let p = permit.take().expect("guarded by the branch condition");
                match b {
                    Ok(records) => p.send(Ok(records)),
                    // Dropping the sender tells the forwarder.
                    Err(OutboxError::Closed) => break,
                    Err(e) => {
                        p.send(Err(e));
                        break;
                    }
                }
            }
        }
    }
    drop(permit);
    drop(tx);
    let want = *acked.borrow();
    match commit_to(&mut consumer, &mut done, want, &status).await {
        Ok(()) => {}
        Err(OutboxError::Closed) => {
            // The outbox was shut down first: these acked records are sent again after a
            // restart (duplicates, never a loss).
            if want.count > done.count {
                warn!(
                    consumer = consumer.name(),
                    acknowledged = want.count - done.count,
                    "outbox closed before the sink committed; acknowledged events will be re-sent"
                );
            }
        }
        Err(e) => return Err(e),
    }
    Ok(done.count)
}

async fn commit_to(
    consumer: &mut Consumer,
    done: &mut Acked,
    want: Acked,
    status: &SinkStatus,
) -> Result<(), OutboxError> {
    let Some(through) = want.through else {
        return Ok(());
    };
    if done.through >= Some(through) {
        return Ok(());
    }
    consumer.commit(through).await?;
    status.committed(through);
    status
        .delivered
        .fetch_add(want.count - done.count, Ordering::Relaxed);
    *done = want;
    Ok(())
}
