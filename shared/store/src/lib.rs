//! Durable storage of resources, behind one trait.
//!
//! ```text
//!   REST handlers ──> dyn Store ──> SqlStore ──┬── SQLite file (default, embedded)
//!                                              └── Postgres (shared by N replicas)
//! ```
//!
//! Every write takes the next store revision; deletes leave tombstones carrying theirs, so a
//! reader (the zone sync) can ask for everything that changed after a revision.

#![forbid(unsafe_code)]

mod migrations;
mod sql;

use async_trait::async_trait;
use meridian_model::{Kind, ResourceKey, SpanContext, Stored, Submission};

pub use sql::{
    Backend, Lease, Logged, LoggedWrite, REQUEST_MEMORY_MS, Sensitive, SqlStore, TOMBSTONE_COMPACTION, Write,
    Written, redact,
};

/// What a store can fail with, in domain terms (the REST layer maps these to statuses).
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    /// Whoever asked may not do this (a zone's leader refusing a forwarded write).
    #[error("{0}")]
    Forbidden(String),
    /// A precondition failed: a stale version, or a mesh that still holds resources.
    #[error("{0}")]
    Conflict(String),
    /// The database cannot be reached; retrying later may work.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A reader asked for changes older than the tombstone horizon: it needs a full snapshot.
    #[error("revision {asked} is older than the tombstone horizon {horizon}")]
    TooOld { asked: i64, horizon: i64 },
    #[error("store error: {0}")]
    Internal(String),
}

/// What kind of failure an error is, whatever its details: the one classification that the
/// REST API maps to HTTP statuses and the gRPC services to codes (`meridian_api::error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    Forbidden,
    Conflict,
    /// Asked for something the server no longer has (changes behind the tombstone horizon).
    Gone,
    /// Worth retrying later.
    Unavailable,
    /// A fault of the server's: its details go to the log, not to the caller.
    Internal,
}

impl StoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::NotFound(_) => ErrorKind::NotFound,
            StoreError::Forbidden(_) => ErrorKind::Forbidden,
            StoreError::Conflict(_) => ErrorKind::Conflict,
            StoreError::TooOld { .. } => ErrorKind::Gone,
            StoreError::Unavailable(_) => ErrorKind::Unavailable,
            StoreError::Internal(_) => ErrorKind::Internal,
        }
    }
}

/// The result of a put.
#[derive(Clone, Debug, PartialEq)]
pub enum PutOutcome {
    Created(Stored),
    Updated(Stored),
    /// The same labels and spec were already stored: nothing was written, no revision taken.
    Unchanged(Stored),
}

impl PutOutcome {
    pub fn stored(&self) -> &Stored {
        match self {
            PutOutcome::Created(s) | PutOutcome::Updated(s) | PutOutcome::Unchanged(s) => s,
        }
    }

    pub fn word(&self) -> &'static str {
        match self {
            PutOutcome::Created(_) => "created",
            PutOutcome::Updated(_) => "updated",
            PutOutcome::Unchanged(_) => "unchanged",
        }
    }
}

/// Which slice of a list to return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub size: u32,
    pub offset: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ListPage {
    /// How many resources match, over all pages.
    pub total: u64,
    pub items: Vec<Stored>,
}

/// Options for a delete.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// For a Mesh: delete everything in it too. Without it a non-empty mesh is not deleted.
    pub cascade: bool,
    /// Refuse the delete unless the resource is at this version.
    pub expected_version: Option<i64>,
    /// The span of the request that deletes, when it is traced: kept with the tombstone.
    pub trace: Option<SpanContext>,
}

/// One write of a synced batch.
#[derive(Clone, Debug, PartialEq)]
pub enum SyncedOp {
    Put(Box<Submission>),
    /// Deletes (with everything in it, for a Mesh); a resource already gone is fine.
    Delete {
        key: ResourceKey,
        /// The span of the write, when it is traced (as [`Submission::trace`]).
        trace: Option<SpanContext>,
    },
}

impl SyncedOp {
    /// An untraced delete of `key`.
    pub fn delete(key: ResourceKey) -> Self {
        Self::Delete { key, trace: None }
    }
}

/// What applying a synced batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncedOutcome {
    pub written: usize,
    pub unchanged: usize,
    pub deleted: usize,
}

/// A status record and when it was last written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusEntry {
    pub name: String,
    pub value: String,
    /// Milliseconds since the Unix epoch, by the writer's clock.
    pub updated_ms: i64,
}

/// One entry of the change feed.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Upsert(Box<Stored>),
    Delete {
        key: ResourceKey,
        revision: i64,
        /// Milliseconds since the Unix epoch.
        deleted_ms: i64,
        trace: Option<SpanContext>,
    },
}

/// How long after a write its trace is continued: a reader catching up on older changes (a
/// node starting, a zone back after a long absence) adds no spans to traces long finished.
pub const TRACE_MEMORY_MS: i64 = 60_000;

impl Change {
    pub fn revision(&self) -> i64 {
        match self {
            Change::Upsert(s) => s.revision,
            Change::Delete { revision, .. } => *revision,
        }
    }

    /// The trace of the write that made this change, if it was traced less than
    /// [`TRACE_MEMORY_MS`] before `now_ms`.
    pub fn trace(&self, now_ms: i64) -> Option<SpanContext> {
        let (trace, at_ms) = match self {
            Change::Upsert(s) => (s.trace, s.modification_time_ms),
            Change::Delete {
                trace, deleted_ms, ..
            } => (*trace, *deleted_ms),
        };
        trace.filter(|_| now_ms.saturating_sub(at_ms) < TRACE_MEMORY_MS)
    }
}

/// The store's role traits, unnamed: `use meridian_store::prelude::*` lets code holding a
/// concrete store (a `SqlStore`) call any of their methods.
pub mod prelude {
    pub use super::{ChangeLog as _, Resources as _, Secrets as _, Statuses as _, Store as _, SyncLog as _};
}

/// Resources as the REST API sees them: read, written, listed.
#[async_trait]
pub trait Resources: Send + Sync {
    async fn get(&self, key: &ResourceKey) -> Result<Stored, StoreError>;

    /// Resources of `kind`, in one mesh or (with `None`) in all, ordered by mesh and name.
    async fn list(&self, kind: Kind, mesh: Option<&str>, page: Page) -> Result<ListPage, StoreError>;

    /// Creates or replaces a resource. A mesh-scoped resource needs its mesh to exist.
    async fn put(&self, submission: Submission) -> Result<PutOutcome, StoreError>;

    /// Deletes a resource and returns the revision of the delete.
    async fn delete(&self, key: &ResourceKey, options: DeleteOptions) -> Result<i64, StoreError>;

    /// Returns once reads from this store see every write acknowledged before the call, on
    /// any replica: `read_barrier` then `get` is a linearizable read. A store whose every
    /// reader shares one database (SQLite, Postgres) is there already.
    async fn read_barrier(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The change feed: what the reconciler, global's zone streams and replicas follow.
#[async_trait]
pub trait ChangeLog: Send + Sync {
    /// The revision of the last committed write.
    async fn revision(&self) -> Result<i64, StoreError>;

    /// Changes with a revision above `after`, oldest first, at most `limit` of them.
    async fn changes_since(&self, after: i64, limit: u32) -> Result<Vec<Change>, StoreError>;

    /// Every resource and the revision they are at, read at one instant: what a reader behind
    /// the tombstone horizon starts again from.
    async fn snapshot(&self) -> Result<(i64, Vec<Stored>), StoreError>;

    /// The revision of the last write committed through this store, updated as writes commit:
    /// what the xDS and sync layers wait on instead of polling.
    fn watch(&self) -> tokio::sync::watch::Receiver<i64>;
}

/// Federation's writes: global's on a zone (with the position they came from), a zone's
/// inventory on global.
#[async_trait]
pub trait SyncLog: Send + Sync {
    /// On a zone: the last global revision applied to this store.
    async fn sync_position(&self) -> Result<i64, StoreError>;

    /// Applies a batch of synced writes (from global on a zone, a zone's inventory on global)
    /// and, when given, moves the sync position, all in one transaction: readers see all of
    /// it or none of it, and a crash leaves neither half. Unchanged resources are not
    /// rewritten, and deleting what is already gone is fine.
    async fn apply_synced(
        &self,
        ops: Vec<SyncedOp>,
        position: Option<i64>,
    ) -> Result<SyncedOutcome, StoreError>;
}

/// Secrets (signing keys, mesh CAs): in the store, never in the change feed nor the API's
/// listings.
#[async_trait]
pub trait Secrets: Send + Sync {
    /// The secret named `name`: the stored one, or `candidate` if none was stored yet (the
    /// first writer wins, so replicas starting together agree).
    async fn secret(&self, name: &str, candidate: &str) -> Result<String, StoreError>;

    /// Stores `value` as the secret `name`, replacing any stored one (a zone taking its
    /// mesh CAs from global).
    async fn put_secret(&self, name: &str, value: &str) -> Result<(), StoreError>;

    /// The secret named `name`, if one is stored; never creates one.
    async fn stored_secret(&self, name: &str) -> Result<Option<String>, StoreError>;

    /// Every secret whose name starts with `prefix` (name and value), in name order.
    async fn secrets(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError>;
}

/// Runtime status records (each global replica's view of a zone): no revision, the last
/// writer wins.
#[async_trait]
pub trait Statuses: Send + Sync {
    /// Records runtime status that is not a resource (each global replica's view of a zone's
    /// sync): it takes no revision, and the last writer wins.
    async fn put_status(&self, name: &str, value: &str) -> Result<(), StoreError>;

    /// Every status whose name starts with `prefix`, in name order.
    async fn statuses(&self, prefix: &str) -> Result<Vec<StatusEntry>, StoreError>;
}

/// A store in every role, as the runtime wires one (`Arc<dyn Store>`). Compacting tombstones
/// is not among them: only global compacts, on its SQL store ([`SqlStore::compact_tombstones`]).
#[async_trait]
pub trait Store: Resources + ChangeLog + SyncLog + Secrets + Statuses + 'static {
    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Every resource of `kind` (in `mesh`, or in all meshes), a page at a time: callers that need
/// all of them never stop at a page size.
pub async fn list_all(store: &dyn Store, kind: Kind, mesh: Option<&str>) -> Result<Vec<Stored>, StoreError> {
    const PAGE: u32 = 1000;
    let mut all = Vec::new();
    loop {
        let page = store
            .list(
                kind,
                mesh,
                Page {
                    size: PAGE,
                    offset: all.len() as u64,
                },
            )
            .await?;
        let done = page.items.len() < PAGE as usize;
        all.extend(page.items);
        if done || all.len() as u64 >= page.total {
            return Ok(all);
        }
    }
}

/// The keys of every resource of `kind`, in all meshes.
pub async fn keys(store: &dyn Store, kind: Kind) -> Result<Vec<ResourceKey>, StoreError> {
    let all = list_all(store, kind, None).await?;
    Ok(all.iter().map(|s| s.resource.key()).collect())
}

/// The policies a new mesh is created with, as in Kuma: an allow-all MeshTrafficPermission
/// named `allow-all-MESH`, unless the mesh's `skipCreatingInitialPolicies` lists
/// `MeshTrafficPermission` or `*`.
pub fn initial_policies(mesh: &meridian_model::Resource) -> Vec<Submission> {
    let meridian_model::Spec::Mesh(spec) = &mesh.spec else {
        return Vec::new();
    };
    let skipped = spec
        .skip_creating_initial_policies
        .iter()
        .flatten()
        .any(|k| k == "*" || k == Kind::MeshTrafficPermission.name());
    if skipped {
        return Vec::new();
    }
    let yaml = format!(
        "type: MeshTrafficPermission\nname: allow-all-{0}\nmesh: {0}\nspec:\n  targetRef: {{kind: Mesh}}\n  from:\n  - targetRef: {{kind: Mesh}}\n    default: {{action: Allow}}\n",
        mesh.name
    );
    meridian_model::parse_one(&yaml, meridian_model::Format::Yaml)
        .map(|s| vec![s])
        .unwrap_or_default()
}

/// Creates or replaces a resource. A Mesh created now comes with its
/// [`initial_policies`], in the same transaction.
pub async fn put_with_defaults(store: &dyn Store, submission: Submission) -> Result<PutOutcome, StoreError> {
    let key = submission.resource.key();
    if key.kind != Kind::Mesh {
        return store.put(submission).await;
    }
    match store.get(&key).await {
        Ok(_) => return store.put(submission).await,
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    let policies = initial_policies(&submission.resource);
    if policies.is_empty() {
        return store.put(submission).await;
    }
    let mut ops = vec![SyncedOp::Put(Box::new(submission))];
    ops.extend(policies.into_iter().map(|p| SyncedOp::Put(Box::new(p))));
    store.apply_synced(ops, None).await?;
    Ok(PutOutcome::Created(store.get(&key).await?))
}

/// On a store that has never been written, creates the mesh `default` (as Kuma does). A
/// store that has seen writes is left alone, so a deleted `default` stays deleted. Safe to
/// race: of several replicas starting at once, one creates it.
pub async fn create_default_mesh(store: &dyn Store) -> Result<(), StoreError> {
    if store.revision().await? > 0 {
        return Ok(());
    }
    let yaml = format!("type: Mesh\nname: {}\n", meridian_model::DEFAULT_MESH);
    let mut mesh = meridian_model::parse_one(&yaml, meridian_model::Format::Yaml)
        .map_err(|e| StoreError::Internal(format!("the default mesh does not parse: {e}")))?;
    mesh.expected_version = Some(0);
    match put_with_defaults(store, mesh).await {
        Ok(_) | Err(StoreError::Conflict(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
