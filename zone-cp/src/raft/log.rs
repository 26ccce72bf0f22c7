//! The Raft log, vote and latest snapshot, in `raft.db` (SQLite, WAL, `synchronous=FULL`).
//!
//! Appends do not hold up Raft while they reach the disk: `append` hands the entries to one
//! writer task and returns, and openraft is told they are durable (the flush callback) once
//! the writer's transaction has committed. Entries waiting for the writer are readable from
//! memory meanwhile. The writer takes every append queued behind the one it is writing into
//! the same transaction, so a busy log pays one fsync per batch, not per entry. Truncation
//! and purging wait for the writer, so they apply in order.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, OptionalSend, RaftLogReader, StorageIOError, Vote};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, Executor, Pool, Row};

use super::{LogId, NodeId, StorageError, TypeConfig, io_error};

/// The log store. Clones share one connection pool and one writer.
#[derive(Clone)]
pub struct LogStore {
    pool: Pool<Any>,
    /// Appended entries the writer has not committed yet, by index.
    pending: Arc<Mutex<BTreeMap<u64, Entry<TypeConfig>>>>,
    writer: mpsc::UnboundedSender<Op>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStore")
    }
}

/// Work for the writer, done in the order given.
enum Op {
    Append(Vec<Entry<TypeConfig>>, LogFlushed<TypeConfig>),
    /// Deletes from an index on (truncate) or up to one (purge), then answers.
    Delete {
        sql: &'static str,
        index: u64,
        done: oneshot::Sender<Result<(), sqlx::Error>>,
    },
}

async fn append_all(pool: &Pool<Any>, batch: &[Entry<TypeConfig>]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for entry in batch {
        let text = serde_json::to_string(entry).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query(
            "INSERT INTO raft_log (idx, entry) VALUES ($1, $2) \
             ON CONFLICT (idx) DO UPDATE SET entry = excluded.entry",
        )
        .bind(entry.log_id.index as i64)
        .bind(text)
        .execute(&mut *tx)
        .await?;
    }
    // synchronous=FULL: the commit returns once the entries are on disk.
    tx.commit().await
}

/// The writer: commits queued appends a batch per transaction, then tells openraft.
async fn write(
    pool: Pool<Any>,
    pending: Arc<Mutex<BTreeMap<u64, Entry<TypeConfig>>>>,
    mut ops: mpsc::UnboundedReceiver<Op>,
) {
    let mut next = None;
    loop {
        let op = match next.take() {
            Some(op) => op,
            None => match ops.recv().await {
                Some(op) => op,
                None => return,
            },
        };
        match op {
            Op::Append(entries, callback) => {
                let mut batch = entries;
                let mut callbacks = vec![callback];
                while let Ok(op) = ops.try_recv() {
                    match op {
                        Op::Append(more, callback) => {
                            batch.extend(more);
                            callbacks.push(callback);
                        }
                        other => {
                            next = Some(other);
                            break;
                        }
                    }
                }
                let result = append_all(&pool, &batch).await;
                if result.is_ok() {
                    let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
                    for entry in &batch {
                        // A later append may have replaced it in memory: keep that one.
                        if pending.get(&entry.log_id.index).map(|e| e.log_id) == Some(entry.log_id) {
                            pending.remove(&entry.log_id.index);
                        }
                    }
                }
                for callback in callbacks {
                    callback.log_io_completed(
                        result
                            .as_ref()
                            .map(drop)
                            .map_err(|e| std::io::Error::other(e.to_string())),
                    );
                }
            }
            Op::Delete { sql, index, done } => {
                let result = sqlx::query(sql).bind(index as i64).execute(&pool).await.map(drop);
                let _ = done.send(result);
            }
        }
    }
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS raft_log (idx INTEGER PRIMARY KEY, entry TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS raft_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
];

impl LogStore {
    /// Opens (creating) `raft.db` in `data_dir`.
    pub async fn open(data_dir: &Path) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        std::fs::create_dir_all(data_dir)?;
        let url = format!("sqlite://{}?mode=rwc", data_dir.join("raft.db").display());
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = FULL",
                        "PRAGMA busy_timeout = 10000",
                    ] {
                        conn.execute(pragma).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(AnyConnectOptions::from_str(&url)?)
            .await?;
        for statement in SCHEMA {
            pool.execute(*statement).await?;
        }
        let pending = Arc::new(Mutex::new(BTreeMap::new()));
        let (writer, ops) = mpsc::unbounded_channel();
        tokio::spawn(write(pool.clone(), pending.clone(), ops));
        Ok(Self {
            pool,
            pending,
            writer,
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry<TypeConfig>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Has the writer run `sql` with `index`, after everything queued before it.
    async fn delete(&self, sql: &'static str, index: u64) -> Result<(), sqlx::Error> {
        let (done, answer) = oneshot::channel();
        // A writer that stopped is a crashed worker, in sqlx's terms.
        self.writer
            .send(Op::Delete { sql, index, done })
            .map_err(|_| sqlx::Error::WorkerCrashed)?;
        answer.await.map_err(|_| sqlx::Error::WorkerCrashed)?
    }

    pub(crate) async fn meta<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, sqlx::Error> {
        let row = sqlx::query("SELECT value FROM raft_meta WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get::<String, _>(0))
            .transpose()?
            .map(|text| serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e))))
            .transpose()
    }

    pub(crate) async fn set_meta(
        &self,
        name: &str,
        value: &impl serde::Serialize,
    ) -> Result<(), sqlx::Error> {
        let text = serde_json::to_string(value).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query(
            "INSERT INTO raft_meta (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(text)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (i64, i64) {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => i.saturating_add(1),
        Bound::Excluded(&i) => i,
        Bound::Unbounded => u64::MAX,
    };
    (
        i64::try_from(start).unwrap_or(i64::MAX),
        i64::try_from(end).unwrap_or(i64::MAX),
    )
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let (start, end) = bounds(&range);
        let rows = sqlx::query("SELECT entry FROM raft_log WHERE idx >= $1 AND idx < $2 ORDER BY idx")
            .bind(start)
            .bind(end)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| io_error(StorageIOError::read_logs, e))?;
        let mut entries = BTreeMap::new();
        for row in &rows {
            let text: String = row
                .try_get(0)
                .map_err(|e| io_error(StorageIOError::read_logs, e))?;
            let entry: Entry<TypeConfig> =
                serde_json::from_str(&text).map_err(|e| io_error(StorageIOError::read_logs, e))?;
            entries.insert(entry.log_id.index, entry);
        }
        // Entries not committed yet are newer than what the database holds at their index.
        let (from, to) = (start.max(0) as u64, end.max(0) as u64);
        entries.extend(self.pending().range(from..to).map(|(i, e)| (*i, e.clone())));
        Ok(entries.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self
            .meta("last_purged")
            .await
            .map_err(|e| io_error(StorageIOError::read_logs, e))?;
        let row = sqlx::query("SELECT entry FROM raft_log ORDER BY idx DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| io_error(StorageIOError::read_logs, e))?;
        let stored = match row {
            Some(row) => {
                let text: String = row
                    .try_get(0)
                    .map_err(|e| io_error(StorageIOError::read_logs, e))?;
                let entry: Entry<TypeConfig> =
                    serde_json::from_str(&text).map_err(|e| io_error(StorageIOError::read_logs, e))?;
                Some(entry.log_id)
            }
            None => None,
        };
        let pending = self.pending().values().next_back().map(|e| e.log_id);
        let last_log_id = pending.max(stored).or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.set_meta("vote", vote)
            .await
            .map_err(|e| io_error(StorageIOError::write_vote, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.meta("vote")
            .await
            .map_err(|e| io_error(StorageIOError::read_vote, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.set_meta("committed", &committed)
            .await
            .map_err(|e| io_error(StorageIOError::write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .meta::<Option<LogId>>("committed")
            .await
            .map_err(|e| io_error(StorageIOError::read, e))?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        {
            let mut pending = self.pending();
            for entry in &entries {
                pending.insert(entry.log_id.index, entry.clone());
            }
        }
        self.writer
            .send(Op::Append(entries, callback))
            .map_err(|_| io_error(StorageIOError::write_logs, "the log writer stopped"))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.pending().split_off(&log_id.index);
        self.delete("DELETE FROM raft_log WHERE idx >= $1", log_id.index)
            .await
            .map_err(|e| io_error(StorageIOError::write_logs, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The purge point first: a crash between the two leaves entries that are merely old.
        self.set_meta("last_purged", &log_id)
            .await
            .map_err(|e| io_error(StorageIOError::write_logs, e))?;
        self.delete("DELETE FROM raft_log WHERE idx <= $1", log_id.index)
            .await
            .map_err(|e| io_error(StorageIOError::write_logs, e))
    }
}
