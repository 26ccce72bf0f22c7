//! The zone's replicated state: an openraft log and state machine over the zone's stores.
//!
//! ```text
//!   write (REST, sync) ──ZoneRequest──> Raft leader ──append──> log (raft.db, every node)
//!                                                      commit ──> StateMachine::apply
//!                                                                   └─> SqlStore::apply_logged
//!                                                                       (meridian.db: resources,
//!                                                                        revision, sync position,
//!                                                                        applied log id)
//! ```
//!
//! Every node applies the same entries in the same order to the same SQL store code, with the
//! time the leader stamped on each request, so every node's `meridian.db` holds the same
//! resources at the same revisions; each node serves xDS and reads from its own copy.
//!
//! The log lives in its own SQLite file (`raft.db`, WAL, `synchronous=FULL`): an append is
//! one transaction, fsynced before openraft is told it is durable. SQLite is already the
//! zone's embedded store, so this adds no storage engine; a separate file keeps log appends
//! from queueing behind state-machine writes on one database lock.

// openraft's traits return its StorageError, which is large; helpers return it too.
#[allow(clippy::result_large_err)]
pub mod log;
#[allow(clippy::result_large_err)]
pub mod state;
pub mod wire;

use std::io::Cursor;

pub use log::LogStore;
pub use state::StateMachine;
pub use wire::{ZoneReply, ZoneRequest};

openraft::declare_raft_types!(
    /// Meridian's zone Raft.
    pub TypeConfig:
        D = ZoneRequest,
        R = ZoneReply,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type StorageError = openraft::StorageError<NodeId>;
pub type LogId = openraft::LogId<NodeId>;

/// A storage failure, in openraft's terms.
fn io_error(
    build: fn(openraft::AnyError) -> openraft::StorageIOError<NodeId>,
    e: impl std::fmt::Display,
) -> StorageError {
    build(openraft::AnyError::error(e)).into()
}

/// Milliseconds since the Unix epoch: the time a leader stamps on a request.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use meridian_store::SqlStore;
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;

    /// Fresh stores in temporary directories, kept until the test ends.
    #[derive(Default)]
    struct Builder {
        dirs: Mutex<Vec<tempfile::TempDir>>,
    }

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for Builder {
        async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().map_err(|e| io_error(openraft::StorageIOError::write, e))?;
            let store = SqlStore::open_sqlite(dir.path())
                .await
                .map_err(|e| io_error(openraft::StorageIOError::write, e))?;
            store
                .migrate()
                .await
                .map_err(|e| io_error(openraft::StorageIOError::write, e))?;
            let log = LogStore::open(dir.path())
                .await
                .map_err(|e| io_error(openraft::StorageIOError::write, e))?;
            let sm = StateMachine::new(store, log.clone()).await?;
            self.dirs.lock().unwrap_or_else(|e| e.into_inner()).push(dir);
            Ok(((), log, sm))
        }
    }

    #[test]
    fn openraft_storage_conformance() {
        Suite::test_all(Builder::default()).expect("the storage suite passes");
    }
}
