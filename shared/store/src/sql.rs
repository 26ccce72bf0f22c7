//! The one SQL implementation of [`Store`], for SQLite and Postgres alike.
//!
//! Both databases accept the same statements here (`$n` parameters, `RETURNING`, `ON
//! CONFLICT`), so the store runs on sqlx's `Any` driver and the backend only decides how to
//! connect and which migrations to run.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use meridian_model::{Kind, Resource, ResourceKey, Scope, SpanContext, Spec, Stored, Submission};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{Any, Executor, Pool, Row, Transaction};
use tokio::sync::watch;

use super::migrations::migrator;
use super::{
    Change, ChangeLog, DeleteOptions, ListPage, Page, PutOutcome, Resources, Secrets, StatusEntry, Statuses,
    Store, StoreError, SyncLog, SyncedOp, SyncedOutcome,
};

#[path = "group.rs"]
mod group;
#[path = "inventory.rs"]
mod inventory;
#[path = "lease.rs"]
mod lease;
#[path = "logged.rs"]
mod logged;
#[path = "writes.rs"]
mod writes;
pub use lease::{Lease, TOMBSTONE_COMPACTION};
pub use logged::{Logged, LoggedWrite, REQUEST_MEMORY_MS, Sensitive, Write, Written};
use writes::{Revisions, delete_in, fetch, put_in, secret_in, status_in, synced_in};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A store on a SQL database.
#[derive(Clone, Debug)]
pub struct SqlStore {
    pool: Pool<Any>,
    backend: Backend,
    committed: Arc<watch::Sender<i64>>,
    /// Where writes queue for the group committer; `None` in the committer's own handle.
    queue: Option<group::Queue>,
}

const COLUMNS: &str =
    "kind, mesh, name, version, revision, labels, spec, creation_time, modification_time, trace";
/// The columns of a resource that snapshots of the state carry: not its trace, which only
/// matters to those following changes as they happen.
const STATE_COLUMNS: &str =
    "kind, mesh, name, version, revision, labels, spec, creation_time, modification_time";

impl SqlStore {
    /// The secret named `name`, if one is stored (never writes).
    pub async fn stored_secret(&self, name: &str) -> Result<Option<String>, StoreError> {
        sqlx::query("SELECT secret FROM meridian_signing_keys WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .map(|row| row.try_get::<String, _>(0))
            .transpose()
            .map_err(db_error)
    }

    /// Opens (creating if needed) the embedded SQLite store in `data_dir`.
    pub async fn open_sqlite(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create data dir {}: {e}", data_dir.display()))
        })?;
        let file = data_dir.join("meridian.db");
        let url = format!("sqlite://{}?mode=rwc", file.display());
        Self::connect(&url).await
    }

    /// Connects to `postgres://...` or `sqlite://...`, without running migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::Unavailable(format!(
                "unsupported store URL {:?}: expected postgres://... or sqlite://...",
                redact(url)
            )));
        };
        let options = AnyConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid store URL {:?}: {e}", redact(url))))?;
        let pool_options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        let pool_options = match backend {
            Backend::Postgres => pool_options.max_connections(16),
            Backend::Sqlite => pool_options.max_connections(8).after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL lets readers run beside the writer; FULL sync makes every
                    // acknowledged commit survive power loss, not just a crash.
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = FULL",
                        "PRAGMA busy_timeout = 10000",
                    ] {
                        conn.execute(pragma).await?;
                    }
                    Ok(())
                })
            }),
        };
        let pool = pool_options.connect_with(options).await.map_err(db_error)?;
        let committed = Arc::new(watch::Sender::new(0));
        if backend == Backend::Postgres {
            tokio::spawn(listen_for_commits(
                url.to_owned(),
                pool.clone(),
                Arc::downgrade(&committed),
            ));
        }
        let mut store = Self {
            pool,
            backend,
            committed,
            queue: None,
        };
        store.queue = Some(group::start(store.clone()));
        Ok(store)
    }

    /// Forgets tombstones at or below `up_to`; readers older than that need a snapshot.
    /// Global's alone: a zone keeps its tombstones, and Raft snapshots bound its log.
    pub async fn compact_tombstones(&self, up_to: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let removed = sqlx::query("DELETE FROM tombstones WHERE revision <= $1")
            .bind(up_to)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?
            .rows_affected();
        sqlx::query("UPDATE meridian_tombstone_horizon SET value = $1 WHERE id = 1 AND value < $1")
            .bind(up_to)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(removed)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        migrator(self.backend)
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrations failed: {e}")))?;
        let revision = self.revision().await?;
        self.committed.send_replace(revision);
        Ok(())
    }

    /// Tells watchers that `revision` has committed.
    fn committed(&self, revision: i64) {
        announce(&self.committed, revision);
    }

    /// Starts a read transaction in which every statement sees the same snapshot: on Postgres
    /// REPEATABLE READ (READ COMMITTED would let a query see commits an earlier one did not,
    /// and a change feed could skip a write); on SQLite a WAL read transaction already is one.
    async fn begin_read(&self) -> Result<Transaction<'static, Any>, StoreError> {
        match self.backend {
            Backend::Sqlite => self.pool.begin().await,
            Backend::Postgres => {
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await
            }
        }
        .map_err(db_error)
    }

    /// Starts a write transaction holding the lock that orders writers, so that commit order
    /// is revision order. On SQLite that is the write lock, taken up front (two writers queue
    /// on the busy timeout instead of failing on a lock upgrade); on Postgres the revision
    /// counter's row lock, taken by the first statement. A transaction that writes nothing
    /// never touches the counter, so it announces nothing.
    async fn begin_write(&self) -> Result<Transaction<'static, Any>, StoreError> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_error),
            Backend::Postgres => {
                let mut tx = self.pool.begin().await.map_err(db_error)?;
                sqlx::query("SELECT value FROM meridian_revision WHERE id = 1 FOR UPDATE")
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                Ok(tx)
            }
        }
    }
}

/// Raises `committed` to `revision` if it is newer.
fn announce(committed: &watch::Sender<i64>, revision: i64) {
    committed.send_if_modified(|current| {
        let newer = revision > *current;
        if newer {
            *current = revision;
        }
        newer
    });
}

/// Follows commits made by every process on the database (other global-cp replicas too)
/// through LISTEN/NOTIFY, reconnecting with backoff. After each (re)connect it reads the
/// revision, so notifications missed while disconnected are not lost. Ends with the store.
async fn listen_for_commits(url: String, pool: Pool<Any>, committed: std::sync::Weak<watch::Sender<i64>>) {
    let mut delay = Duration::from_millis(100);
    loop {
        let listener = async {
            let mut listener = sqlx::postgres::PgListener::connect(&url).await?;
            listener.listen("meridian_revision").await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match listener {
            Ok(mut listener) => {
                delay = Duration::from_millis(100);
                let current = sqlx::query("SELECT value FROM meridian_revision WHERE id = 1")
                    .fetch_one(&pool)
                    .await
                    .and_then(|row| row.try_get::<i64, _>(0));
                match (committed.upgrade(), current) {
                    (None, _) => return,
                    (Some(c), Ok(revision)) => announce(&c, revision),
                    (Some(_), Err(_)) => {}
                }
                loop {
                    // try_recv, not recv: recv reconnects by itself, and commits made while it
                    // was away would go unannounced. Here a lost connection means a fresh
                    // listener and a fresh read of the revision.
                    match listener.try_recv().await {
                        Ok(Some(n)) => {
                            let Some(c) = committed.upgrade() else { return };
                            if let Ok(revision) = n.payload().parse::<i64>() {
                                announce(&c, revision);
                            }
                        }
                        Ok(None) => {
                            tracing::warn!("lost the commit listener; reconnecting");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "lost the commit listener; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, retry_in = ?delay, "cannot listen for commits"),
        }
        if committed.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Hides the password in a database URL.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Translates database errors into domain errors, in one place.
fn db_error(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // unique_violation (Postgres), SQLITE_CONSTRAINT_PRIMARYKEY / _UNIQUE
            Some("23505") | Some("1555") | Some("2067") => {
                StoreError::Conflict(format!("conflicting write: {db}"))
            }
            // serialization_failure, deadlock_detected
            Some("40001") | Some("40P01") => StoreError::Conflict(format!("concurrent write, retry: {db}")),
            // SQLITE_BUSY, SQLITE_LOCKED, admin_shutdown, cannot_connect_now
            Some("5") | Some("6") | Some("57P01") | Some("57P03") => StoreError::Unavailable(db.to_string()),
            _ => StoreError::Internal(db.to_string()),
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Internal(e.to_string()),
    }
}

fn decode_row(row: &AnyRow) -> Result<Stored, StoreError> {
    let get_str = |col: &str| row.try_get::<String, _>(col).map_err(db_error);
    let get_i64 = |col: &str| row.try_get::<i64, _>(col).map_err(db_error);
    let kind_name = get_str("kind")?;
    let name = get_str("name")?;
    let corrupt = |what: String| StoreError::Internal(format!("stored {kind_name} {name:?}: {what}"));
    let kind = Kind::from_name(&kind_name).ok_or_else(|| corrupt("unknown kind".into()))?;
    let labels: BTreeMap<String, String> =
        serde_json::from_str(&get_str("labels")?).map_err(|e| corrupt(format!("labels: {e}")))?;
    let spec_json: serde_json::Value =
        serde_json::from_str(&get_str("spec")?).map_err(|e| corrupt(format!("spec: {e}")))?;
    let spec = Spec::from_value(kind, "spec", spec_json).map_err(|e| corrupt(e.to_string()))?;
    Ok(Stored {
        resource: Resource {
            mesh: get_str("mesh")?,
            name: name.clone(),
            labels,
            spec,
        },
        version: get_i64("version")?,
        revision: get_i64("revision")?,
        creation_time_ms: get_i64("creation_time")?,
        modification_time_ms: get_i64("modification_time")?,
        trace: SpanContext::parse(&get_str("trace")?),
    })
}

#[async_trait]
impl Resources for SqlStore {
    async fn get(&self, key: &ResourceKey) -> Result<Stored, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        fetch(&mut conn, key)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("{key} not found")))
    }

    async fn list(&self, kind: Kind, mesh: Option<&str>, page: Page) -> Result<ListPage, StoreError> {
        let mesh = match kind.scope() {
            Scope::Global => Some(""),
            Scope::Mesh => mesh,
        };
        let filter = if mesh.is_some() {
            "kind = $1 AND mesh = $2"
        } else {
            "kind = $1"
        };
        let count_sql = format!("SELECT COUNT(*) FROM resources WHERE {filter}");
        let list_sql = format!(
            "SELECT {COLUMNS} FROM resources WHERE {filter} ORDER BY mesh, name LIMIT {} OFFSET {}",
            page.size, page.offset
        );
        let mut tx = self.begin_read().await?;
        let mut count = sqlx::query(sqlx::AssertSqlSafe(count_sql)).bind(kind.name());
        let mut items = sqlx::query(sqlx::AssertSqlSafe(list_sql)).bind(kind.name());
        if let Some(mesh) = mesh {
            count = count.bind(mesh);
            items = items.bind(mesh);
        }
        let total = count
            .fetch_one(&mut *tx)
            .await
            .and_then(|r| r.try_get::<i64, _>(0))
            .map_err(db_error)?;
        let rows = items.fetch_all(&mut *tx).await.map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(ListPage {
            total: total as u64,
            items: rows.iter().map(decode_row).collect::<Result<_, _>>()?,
        })
    }

    async fn put(&self, submission: Submission) -> Result<PutOutcome, StoreError> {
        self.write(Write::Put(Box::new(submission))).await?.into_put()
    }

    async fn delete(&self, key: &ResourceKey, options: DeleteOptions) -> Result<i64, StoreError> {
        self.write(Write::Delete(key.clone(), options))
            .await?
            .into_deleted()
    }
}

#[async_trait]
impl ChangeLog for SqlStore {
    async fn revision(&self) -> Result<i64, StoreError> {
        sqlx::query("SELECT value FROM meridian_revision WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get::<i64, _>(0))
            .map_err(db_error)
    }

    async fn changes_since(&self, after: i64, limit: u32) -> Result<Vec<Change>, StoreError> {
        let mut tx = self.begin_read().await?;
        let horizon = sqlx::query("SELECT value FROM meridian_tombstone_horizon WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| row.try_get::<i64, _>(0))
            .map_err(db_error)?;
        if after < horizon {
            return Err(StoreError::TooOld {
                asked: after,
                horizon,
            });
        }
        let upserts = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM resources WHERE revision > $1 ORDER BY revision LIMIT {limit}"
        )))
        .bind(after)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let deletes = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT kind, mesh, name, revision, deleted_at, trace FROM tombstones WHERE revision > $1 ORDER BY revision LIMIT {limit}"
        )))
        .bind(after)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        let mut changes = upserts
            .iter()
            .map(|row| decode_row(row).map(|s| Change::Upsert(Box::new(s))))
            .collect::<Result<Vec<_>, _>>()?;
        for row in &deletes {
            let kind_name: String = row.try_get(0).map_err(db_error)?;
            let kind = Kind::from_name(&kind_name)
                .ok_or_else(|| StoreError::Internal(format!("tombstone of unknown kind {kind_name}")))?;
            changes.push(Change::Delete {
                key: ResourceKey::new(
                    kind,
                    row.try_get::<String, _>(1).map_err(db_error)?,
                    row.try_get::<String, _>(2).map_err(db_error)?,
                ),
                revision: row.try_get(3).map_err(db_error)?,
                deleted_ms: row.try_get(4).map_err(db_error)?,
                trace: SpanContext::parse(&row.try_get::<String, _>(5).map_err(db_error)?),
            });
        }
        changes.sort_by_key(Change::revision);
        changes.truncate(limit as usize);
        Ok(changes)
    }

    async fn snapshot(&self) -> Result<(i64, Vec<Stored>), StoreError> {
        let mut tx = self.begin_read().await?;
        let revision = sqlx::query("SELECT value FROM meridian_revision WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| row.try_get::<i64, _>(0))
            .map_err(db_error)?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM resources ORDER BY kind, mesh, name"
        )))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok((revision, rows.iter().map(decode_row).collect::<Result<_, _>>()?))
    }

    fn watch(&self) -> watch::Receiver<i64> {
        self.committed.subscribe()
    }
}

#[async_trait]
impl SyncLog for SqlStore {
    async fn sync_position(&self) -> Result<i64, StoreError> {
        sqlx::query("SELECT value FROM meridian_sync_position WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get::<i64, _>(0))
            .map_err(db_error)
    }

    async fn apply_synced(
        &self,
        ops: Vec<SyncedOp>,
        position: Option<i64>,
    ) -> Result<SyncedOutcome, StoreError> {
        self.write(Write::Synced(ops, position)).await?.into_synced()
    }
}

#[async_trait]
impl Secrets for SqlStore {
    async fn secret(&self, name: &str, candidate: &str) -> Result<String, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        secret_in(&mut conn, name, candidate, false, now_ms()).await
    }

    async fn put_secret(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        secret_in(&mut conn, name, value, true, now_ms()).await.map(drop)
    }

    async fn stored_secret(&self, name: &str) -> Result<Option<String>, StoreError> {
        SqlStore::stored_secret(self, name).await
    }

    async fn secrets(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        // A range on the primary key, not LIKE, whose wildcards a name could contain.
        let end = format!("{prefix}\u{10ffff}");
        let rows = sqlx::query(
            "SELECT name, secret FROM meridian_signing_keys WHERE name >= $1 AND name < $2 ORDER BY name",
        )
        .bind(prefix)
        .bind(end)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get(0).map_err(db_error)?,
                    row.try_get(1).map_err(db_error)?,
                ))
            })
            .collect()
    }
}

#[async_trait]
impl Statuses for SqlStore {
    async fn put_status(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        status_in(&mut conn, name, value, now_ms()).await
    }

    async fn statuses(&self, prefix: &str) -> Result<Vec<StatusEntry>, StoreError> {
        // The table is small (zones times replicas); filtering here avoids LIKE's wildcards.
        let rows = sqlx::query("SELECT name, value, updated_at FROM meridian_status ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let mut out = Vec::new();
        for row in rows {
            let name: String = row.try_get(0).map_err(db_error)?;
            if name.starts_with(prefix) {
                out.push(StatusEntry {
                    name,
                    value: row.try_get(1).map_err(db_error)?,
                    updated_ms: row.try_get(2).map_err(db_error)?,
                });
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .fetch_one(&self.pool)
            .await
            .map(drop)
            .map_err(db_error)
    }
}
