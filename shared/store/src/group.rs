//! Group commit for the store's own writes (REST puts and deletes, sync batches): writers queue
//! their write and wait; one task takes whatever is queued, applies it in one transaction (each
//! write in a savepoint, taking its own revision and getting its own answer) and commits once.
//! A lone write commits at once; under load, one fsync serves every write that queued while the
//! previous commit was on disk.

use tokio::sync::{mpsc, oneshot};

use super::logged::{Failure, write_batch};
use super::{SqlStore, db_error, now_ms};
use crate::StoreError;
use crate::sql::{Write, Written};

/// Most writes in one transaction: bounds the time a batch holds the write lock.
const MAX_BATCH: usize = 256;
/// Writes that may wait for the committer before writers wait to queue.
const QUEUE: usize = 1024;

pub(super) struct Job {
    write: Write,
    at_ms: i64,
    reply: oneshot::Sender<Result<Written, StoreError>>,
}

pub(super) type Queue = mpsc::Sender<Job>;

/// Starts the committer for `store` (which must not hold a queue itself: the task ends when
/// every handle to the queue is gone).
pub(super) fn start(store: SqlStore) -> Queue {
    let (queue, jobs) = mpsc::channel(QUEUE);
    tokio::spawn(run(store, jobs));
    queue
}

async fn run(store: SqlStore, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (writes, replies): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .map(|job| ((Some(job.write), job.at_ms), job.reply))
            .unzip();
        match commit(&store, writes).await {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            // Nothing of the batch stands: each writer hears why.
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

async fn commit(
    store: &SqlStore,
    writes: Vec<(Option<Write>, i64)>,
) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
    let mut tx = store.begin_write().await?;
    let (outcomes, last) = write_batch(&mut tx, writes, Failure::Write).await?;
    // Committed even when no revision was taken: a sync position may have moved. A
    // transaction that wrote nothing costs no fsync.
    tx.commit().await.map_err(db_error)?;
    if let Some(last) = last {
        store.committed(last);
    }
    Ok(outcomes)
}

impl SqlStore {
    /// Applies `write` through the committer, stamped with the time it was asked for.
    pub(super) async fn write(&self, write: Write) -> Result<Written, StoreError> {
        let stopped = || StoreError::Unavailable("the store's writer has stopped".into());
        let Some(queue) = &self.queue else {
            // The committer's own handle: it never writes through itself.
            return Err(stopped());
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            write,
            at_ms: now_ms(),
            reply,
        };
        queue.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}
