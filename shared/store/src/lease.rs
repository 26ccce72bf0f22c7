//! One holder at a time for a job the replicas sharing a store would otherwise all do (the
//! compaction of tombstones). On Postgres a lease is a session advisory lock, held by a
//! connection of its own for as long as the lease lives; Postgres frees it when that connection
//! goes, so a replica that crashes or loses the database hands the job on. The embedded store
//! belongs to one process, which always gets the lease.

use sqlx::AnyConnection;
use sqlx::{Executor, Row};

use super::{Backend, SqlStore, StoreError, db_error};

/// The advisory lock of tombstone compaction ("meridian" in ASCII, then 1).
pub const TOMBSTONE_COMPACTION: i64 = 0x6d65_7269_6469_6101;

/// The right to run one job, while it lasts.
pub struct Lease {
    /// The connection holding the lock (none on the embedded store).
    holder: Option<AnyConnection>,
}

impl SqlStore {
    /// The lease of the job `lock`, unless another process holds it.
    pub async fn try_lease(&self, lock: i64) -> Result<Option<Lease>, StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(Some(Lease { holder: None }));
        }
        // Off the pool: the lock lives as long as this connection, not as long as a checkout.
        let mut holder = self.pool.acquire().await.map_err(db_error)?.detach();
        let held: bool = sqlx::query("SELECT pg_try_advisory_lock($1)")
            .bind(lock)
            .fetch_one(&mut holder)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(db_error)?;
        Ok(held.then_some(Lease { holder: Some(holder) }))
    }
}

impl Lease {
    /// Whether the lease still holds: its connection still answers, so the lock is still its.
    pub async fn holds(&mut self) -> bool {
        match &mut self.holder {
            None => true,
            Some(conn) => conn.execute("SELECT 1").await.is_ok(),
        }
    }
}
