//! The state machine: the zone's SQL store, written only by applying log entries. The applied
//! log id and membership travel with each write (the store's marker), and the snapshot is the
//! store's whole state.

use std::io::Cursor;
use std::sync::Arc;

use meridian_store::{Logged, LoggedWrite, SqlStore};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, Entry, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::wire::BadWrite;
use super::{LogId, LogStore, NodeId, StorageError, TypeConfig, ZoneReply, ZoneRequest, io_error};

/// Where the state stands in the log: kept in the SQL store beside the state it describes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, BasicNode>,
}

impl Applied {
    fn parse(marker: &str) -> Result<Self, StorageError> {
        if marker.is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_str(marker).map_err(|e| io_error(StorageIOError::read_state_machine, e))
    }

    fn marker(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: String,
}

/// The state machine. Clones share the store and the applied position.
#[derive(Clone)]
pub struct StateMachine {
    store: SqlStore,
    log: LogStore,
    applied: Arc<Mutex<Applied>>,
}

impl StateMachine {
    pub async fn new(store: SqlStore, log: LogStore) -> Result<Self, StorageError> {
        let marker = store
            .applied_marker()
            .await
            .map_err(|e| io_error(StorageIOError::read_state_machine, e))?;
        Ok(Self {
            store,
            log,
            applied: Arc::new(Mutex::new(Applied::parse(&marker)?)),
        })
    }

    async fn save_snapshot(&self, snapshot: &StoredSnapshot) -> Result<(), StorageError> {
        self.log
            .set_meta("snapshot", snapshot)
            .await
            .map_err(|e| io_error(|e| StorageIOError::write_snapshot(None, e), e))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (marker, data) = self
            .store
            .dump()
            .await
            .map_err(|e| io_error(StorageIOError::read_state_machine, e))?;
        let applied = Applied::parse(&marker)?;
        let snapshot_id = format!(
            "{}-{}",
            applied.last_applied.map_or(0, |l| l.index),
            crate::raft::now_ms()
        );
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: String::from_utf8(data.clone())
                .map_err(|e| io_error(StorageIOError::read_state_machine, e))?,
        };
        self.save_snapshot(&stored).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, BasicNode>), StorageError> {
        let applied = self.applied.lock().await;
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ZoneReply>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Every committed entry openraft hands over goes into one transaction: one fsync for
        // the lot, however many clients wrote at once (group commit).
        let mut applied = self.applied.lock().await;
        let mut next = applied.clone();
        let mut writes = Vec::new();
        // Per entry: the request it carries, or why it no longer decodes.
        let mut requests: Vec<Result<Option<&ZoneRequest>, BadWrite>> = Vec::new();
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        for entry in &entries {
            next.last_applied = Some(entry.log_id);
            let (write, at_ms, request) = match &entry.payload {
                EntryPayload::Blank => (Ok(None), 0, None),
                EntryPayload::Membership(m) => {
                    next.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    (Ok(None), 0, None)
                }
                EntryPayload::Normal(request) => (request.to_write().map(Some), request.at_ms, Some(request)),
            };
            let (write, decoded) = match write {
                Ok(write) => (write, Ok(request)),
                Err(why) => (None, Err(why)),
            };
            writes.push(LoggedWrite {
                write,
                at_ms,
                request: request.and_then(|r| r.id.clone()).filter(|_| decoded.is_ok()),
            });
            requests.push(decoded);
        }
        let Some(last) = next.last_applied.filter(|_| !writes.is_empty()) else {
            return Ok(Vec::new());
        };
        let outcomes = self
            .store
            .apply_logged_batch(writes, &next.marker(), ZoneReply::recorded)
            .await
            .map_err(|e| io_error_at(last, e))?;
        *applied = next;
        let replies = outcomes
            .iter()
            .zip(requests)
            .map(|(outcome, request)| match (outcome, request) {
                (_, Err(why)) => ZoneReply::invalid(&why),
                (Logged::Applied(outcome), _) => ZoneReply::new(outcome),
                (Logged::Repeated(recorded), Ok(Some(request))) => ZoneReply::repeated(recorded, request),
                (Logged::Repeated(_), Ok(None)) => ZoneReply::new(&Ok(meridian_store::Written::Nothing)),
            });
        Ok(replies.collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let mut applied = self.applied.lock().await;
        let next = Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let data = snapshot.into_inner();
        self.store
            .restore(&data, &next.marker())
            .await
            .map_err(|e| io_error(StorageIOError::write_state_machine, e))?;
        self.save_snapshot(&StoredSnapshot {
            meta: meta.clone(),
            data: String::from_utf8(data).map_err(|e| io_error(StorageIOError::write_state_machine, e))?,
        })
        .await?;
        *applied = next;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let stored: Option<StoredSnapshot> = self
            .log
            .meta("snapshot")
            .await
            .map_err(|e| io_error(|e| StorageIOError::read_snapshot(None, e), e))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data.into_bytes())),
        }))
    }
}

fn io_error_at(log_id: LogId, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::apply(log_id, openraft::AnyError::error(e)).into()
}
