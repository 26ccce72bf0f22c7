//! Writes applied from a replicated log (a zone's Raft log): each is stamped with the time the
//! log gives it, so every replica stores the same thing, and is recorded together with its log
//! position in one transaction, so a crash never leaves a write without its position or the
//! other way round. Also the whole state as bytes, for Raft snapshots.

use serde_json::{Map, Value};
use sqlx::Row;

use super::{
    Revisions, STATE_COLUMNS, SqlStore, db_error, delete_in, put_in, secret_in, status_in, synced_in,
};
use crate::prelude::*;
use crate::{DeleteOptions, PutOutcome, StoreError, SyncedOp, SyncedOutcome};
use meridian_model::{ResourceKey, Submission};

/// A secret's value: kept out of `Debug` output, so logging a write never shows it.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Sensitive(pub String);

impl std::fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// One write, as a replicated log carries it.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    Put(Box<Submission>),
    Delete(ResourceKey, DeleteOptions),
    Synced(Vec<SyncedOp>, Option<i64>),
    Status {
        name: String,
        value: String,
    },
    /// Stores `candidate` unless a secret is stored; with `replace`, in any case.
    Secret {
        name: String,
        candidate: Sensitive,
        replace: bool,
    },
}

impl Write {
    /// Whether applying it twice is applying it once: a status (the last writer wins anyway)
    /// or a secret (the first writer wins, or a value replaces itself). Retries of those need
    /// no record, and so no secret value is ever copied into one.
    fn idempotent(&self) -> bool {
        matches!(self, Write::Status { .. } | Write::Secret { .. })
    }
}

/// What a [`Write`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Written {
    /// The log entry carried no write (Raft's own entries).
    Nothing,
    Put(Box<PutOutcome>),
    /// The revision of the delete.
    Deleted(i64),
    Synced(SyncedOutcome),
    Status,
    Secret(Sensitive),
}

/// Each kind of write's answer, taken out of a [`Written`]; any other answer is a bug, said
/// as one.
impl Written {
    fn unexpected(self, wanted: &str) -> StoreError {
        StoreError::Internal(format!("a write answered {self:?} where {wanted} was due"))
    }

    pub fn into_put(self) -> Result<PutOutcome, StoreError> {
        match self {
            Written::Put(outcome) => Ok(*outcome),
            other => Err(other.unexpected("a put's outcome")),
        }
    }

    pub fn into_deleted(self) -> Result<i64, StoreError> {
        match self {
            Written::Deleted(revision) => Ok(revision),
            other => Err(other.unexpected("a delete's revision")),
        }
    }

    pub fn into_synced(self) -> Result<SyncedOutcome, StoreError> {
        match self {
            Written::Synced(outcome) => Ok(outcome),
            other => Err(other.unexpected("a synced batch's outcome")),
        }
    }

    pub fn into_secret(self) -> Result<String, StoreError> {
        match self {
            Written::Secret(secret) => Ok(secret.0),
            other => Err(other.unexpected("a secret")),
        }
    }

    pub fn into_status(self) -> Result<(), StoreError> {
        match self {
            Written::Status => Ok(()),
            other => Err(other.unexpected("a status")),
        }
    }
}

/// A write as the log carries it: when, and the id its client gave it, the same on every retry.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedWrite {
    /// `None` for log entries that carry no write (Raft's own).
    pub write: Option<Write>,
    pub at_ms: i64,
    pub request: Option<String>,
}

/// What a logged write did.
#[derive(Debug)]
pub enum Logged {
    Applied(Result<Written, StoreError>),
    /// The request was applied before (this is a retry whose first answer was lost): nothing
    /// was done again, and this is what it answered then, as it was recorded.
    Repeated(String),
}

/// How long a request's answer is kept for retries, by the log's clock. Retries stop within
/// seconds of the first try; the rest is margin for the clocks of nodes that stamped them.
pub const REQUEST_MEMORY_MS: i64 = 60_000;

/// The tables that make up the state, with their columns, in the order they are restored.
const STATE: &[(&str, &str)] = &[
    ("meridian_revision", "id, value"),
    ("meridian_tombstone_horizon", "id, value"),
    ("meridian_sync_position", "id, value"),
    ("resources", STATE_COLUMNS),
    ("tombstones", "kind, mesh, name, revision, deleted_at"),
    ("meridian_signing_keys", "name, secret, created_at"),
    ("meridian_status", "name, value, updated_at"),
    ("meridian_requests", "id, at_ms, reply"),
];

/// Tables of [`STATE`] that snapshots made before them do not have: restored empty.
const ADDED_LATER: &[&str] = &["meridian_requests"];

async fn write_in(
    tx: &mut sqlx::AnyConnection,
    revisions: &mut Revisions,
    write: Write,
) -> Result<Written, StoreError> {
    let now = revisions.now_ms;
    Ok(match write {
        Write::Put(submission) => Written::Put(Box::new(put_in(tx, revisions, *submission).await?)),
        Write::Delete(key, options) => Written::Deleted(delete_in(tx, revisions, &key, options).await?),
        Write::Synced(ops, position) => Written::Synced(synced_in(tx, revisions, ops, position).await?),
        Write::Status { name, value } => {
            status_in(tx, &name, &value, now).await?;
            Written::Status
        }
        Write::Secret {
            name,
            candidate,
            replace,
        } => Written::Secret(Sensitive(secret_in(tx, &name, &candidate.0, replace, now).await?)),
    })
}

/// What fails when a write in a batch meets an error that is not its own refusal (the
/// database failing under it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// The whole batch: a replicated log's entries must apply alike on every replica.
    Batch,
    /// That write alone: independent clients' writes, each answered on its own.
    Write,
}

/// Applies `writes` in order inside `tx`, each in a savepoint so that a refused one is undone
/// alone. Returns each write's outcome and the last revision taken.
pub(super) async fn write_batch(
    tx: &mut sqlx::AnyConnection,
    writes: Vec<(Option<Write>, i64)>,
    failure: Failure,
) -> Result<(Vec<Result<Written, StoreError>>, Option<i64>), StoreError> {
    let mut outcomes = Vec::with_capacity(writes.len());
    let mut last = None;
    for (write, at_ms) in writes {
        let Some(write) = write else {
            outcomes.push(Ok(Written::Nothing));
            continue;
        };
        let mut revisions = Revisions::at(at_ms);
        let mut entry = sqlx::Connection::begin(&mut *tx).await.map_err(db_error)?;
        match write_in(&mut entry, &mut revisions, write).await {
            Ok(written) => {
                entry.commit().await.map_err(db_error)?;
                last = revisions.last.or(last);
                outcomes.push(Ok(written));
            }
            Err(e) => {
                let refused = matches!(e, StoreError::NotFound(_) | StoreError::Conflict(_));
                if !refused && failure == Failure::Batch {
                    return Err(e);
                }
                entry.rollback().await.map_err(db_error)?;
                outcomes.push(Err(e));
            }
        }
    }
    Ok((outcomes, last))
}

/// The recorded replies (and their stamps) of those of `ids` recorded at or after `since`.
async fn recorded_requests(
    tx: &mut sqlx::AnyConnection,
    ids: &[Option<&str>],
    since: i64,
) -> Result<std::collections::HashMap<String, (i64, String)>, StoreError> {
    let ids: Vec<&str> = ids.iter().flatten().copied().collect();
    let mut records = std::collections::HashMap::new();
    // A bounded statement: SQLite takes at most 32,766 parameters.
    for chunk in ids.chunks(500) {
        let params: Vec<String> = (2..chunk.len() + 2).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT id, at_ms, reply FROM meridian_requests WHERE at_ms >= $1 AND id IN ({})",
            params.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(since);
        for id in chunk {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut *tx).await.map_err(db_error)? {
            let id: String = row.try_get(0).map_err(db_error)?;
            let at: i64 = row.try_get(1).map_err(db_error)?;
            let reply: String = row.try_get(2).map_err(db_error)?;
            records.insert(id, (at, reply));
        }
    }
    Ok(records)
}

async fn set_marker(tx: &mut sqlx::AnyConnection, marker: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE meridian_applied SET value = $1 WHERE id = 1")
        .bind(marker)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// A write that repeats a request: recorded before, or at this index of the same batch.
enum Repeat {
    Recorded(String),
    Of(usize),
}

impl SqlStore {
    /// The marker the last logged write recorded (empty before the first).
    pub async fn applied_marker(&self) -> Result<String, StoreError> {
        sqlx::query("SELECT value FROM meridian_applied WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get::<String, _>(0))
            .map_err(db_error)
    }

    /// Applies `write` (with `None`, only the marker moves) as of `at_ms` and records `marker`,
    /// in one transaction: [`SqlStore::apply_logged_batch`] of one, with no request id.
    pub async fn apply_logged(
        &self,
        write: Option<Write>,
        at_ms: i64,
        marker: &str,
    ) -> Result<Result<Written, StoreError>, StoreError> {
        let write = LoggedWrite {
            write,
            at_ms,
            request: None,
        };
        let mut outcomes = self
            .apply_logged_batch(vec![write], marker, |_| String::new())
            .await?;
        match outcomes.pop() {
            Some(Logged::Applied(outcome)) => Ok(outcome),
            _ => Ok(Ok(Written::Nothing)),
        }
    }

    /// Applies consecutive log entries in order, and records `marker` (the position after the
    /// last), in one transaction: one fsync for the lot (group commit).
    ///
    /// A write refused for reasons of its own (a stale version, a missing mesh) is an outcome
    /// like any other, undone alone (a savepoint) while the others stand, since every replica
    /// refuses it the same way. The outer error is the store itself failing: nothing is applied.
    ///
    /// A write whose request id was applied within [`REQUEST_MEMORY_MS`] is not applied again:
    /// it gets what `record` made of its first outcome. Without that, a retry would apply a put
    /// a second time over a write made in between, or answer a compare-and-set that took
    /// effect with a conflict (the linearizability drill found both).
    pub async fn apply_logged_batch(
        &self,
        writes: Vec<LoggedWrite>,
        marker: &str,
        record: impl Fn(&Result<Written, StoreError>) -> String,
    ) -> Result<Vec<Logged>, StoreError> {
        let mut tx = self.begin_write().await?;
        // The log's clock: the latest stamp among the requests recorded so far, moved on entry
        // by entry. A record counts only while it is within REQUEST_MEMORY_MS of that clock,
        // so what is a repeat depends on the log alone: never on how it was cut into batches
        // (which differs between nodes), nor on when old records were deleted.
        let mut clock: i64 = sqlx::query("SELECT MAX(at_ms) FROM meridian_requests")
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| row.try_get::<Option<i64>, _>(0))
            .map_err(db_error)?
            .unwrap_or(i64::MIN);
        // Which writes are repeats: of a request recorded before, or of one earlier in this
        // batch (its index and stamp).
        let mut in_batch: std::collections::HashMap<&str, (usize, i64)> = Default::default();
        let mut repeats: Vec<Option<Repeat>> = Vec::with_capacity(writes.len());
        // The ids of the writes that are recorded.
        let ids: Vec<Option<&str>> = writes
            .iter()
            .map(|w| {
                w.request
                    .as_deref()
                    .filter(|_| w.write.as_ref().is_some_and(|w| !w.idempotent()))
            })
            .collect();
        // Every record the batch could repeat, read at once: the clock only moves on, so none
        // older than its first horizon counts. Each entry checks its own horizon below.
        let mut records = recorded_requests(&mut tx, &ids, clock.saturating_sub(REQUEST_MEMORY_MS)).await?;
        for (i, (w, id)) in writes.iter().zip(&ids).enumerate() {
            let Some(id) = *id else {
                repeats.push(None);
                continue;
            };
            let horizon = clock.saturating_sub(REQUEST_MEMORY_MS);
            let recorded = match in_batch.get(id) {
                Some((first, at)) if *at >= horizon => Some(Repeat::Of(*first)),
                Some(_) => None,
                None => records
                    .remove(id)
                    .filter(|(at, _)| *at >= horizon)
                    .map(|(_, reply)| Repeat::Recorded(reply)),
            };
            if recorded.is_none() {
                in_batch.insert(id, (i, w.at_ms));
                clock = clock.max(w.at_ms);
            }
            repeats.push(recorded);
        }
        let to_apply = writes
            .iter()
            .zip(&repeats)
            .map(|(w, repeat)| (w.write.clone().filter(|_| repeat.is_none()), w.at_ms))
            .collect();
        let (outcomes, last) = write_batch(&mut tx, to_apply, Failure::Batch).await?;
        let mut replies: Vec<Option<String>> = vec![None; writes.len()];
        for (i, (w, outcome)) in writes.iter().zip(&outcomes).enumerate() {
            if let (Some(id), None) = (ids[i], &repeats[i]) {
                let reply = record(outcome);
                // A record of the same id past the horizon may still be there: replaced.
                sqlx::query(
                    "INSERT INTO meridian_requests (id, at_ms, reply) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms, reply = excluded.reply",
                )
                .bind(id)
                .bind(w.at_ms)
                .bind(&reply)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
                replies[i] = Some(reply);
            }
        }
        // Records past the horizon count for nothing any more.
        sqlx::query("DELETE FROM meridian_requests WHERE at_ms < $1")
            .bind(clock.saturating_sub(REQUEST_MEMORY_MS))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        set_marker(&mut tx, marker).await?;
        tx.commit().await.map_err(db_error)?;
        if let Some(last) = last {
            self.committed(last);
        }
        let logged = outcomes
            .into_iter()
            .zip(repeats)
            .map(|(outcome, repeat)| match repeat {
                None => Logged::Applied(outcome),
                Some(Repeat::Recorded(reply)) => Logged::Repeated(reply),
                Some(Repeat::Of(first)) => Logged::Repeated(replies[first].clone().unwrap_or_default()),
            })
            .collect();
        Ok(logged)
    }

    /// The whole state as JSON bytes, and the marker it stands at, read at one instant.
    pub async fn dump(&self) -> Result<(String, Vec<u8>), StoreError> {
        let mut tx = self.begin_read().await?;
        let marker = sqlx::query("SELECT value FROM meridian_applied WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| row.try_get::<String, _>(0))
            .map_err(db_error)?;
        let mut tables = Map::new();
        for (table, columns) in STATE {
            let sql = format!("SELECT {columns} FROM {table} ORDER BY 1, 2");
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error)?;
            let rows: Vec<Value> = rows
                .iter()
                .map(|row| {
                    (0..row.len())
                        .map(|i| match row.try_get::<i64, _>(i) {
                            Ok(n) => Value::from(n),
                            Err(_) => row.try_get::<String, _>(i).map_or(Value::Null, Value::from),
                        })
                        .collect()
                })
                .collect();
            tables.insert((*table).to_owned(), Value::Array(rows));
        }
        tx.commit().await.map_err(db_error)?;
        let bytes = serde_json::to_vec(&tables)
            .map_err(|e| StoreError::Internal(format!("encoding the state: {e}")))?;
        Ok((marker, bytes))
    }

    /// Replaces the whole state with `dump`'s bytes and records `marker`, in one transaction.
    pub async fn restore(&self, dump: &[u8], marker: &str) -> Result<(), StoreError> {
        let corrupt = |what: String| StoreError::Internal(format!("restoring the state: {what}"));
        let tables: Map<String, Value> = serde_json::from_slice(dump).map_err(|e| corrupt(e.to_string()))?;
        let mut tx = self.begin_write().await?;
        for (table, _) in STATE.iter().rev() {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        for (table, columns) in STATE {
            let rows = match tables.get(*table).and_then(Value::as_array) {
                Some(rows) => rows.as_slice(),
                None if ADDED_LATER.contains(table) => &[],
                None => return Err(corrupt(format!("no table {table}"))),
            };
            let width = columns.split(',').count();
            let params: Vec<String> = (1..=width).map(|i| format!("${i}")).collect();
            let sql = format!("INSERT INTO {table} ({columns}) VALUES ({})", params.join(", "));
            for row in rows {
                let values = row
                    .as_array()
                    .filter(|v| v.len() == width)
                    .ok_or_else(|| corrupt(format!("a row of {table} is not {width} values")))?;
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                for value in values {
                    query = match value {
                        Value::Number(n) => query.bind(n.as_i64()),
                        Value::String(text) => query.bind(text.clone()),
                        other => return Err(corrupt(format!("{table}: unexpected value {other}"))),
                    };
                }
                query.execute(&mut *tx).await.map_err(db_error)?;
            }
        }
        set_marker(&mut tx, marker).await?;
        tx.commit().await.map_err(db_error)?;
        let revision = self.revision().await?;
        self.committed.send_replace(revision);
        Ok(())
    }
}

#[cfg(test)]
#[path = "logged_tests.rs"]
mod tests;
