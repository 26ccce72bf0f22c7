//! The zone's `Store`: reads from this node's copy of the state, writes through Raft. A write
//! that reaches a follower is forwarded to the leader, and answered once this node has applied
//! it too, so whoever wrote reads their own write from the node they asked.
//!
//! A read that must see everyone's acknowledged writes (the REST API's) first passes
//! [`Store::read_barrier`]: the leader confirms with a majority that it still leads and names
//! its commit index (Raft's read index, §6.4), and this node waits until it has applied that
//! far. Readers inside the zone-cp (xDS, the reconciler) read this node's copy directly.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use meridian_model::{Kind, ResourceKey, Stored, Submission};
use meridian_store::{
    Change, ChangeLog, DeleteOptions, ListPage, Page, PutOutcome, Resources, Secrets, Sensitive, SqlStore,
    StatusEntry, Statuses, Store, StoreError, SyncLog, SyncedOp, SyncedOutcome, Write, Written,
};
use openraft::Raft;
use tokio::sync::watch;

use super::leader::{self, LeadError, LeaderCall, lead};
use super::network::Network;
use super::{TypeConfig, ZoneReply, ZoneRequest, now_ms};

/// How long a write waits for a leader, and for the leader to answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads local, writes replicated.
#[derive(Clone)]
pub struct ZoneStore {
    raft: Raft<TypeConfig>,
    local: SqlStore,
    network: Network,
}

impl ZoneStore {
    pub fn new(raft: Raft<TypeConfig>, local: SqlStore, network: Network) -> Arc<Self> {
        Arc::new(Self { raft, local, network })
    }

    async fn write(&self, write: Write) -> Result<Written, StoreError> {
        let request = ZoneRequest::new(now_ms(), &write);
        let reply = on_leader(&self.raft, &self.network, LeaderCall::Write(request))
            .await
            .map_err(|e| match e {
                LeadError::Denied(why) => StoreError::Forbidden(why),
                other => StoreError::Unavailable(other.to_string()),
            })?;
        reply
            .ok_or_else(|| StoreError::Internal("the leader sent no reply".into()))?
            .into_written()
    }
}

/// Does `call` on the leader: here if this node leads, else forwarded to it (with the
/// authority of the request being served, see `meridian_api::auth::caller`), following the
/// leader through elections for up to 10 s. Answers once this node has applied the result
/// too, so whoever asked reads their own write from this node.
///
/// A call whose answer was lost (the leader stepped down or went away) is sent again with
/// the same request id: a write done the first time is answered as it was then (the state
/// machine keeps the answers of recent requests), and removing a member that is gone by then
/// is the removal having worked.
pub async fn on_leader(
    raft: &Raft<TypeConfig>,
    network: &Network,
    call: LeaderCall,
) -> Result<Option<ZoneReply>, LeadError> {
    let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
    // Whether an earlier try may have taken effect without our hearing of it.
    let mut maybe_done = false;
    loop {
        // A leader cut off from its majority never commits: give up rather than hang.
        let tried = tokio::time::timeout_at(deadline, try_once(raft, network, &call, deadline))
            .await
            .unwrap_or_else(|_| {
                Err(LeadError::Failed(format!(
                    "not committed within {WRITE_TIMEOUT:?}: is a majority of the zone's nodes reachable?"
                )))
            });
        let problem = match tried {
            Ok(reply) => return Ok(reply),
            Err(LeadError::NotAMember(id)) if maybe_done => {
                let _ = raft
                    .wait(Some(time_left(deadline)))
                    .metrics(
                        |m| !m.membership_config.membership().voter_ids().any(|v| v == id),
                        "the removal",
                    )
                    .await;
                return Ok(None);
            }
            Err(e @ (LeadError::SteppedDown(_) | LeadError::Unreachable(_))) => {
                maybe_done = true;
                e
            }
            // An election is on, or the node we asked has just lost one.
            Err(e @ LeadError::NotLeader(_)) => e,
            Err(e) => return Err(e),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(problem);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One try of `call`: on this node if it leads, else on the leader it knows of.
async fn try_once(
    raft: &Raft<TypeConfig>,
    network: &Network,
    call: &LeaderCall,
    deadline: tokio::time::Instant,
) -> Result<Option<ZoneReply>, LeadError> {
    let (id, leader) = match lead(raft, call.clone()).await {
        Ok((reply, _)) => return Ok(reply),
        Err(LeadError::NotLeader(Some(leader))) => leader,
        Err(e) => return Err(e),
    };
    let authority = meridian_api::auth::caller().authority;
    let (reply, index) =
        leader::forward(network, id, &leader.addr, call, &authority, time_left(deadline)).await?;
    let caught_up = raft
        .wait(Some(time_left(deadline)))
        .applied_index_at_least(Some(index), "a forwarded call")
        .await;
    // A read index is only worth anything once this node has applied that far; a write is
    // done whatever this node's pace (the caller may then not read it here at once).
    if caught_up.is_err() && matches!(call, LeaderCall::ReadIndex) {
        return Err(LeadError::Failed(format!(
            "this node has not applied up to the leader's commit index {index} within {WRITE_TIMEOUT:?}"
        )));
    }
    Ok(reply)
}

fn time_left(deadline: tokio::time::Instant) -> Duration {
    deadline.saturating_duration_since(tokio::time::Instant::now())
}

#[async_trait]
impl Resources for ZoneStore {
    async fn get(&self, key: &ResourceKey) -> Result<Stored, StoreError> {
        self.local.get(key).await
    }

    async fn list(&self, kind: Kind, mesh: Option<&str>, page: Page) -> Result<ListPage, StoreError> {
        self.local.list(kind, mesh, page).await
    }

    async fn put(&self, submission: Submission) -> Result<PutOutcome, StoreError> {
        self.write(Write::Put(Box::new(submission))).await?.into_put()
    }

    async fn delete(&self, key: &ResourceKey, options: DeleteOptions) -> Result<i64, StoreError> {
        self.write(Write::Delete(key.clone(), options))
            .await?
            .into_deleted()
    }

    async fn read_barrier(&self) -> Result<(), StoreError> {
        on_leader(&self.raft, &self.network, LeaderCall::ReadIndex)
            .await
            .map(drop)
            .map_err(|e| match e {
                LeadError::Denied(why) => StoreError::Forbidden(why),
                other => StoreError::Unavailable(other.to_string()),
            })
    }
}

#[async_trait]
impl ChangeLog for ZoneStore {
    async fn revision(&self) -> Result<i64, StoreError> {
        self.local.revision().await
    }

    async fn changes_since(&self, after: i64, limit: u32) -> Result<Vec<Change>, StoreError> {
        self.local.changes_since(after, limit).await
    }

    async fn snapshot(&self) -> Result<(i64, Vec<Stored>), StoreError> {
        self.local.snapshot().await
    }

    fn watch(&self) -> watch::Receiver<i64> {
        self.local.watch()
    }
}

#[async_trait]
impl SyncLog for ZoneStore {
    async fn sync_position(&self) -> Result<i64, StoreError> {
        self.local.sync_position().await
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
impl Secrets for ZoneStore {
    async fn secret(&self, name: &str, candidate: &str) -> Result<String, StoreError> {
        // Once replicated here, a secret is read locally: no leader needed.
        if let Some(secret) = self.local.stored_secret(name).await? {
            return Ok(secret);
        }
        let write = Write::Secret {
            name: name.to_owned(),
            candidate: Sensitive(candidate.to_owned()),
            replace: false,
        };
        self.write(write).await?.into_secret()
    }

    async fn put_secret(&self, name: &str, value: &str) -> Result<(), StoreError> {
        if self.local.stored_secret(name).await?.as_deref() == Some(value) {
            return Ok(());
        }
        let write = Write::Secret {
            name: name.to_owned(),
            candidate: Sensitive(value.to_owned()),
            replace: true,
        };
        self.write(write).await?.into_secret().map(drop)
    }

    async fn stored_secret(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.local.stored_secret(name).await
    }

    async fn secrets(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        Secrets::secrets(&self.local, prefix).await
    }
}

#[async_trait]
impl Statuses for ZoneStore {
    async fn put_status(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let write = Write::Status {
            name: name.to_owned(),
            value: value.to_owned(),
        };
        self.write(write).await?.into_status()
    }

    async fn statuses(&self, prefix: &str) -> Result<Vec<StatusEntry>, StoreError> {
        self.local.statuses(prefix).await
    }
}

#[async_trait]
impl Store for ZoneStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.local.ping().await
    }
}
