//! The Raft log, vote and latest snapshot, in `raft.db` (SQLite, WAL, `synchronous=FULL`).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, OptionalSend, RaftLogReader, StorageIOError, Vote};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, Executor, Pool, Row};

use super::{LogId, NodeId, StorageError, TypeConfig, io_error};

/// The log store. Clones share one connection pool.
#[derive(Clone, Debug)]
pub struct LogStore {
    pool: Pool<Any>,
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
        Ok(Self { pool })
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
        rows.iter()
            .map(|row| {
                let text: String = row
                    .try_get(0)
                    .map_err(|e| io_error(StorageIOError::read_logs, e))?;
                serde_json::from_str(&text).map_err(|e| io_error(StorageIOError::read_logs, e))
            })
            .collect()
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
        let last_log_id = match row {
            Some(row) => {
                let text: String = row
                    .try_get(0)
                    .map_err(|e| io_error(StorageIOError::read_logs, e))?;
                let entry: Entry<TypeConfig> =
                    serde_json::from_str(&text).map_err(|e| io_error(StorageIOError::read_logs, e))?;
                Some(entry.log_id)
            }
            None => last_purged_log_id,
        };
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
        let result = async {
            let mut tx = self.pool.begin().await?;
            for entry in entries {
                let text = serde_json::to_string(&entry).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
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
        .await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(io_error(StorageIOError::write_logs, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        sqlx::query("DELETE FROM raft_log WHERE idx >= $1")
            .bind(log_id.index as i64)
            .execute(&self.pool)
            .await
            .map_err(|e| io_error(StorageIOError::write_logs, e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The purge point first: a crash between the two leaves entries that are merely old.
        self.set_meta("last_purged", &log_id)
            .await
            .map_err(|e| io_error(StorageIOError::write_logs, e))?;
        sqlx::query("DELETE FROM raft_log WHERE idx <= $1")
            .bind(log_id.index as i64)
            .execute(&self.pool)
            .await
            .map_err(|e| io_error(StorageIOError::write_logs, e))?;
        Ok(())
    }
}
