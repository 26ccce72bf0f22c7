//! The store's writes inside a transaction: revisions, tombstones, version checks, and each
//! kind of write (put, delete, a synced batch, status, secret). The callers own the
//! transaction: one write, a group-committed batch or a replicated log's batch.

use std::collections::BTreeMap;

use meridian_model::{Kind, Resource, ResourceKey, Scope, SpanContext, Stored, Submission};
use sqlx::{AnyConnection, Row};

use super::{COLUMNS, db_error, decode_row};
use crate::{DeleteOptions, PutOutcome, StoreError, SyncedOp, SyncedOutcome};

/// How a trace is stored: its `traceparent`, or '' without one.
fn traceparent(trace: Option<SpanContext>) -> String {
    trace.map(|t| t.traceparent()).unwrap_or_default()
}

pub(super) fn encode(resource: &Resource) -> (String, String) {
    let labels = serde_json::to_string(&resource.labels).unwrap_or_else(|_| "{}".into());
    let spec = resource.spec.to_value().to_string();
    (labels, spec)
}

/// Takes the next revision (under the lock [`SqlStore::begin_write`] took).
pub(super) async fn next_revision(conn: &mut AnyConnection) -> Result<i64, StoreError> {
    sqlx::query("UPDATE meridian_revision SET value = value + 1 WHERE id = 1 RETURNING value")
        .fetch_one(&mut *conn)
        .await
        .and_then(|row| row.try_get::<i64, _>(0))
        .map_err(db_error)
}

pub(super) async fn fetch(conn: &mut AnyConnection, key: &ResourceKey) -> Result<Option<Stored>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM resources WHERE kind = $1 AND mesh = $2 AND name = $3");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(key.kind.name())
        .bind(&key.mesh)
        .bind(&key.name)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
    row.as_ref().map(decode_row).transpose()
}

pub(super) async fn mesh_exists(conn: &mut AnyConnection, mesh: &str) -> Result<bool, StoreError> {
    let row = sqlx::query("SELECT COUNT(*) FROM resources WHERE kind = 'Mesh' AND mesh = '' AND name = $1")
        .bind(mesh)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(row.try_get::<i64, _>(0).map_err(db_error)? > 0)
}

pub(super) async fn tombstone(
    conn: &mut AnyConnection,
    key: &ResourceKey,
    revision: i64,
    now: i64,
    trace: Option<SpanContext>,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM resources WHERE kind = $1 AND mesh = $2 AND name = $3")
        .bind(key.kind.name())
        .bind(&key.mesh)
        .bind(&key.name)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    sqlx::query(
        "INSERT INTO tombstones (kind, mesh, name, revision, deleted_at, trace) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (kind, mesh, name) DO UPDATE SET revision = excluded.revision, \
         deleted_at = excluded.deleted_at, trace = excluded.trace",
    )
    .bind(key.kind.name())
    .bind(&key.mesh)
    .bind(&key.name)
    .bind(revision)
    .bind(now)
    .bind(traceparent(trace))
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

pub(super) fn check_version(
    key: &ResourceKey,
    current: Option<i64>,
    expected: Option<i64>,
) -> Result<(), StoreError> {
    match (expected, current) {
        (None, _) => Ok(()),
        (Some(e), Some(c)) if e == c => Ok(()),
        (Some(0), None) => Ok(()),
        (Some(e), Some(c)) => Err(StoreError::Conflict(format!(
            "{key} was changed by someone else: you sent version {e}, the current version is {c}; read it again and retry"
        ))),
        (Some(e), None) => Err(StoreError::Conflict(format!(
            "{key} does not exist, but you sent version {e}: it was deleted, or send version 0 to create it"
        ))),
    }
}

/// The revisions a write transaction takes (one per change, on demand), and the time its
/// writes are stamped with.
pub(super) struct Revisions {
    /// The last revision taken; `None` while nothing was written.
    pub(super) last: Option<i64>,
    pub(super) now_ms: i64,
}

impl Revisions {
    pub(super) fn at(now_ms: i64) -> Self {
        Self { last: None, now_ms }
    }

    async fn take(&mut self, tx: &mut AnyConnection) -> Result<i64, StoreError> {
        let revision = next_revision(tx).await?;
        self.last = Some(revision);
        Ok(revision)
    }
}

pub(super) async fn put_in(
    tx: &mut AnyConnection,
    revisions: &mut Revisions,
    submission: Submission,
) -> Result<PutOutcome, StoreError> {
    let Submission {
        resource,
        expected_version,
        trace,
    } = submission;
    let key = resource.key();
    let current = fetch(&mut *tx, &key).await?;
    // A stored resource's mesh exists (a mesh goes only once empty, or with all it holds):
    // only a new one needs the check.
    if current.is_none() && key.kind.scope() == Scope::Mesh && !mesh_exists(&mut *tx, &key.mesh).await? {
        return Err(StoreError::NotFound(format!(
            "mesh {:?} not found: create it first",
            key.mesh
        )));
    }
    check_version(&key, current.as_ref().map(|c| c.version), expected_version)?;
    if let Some(current) = &current
        && current.resource == resource
    {
        return Ok(PutOutcome::Unchanged(current.clone()));
    }
    let revision = revisions.take(tx).await?;
    let now = revisions.now_ms;
    let (labels, spec) = encode(&resource);
    let stored = Stored {
        version: current.as_ref().map_or(1, |c| c.version + 1),
        revision,
        creation_time_ms: current.as_ref().map_or(now, |c| c.creation_time_ms),
        modification_time_ms: now,
        resource,
        trace,
    };
    let sql = format!(
        "INSERT INTO resources ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (kind, mesh, name) DO UPDATE SET version = excluded.version, \
         revision = excluded.revision, labels = excluded.labels, spec = excluded.spec, \
         modification_time = excluded.modification_time, trace = excluded.trace"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(key.kind.name())
        .bind(&key.mesh)
        .bind(&key.name)
        .bind(stored.version)
        .bind(stored.revision)
        .bind(labels)
        .bind(spec)
        .bind(stored.creation_time_ms)
        .bind(stored.modification_time_ms)
        .bind(traceparent(stored.trace))
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    if current.is_none() {
        sqlx::query("DELETE FROM tombstones WHERE kind = $1 AND mesh = $2 AND name = $3")
            .bind(key.kind.name())
            .bind(&key.mesh)
            .bind(&key.name)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
    }
    Ok(match current {
        None => PutOutcome::Created(stored),
        Some(_) => PutOutcome::Updated(stored),
    })
}

pub(super) async fn delete_in(
    tx: &mut AnyConnection,
    revisions: &mut Revisions,
    key: &ResourceKey,
    options: DeleteOptions,
) -> Result<i64, StoreError> {
    let current = fetch(&mut *tx, key)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("{key} not found")))?;
    check_version(key, Some(current.version), options.expected_version)?;
    // Taken once the delete will happen; a cascade takes one more per resource it deletes.
    let mut revision = revisions.take(tx).await?;
    let now = revisions.now_ms;
    if key.kind == Kind::Mesh {
        let rows = sqlx::query("SELECT kind, name FROM resources WHERE mesh = $1 ORDER BY kind, name")
            .bind(&key.name)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
        if !rows.is_empty() && !options.cascade {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for row in &rows {
                *counts
                    .entry(row.try_get::<String, _>(0).map_err(db_error)?)
                    .or_default() += 1;
            }
            let held: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
            return Err(StoreError::Conflict(format!(
                "mesh {:?} still holds {}: delete them first, or delete with cascade=true",
                key.name,
                held.join(", ")
            )));
        }
        for row in &rows {
            let kind_name = row.try_get::<String, _>(0).map_err(db_error)?;
            let kind = Kind::from_name(&kind_name).ok_or_else(|| {
                StoreError::Internal(format!("stored resource of unknown kind {kind_name}"))
            })?;
            let name = row.try_get::<String, _>(1).map_err(db_error)?;
            tombstone(
                &mut *tx,
                &ResourceKey::new(kind, key.name.clone(), name),
                revision,
                now,
                options.trace,
            )
            .await?;
            revision = revisions.take(tx).await?;
        }
    }
    tombstone(&mut *tx, key, revision, now, options.trace).await?;
    Ok(revision)
}

pub(super) async fn synced_in(
    tx: &mut AnyConnection,
    revisions: &mut Revisions,
    ops: Vec<SyncedOp>,
    position: Option<i64>,
) -> Result<SyncedOutcome, StoreError> {
    let mut outcome = SyncedOutcome::default();
    for op in ops {
        match op {
            SyncedOp::Put(s) => match put_in(&mut *tx, revisions, *s).await? {
                PutOutcome::Unchanged(_) => outcome.unchanged += 1,
                _ => outcome.written += 1,
            },
            SyncedOp::Delete { key, trace } => {
                let options = DeleteOptions {
                    cascade: true,
                    expected_version: None,
                    trace,
                };
                match delete_in(&mut *tx, revisions, &key, options).await {
                    Ok(_) => outcome.deleted += 1,
                    Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    if let Some(position) = position {
        sqlx::query("UPDATE meridian_sync_position SET value = $1 WHERE id = 1")
            .bind(position)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
    }
    Ok(outcome)
}

pub(super) async fn status_in(
    conn: &mut AnyConnection,
    name: &str,
    value: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO meridian_status (name, value, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
    )
    .bind(name)
    .bind(value)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Stores `candidate` as the secret `name` unless one is stored (or in any case, with
/// `replace`), and returns what is stored.
pub(super) async fn secret_in(
    conn: &mut AnyConnection,
    name: &str,
    candidate: &str,
    replace: bool,
    now: i64,
) -> Result<String, StoreError> {
    let sql = if replace {
        "INSERT INTO meridian_signing_keys (name, secret, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET secret = excluded.secret, created_at = excluded.created_at"
    } else {
        "INSERT INTO meridian_signing_keys (name, secret, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO NOTHING"
    };
    sqlx::query(sql)
        .bind(name)
        .bind(candidate)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    sqlx::query("SELECT secret FROM meridian_signing_keys WHERE name = $1")
        .bind(name)
        .fetch_one(&mut *conn)
        .await
        .and_then(|row| row.try_get::<String, _>(0))
        .map_err(db_error)
}
