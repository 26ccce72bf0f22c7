//! Writes applied from a replicated log (a zone's Raft log): each is stamped with the time the
//! log gives it, so every replica stores the same thing, and is recorded together with its log
//! position in one transaction, so a crash never leaves a write without its position or the
//! other way round. Also the whole state as bytes, for Raft snapshots.

use serde_json::{Map, Value};
use sqlx::Row;

use super::{COLUMNS, Revisions, SqlStore, db_error, delete_in, put_in, secret_in, status_in, synced_in};
use crate::{DeleteOptions, PutOutcome, Store, StoreError, SyncedOp, SyncedOutcome};
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
    ("resources", COLUMNS),
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
        // Which writes are repeats: of a request recorded before, or of one earlier in this batch.
        let mut first_in_batch: std::collections::HashMap<&str, usize> = Default::default();
        let mut repeats: Vec<Option<Repeat>> = Vec::with_capacity(writes.len());
        for (i, w) in writes.iter().enumerate() {
            let Some(id) = w.request.as_deref() else {
                repeats.push(None);
                continue;
            };
            if let Some(first) = first_in_batch.get(id) {
                repeats.push(Some(Repeat::Of(*first)));
                continue;
            }
            let recorded = sqlx::query("SELECT reply FROM meridian_requests WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?
                .map(|row| row.try_get::<String, _>(0))
                .transpose()
                .map_err(db_error)?;
            if recorded.is_none() {
                first_in_batch.insert(id, i);
            }
            repeats.push(recorded.map(Repeat::Recorded));
        }
        let newest = writes.iter().map(|w| w.at_ms).max().unwrap_or(0);
        let to_apply = writes
            .iter()
            .zip(&repeats)
            .map(|(w, repeat)| (w.write.clone().filter(|_| repeat.is_none()), w.at_ms))
            .collect();
        let (outcomes, last) = write_batch(&mut tx, to_apply, Failure::Batch).await?;
        let mut replies: Vec<Option<String>> = vec![None; writes.len()];
        for (i, (w, outcome)) in writes.iter().zip(&outcomes).enumerate() {
            if let (Some(id), None) = (&w.request, &repeats[i]) {
                let reply = record(outcome);
                sqlx::query("INSERT INTO meridian_requests (id, at_ms, reply) VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(w.at_ms)
                    .bind(&reply)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                replies[i] = Some(reply);
            }
        }
        sqlx::query("DELETE FROM meridian_requests WHERE at_ms < $1")
            .bind(newest - REQUEST_MEMORY_MS)
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
mod tests {
    use meridian_model::{Format, Kind, parse_one};

    use super::*;

    async fn store() -> (SqlStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqlStore::open_sqlite(dir.path()).await.expect("open");
        store.migrate().await.expect("migrate");
        (store, dir)
    }

    fn submission(yaml: &str) -> Submission {
        parse_one(yaml, Format::Yaml).expect("valid")
    }

    const TRACE: &str = "type: MeshTrace\nname: t\nspec:\n  backends:\n  - name: o\n    type: open_telemetry\n    conf: {endpoint: 'a:4317'}\n";

    #[tokio::test]
    async fn logged_writes_take_the_logs_time_and_move_the_marker_even_when_refused() {
        let (store, _dir) = store().await;
        assert_eq!(store.applied_marker().await.expect("marker"), "");
        // No mesh yet: refused, and the marker still moves.
        let refused = store
            .apply_logged(Some(Write::Put(Box::new(submission(TRACE)))), 1_000, "1-1")
            .await
            .expect("store works");
        assert!(matches!(refused, Err(StoreError::NotFound(_))), "{refused:?}");
        assert_eq!(store.applied_marker().await.expect("marker"), "1-1");
        assert_eq!(store.revision().await.expect("revision"), 0);

        let mesh = Write::Put(Box::new(submission("type: Mesh\nname: default\n")));
        store
            .apply_logged(Some(mesh), 2_000, "1-2")
            .await
            .expect("works")
            .expect("put");
        let put = store
            .apply_logged(Some(Write::Put(Box::new(submission(TRACE)))), 3_000, "1-3")
            .await
            .expect("works")
            .expect("put");
        let Written::Put(outcome) = put else {
            panic!("{put:?}")
        };
        let PutOutcome::Created(stored) = *outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!((stored.creation_time_ms, stored.revision), (3_000, 2));
        store
            .apply_logged(None, 4_000, "2-4")
            .await
            .expect("works")
            .expect("nothing");
        assert_eq!(store.applied_marker().await.expect("marker"), "2-4");
        assert_eq!(store.revision().await.expect("revision"), 2);
    }

    #[tokio::test]
    async fn a_batch_commits_together_and_a_refused_write_is_undone_alone() {
        let (store, _dir) = store().await;
        let put = |yaml: &str| Some(Write::Put(Box::new(submission(yaml))));
        let stale = Submission {
            expected_version: Some(7),
            ..submission(&TRACE.replace("name: t", "name: t2"))
        };
        let outcomes = store
            .apply_logged_batch(
                [
                    (put(TRACE), 1_000),
                    (put("type: Mesh\nname: default\n"), 2_000),
                    (None, 2_500),
                    (put(TRACE), 3_000),
                    (Some(Write::Put(Box::new(stale))), 4_000),
                    (put(&TRACE.replace("name: t", "name: t3")), 5_000),
                ]
                .into_iter()
                .map(|(write, at_ms)| logged(write, at_ms, None))
                .collect(),
                "1-6",
                |_| String::new(),
            )
            .await
            .expect("store works");
        let words: Vec<String> = outcomes
            .iter()
            .map(|o| match o {
                Logged::Applied(o) => o,
                Logged::Repeated(r) => panic!("no request ids, yet repeated: {r}"),
            })
            .map(|o| match o {
                Ok(Written::Put(p)) => format!("{} at {}", p.word(), p.stored().revision),
                Ok(Written::Nothing) => "nothing".into(),
                Ok(other) => format!("{other:?}"),
                Err(StoreError::NotFound(_)) => "not found".into(),
                Err(StoreError::Conflict(_)) => "conflict".into(),
                Err(other) => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            words,
            [
                "not found",
                "created at 1",
                "nothing",
                "created at 2",
                "conflict",
                "created at 3"
            ]
        );
        assert_eq!(store.applied_marker().await.expect("marker"), "1-6");
        assert_eq!(store.revision().await.expect("revision"), 3);
        assert_eq!(*store.watch().borrow(), 3, "watchers hear of the last revision");
        let changes = store.changes_since(0, 100).await.expect("changes");
        assert_eq!(changes.len(), 3);
    }

    fn logged(write: Option<Write>, at_ms: i64, request: Option<&str>) -> LoggedWrite {
        LoggedWrite {
            write,
            at_ms,
            request: request.map(str::to_owned),
        }
    }

    /// What a put answered, as a test records it.
    fn word(outcome: &Result<Written, StoreError>) -> String {
        match outcome {
            Ok(Written::Put(p)) => format!("{} v{}", p.word(), p.stored().version),
            other => format!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_request_applied_before_is_answered_as_then_and_not_applied_again() {
        let (store, _dir) = store().await;
        let put = |yaml: &str| Some(Write::Put(Box::new(submission(yaml))));
        let other = TRACE.replace("a:4317", "b:4317");
        let apply = |writes: Vec<LoggedWrite>, marker: &'static str| {
            let store = store.clone();
            async move {
                let logged = store
                    .apply_logged_batch(writes, marker, word)
                    .await
                    .expect("store works");
                logged
                    .into_iter()
                    .map(|l| match l {
                        Logged::Applied(o) => word(&o),
                        Logged::Repeated(r) => format!("again: {r}"),
                    })
                    .collect::<Vec<_>>()
            }
        };
        let first = apply(
            vec![
                logged(put("type: Mesh\nname: default\n"), 1_000, Some("m")),
                logged(put(TRACE), 1_000, Some("a")),
                // The same request twice in one batch: applied once.
                logged(put(TRACE), 1_000, Some("a")),
            ],
            "1-3",
        )
        .await;
        assert_eq!(first, ["created v1", "created v1", "again: created v1"]);
        // Someone else changes it; then request "a" comes again, its first answer lost. It must
        // not put the old value back.
        let second = apply(
            vec![
                logged(put(&other), 2_000, Some("b")),
                logged(put(TRACE), 2_000, Some("a")),
            ],
            "1-5",
        )
        .await;
        assert_eq!(second, ["updated v2", "again: created v1"]);
        let key = submission(TRACE).resource.key();
        let stored = store.get(&key).await.expect("stored");
        assert_eq!(
            (stored.version, stored.resource),
            (2, submission(&other).resource)
        );
        // A minute later by the log's clock, "a" is forgotten: a new write like any other.
        let later = apply(
            vec![logged(put(TRACE), 2_000 + REQUEST_MEMORY_MS + 1, Some("c"))],
            "1-6",
        )
        .await;
        assert_eq!(later, ["updated v3"]);
        let forgotten = apply(
            vec![logged(put(&other), 2_000 + REQUEST_MEMORY_MS + 2, Some("a"))],
            "1-7",
        )
        .await;
        assert_eq!(forgotten, ["updated v4"]);
        // The record travels in snapshots, so a node restored from one answers repeats alike.
        let (restored, _d) = super::tests::store().await;
        let (_, dump) = store.dump().await.expect("dump");
        restored.restore(&dump, "1-7").await.expect("restore");
        let again = restored
            .apply_logged_batch(
                vec![logged(put(TRACE), 2_000 + REQUEST_MEMORY_MS + 3, Some("c"))],
                "1-8",
                word,
            )
            .await
            .expect("works");
        assert!(
            matches!(&again[..], [Logged::Repeated(r)] if r == "updated v3"),
            "{again:?}"
        );
    }

    #[tokio::test]
    async fn a_restored_dump_is_the_same_state_with_the_same_change_feed() {
        let (a, _da) = store().await;
        a.put(submission("type: Mesh\nname: default\n"))
            .await
            .expect("mesh");
        a.put(submission(TRACE)).await.expect("trace");
        let gone = submission(&TRACE.replace("name: t", "name: gone"));
        a.put(gone.clone()).await.expect("gone");
        a.delete(&gone.resource.key(), DeleteOptions::default())
            .await
            .expect("delete");
        a.apply_synced(Vec::new(), Some(17)).await.expect("position");
        a.put_status("s", "v").await.expect("status");
        a.secret("k", "secret").await.expect("secret");

        let (b, _db) = store().await;
        b.put(submission("type: Mesh\nname: other\n"))
            .await
            .expect("replaced");
        let (marker, dump) = a.dump().await.expect("dump");
        assert_eq!(marker, "");
        b.restore(&dump, "3-9").await.expect("restore");
        assert_eq!(b.snapshot().await.expect("b"), a.snapshot().await.expect("a"));
        assert_eq!(
            b.changes_since(0, 100).await.expect("b"),
            a.changes_since(0, 100).await.expect("a")
        );
        assert_eq!(b.sync_position().await.expect("position"), 17);
        assert_eq!(b.secret("k", "other").await.expect("secret"), "secret");
        assert_eq!(b.statuses("").await.expect("statuses").len(), 1);
        assert_eq!(b.applied_marker().await.expect("marker"), "3-9");
        assert_eq!(*b.watch().borrow(), a.revision().await.expect("revision"));
        assert!(b.get(&ResourceKey::new(Kind::Mesh, "", "other")).await.is_err());
        assert!(
            b.restore(b"{}", "x")
                .await
                .is_err_and(|e| e.to_string().contains("no table"))
        );
        // A snapshot from before the request record existed restores with none.
        let mut old: Map<String, Value> = serde_json::from_slice(&dump).expect("json");
        old.remove("meridian_requests");
        b.restore(&serde_json::to_vec(&old).expect("json"), "3-10")
            .await
            .expect("an older snapshot");
    }
}
