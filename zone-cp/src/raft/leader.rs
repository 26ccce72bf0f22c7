//! What only the leader can do (writes, read indexes, membership changes): the calls, how a
//! follower forwards one, and how the leader does it.

use std::time::Duration;

use meridian_api::auth::{Authority, Change};
use meridian_store::Write;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use serde::Serialize;
use tonic::Request;

use super::network::{Network, decode, encode, route};
use super::{NodeId, TypeConfig, ZoneReply, ZoneRequest};

/// What only the leader can do, sent to it by a follower.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LeaderCall {
    Write(ZoneRequest),
    /// The leader's commit index, once a majority has confirmed it still leads: a read on any
    /// node that has applied that far sees every write acknowledged before the call.
    ReadIndex,
    AddMember {
        id: NodeId,
        address: String,
    },
    RemoveMember {
        id: NodeId,
    },
}

impl LeaderCall {
    /// What the call changes, for deciding who may make it.
    pub(super) fn change<R>(&self, decide: impl FnOnce(Change<'_>) -> R) -> R {
        let write = match self {
            LeaderCall::Write(request) => request.to_write().ok(),
            _ => None,
        };
        match &write {
            Some(Write::Put(submission)) => decide(Change::Put(&submission.resource)),
            Some(Write::Delete(key, _)) => decide(Change::Delete(key)),
            _ => decide(Change::Other),
        }
    }
}

/// A call forwarded to the leader, with the authority of whoever asked the follower: the
/// leader checks it again, so forwarding is no way around the REST API's rules.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Forward {
    pub authority: Authority,
    pub call: LeaderCall,
}

/// The leader's answer: the write's reply (none for membership changes) and the log index
/// it was applied at, so the follower can wait until it has applied it too; or why not.
pub type Forwarded = Result<(Option<ZoneReply>, u64), LeadError>;

/// Sends `call` to the leader, node `leader` at member address `addr`, on behalf of
/// `authority`.
pub async fn forward(
    network: &Network,
    leader: NodeId,
    addr: &str,
    call: &LeaderCall,
    authority: &Authority,
    timeout: Duration,
) -> Forwarded {
    let unreachable = |why: &dyn std::fmt::Display| {
        LeadError::Unreachable(format!(
            "forwarding to the leader (node {leader} at {}): {why}",
            route(&network.routes, leader, addr)
        ))
    };
    let mut client = network.client(leader, addr).map_err(|e| unreachable(&e))?;
    let forward = Forward {
        authority: authority.clone(),
        call: call.clone(),
    };
    let mut request = Request::new(encode(&forward).map_err(|e| LeadError::Failed(e.message().to_owned()))?);
    request.set_timeout(timeout);
    let reply = client
        .forward(request)
        .await
        .map_err(|e| unreachable(&e.message()))?;
    decode::<Forwarded>(reply.get_ref()).map_err(|e| unreachable(&e.message()))?
}

fn voters(raft: &Raft<TypeConfig>) -> std::collections::BTreeSet<NodeId> {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

/// Does `call` on this node, which must lead.
///
/// openraft answers a call once this node has applied its entry (or dropped it for a new
/// leader's log). A leader that loses an election after proposing a membership without
/// itself never hears of that entry again, so the call ends with [`LeadError::SteppedDown`]
/// once this node neither leads nor votes.
pub async fn lead(raft: &Raft<TypeConfig>, call: LeaderCall) -> Result<(Option<ZoneReply>, u64), LeadError> {
    let mut metrics = raft.metrics();
    let leading = {
        let m = metrics.borrow_and_update();
        m.current_leader == Some(m.id)
    };
    if !leading {
        // openraft answers at once with the leader to ask.
        return lead_inner(raft, call).await;
    }
    let outside = async {
        let left = metrics
            .wait_for(|m| {
                m.current_leader != Some(m.id)
                    && !m.membership_config.membership().voter_ids().any(|v| v == m.id)
            })
            .await;
        match left {
            Ok(m) => LeadError::SteppedDown(m.current_leader.map(|id| format!("node {id}"))),
            Err(_) => LeadError::Failed("this node's Raft has stopped".into()),
        }
    };
    tokio::select! {
        // An answer that is ready wins over the step-down that follows it.
        biased;
        done = lead_inner(raft, call) => done,
        why = outside => Err(why),
    }
}

async fn lead_inner(
    raft: &Raft<TypeConfig>,
    call: LeaderCall,
) -> Result<(Option<ZoneReply>, u64), LeadError> {
    match call {
        LeaderCall::Write(write) => {
            let done = raft.client_write(write).await?;
            Ok((Some(done.data), done.log_id.index))
        }
        LeaderCall::ReadIndex => match raft.ensure_linearizable().await {
            Ok(read) => Ok((None, read.map_or(0, |id| id.index))),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(to))) => {
                Err(LeadError::NotLeader(to.leader_id.zip(to.leader_node)))
            }
            // Not confirmed by a majority (yet): as for a write, the caller tries again.
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(LeadError::NotLeader(None))
            }
            Err(other) => Err(LeadError::Failed(other.to_string())),
        },
        LeaderCall::AddMember { id, address } => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                match raft.add_learner(id, BasicNode::new(address.clone()), true).await {
                    Ok(_) => break,
                    Err(e) if in_progress(&e) && tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            change_voters(raft, |voters| {
                voters.insert(id);
                Ok(())
            })
            .await
        }
        LeaderCall::RemoveMember { id } => {
            change_voters(raft, |voters| {
                if !voters.remove(&id) {
                    return Err(LeadError::NotAMember(id));
                }
                if voters.is_empty() {
                    return Err(LeadError::Refused("the last member cannot be removed".into()));
                }
                Ok(())
            })
            .await
        }
    }
}

/// A membership change refused because another (or the cluster's first) is not committed yet.
fn in_progress(e: &RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> bool {
    matches!(
        e,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            openraft::error::ChangeMembershipError::InProgress(_)
        ))
    )
}

/// Changes the voters as `change` says, once any change still in progress has finished.
async fn change_voters(
    raft: &Raft<TypeConfig>,
    change: impl Fn(&mut std::collections::BTreeSet<NodeId>) -> Result<(), LeadError>,
) -> Result<(Option<ZoneReply>, u64), LeadError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut wanted = voters(raft);
        change(&mut wanted)?;
        match raft.change_membership(wanted, false).await {
            Ok(done) => return Ok((None, done.log_id.index)),
            Err(e) if in_progress(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Why the leader did not do a call. Sent back to a follower that forwarded the call.
#[derive(Debug, thiserror::Error, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LeadError {
    /// This node does not lead; the leader, if one is known. Nothing was done.
    #[error("the zone has no Raft leader: is a majority of its nodes up?")]
    NotLeader(Option<(NodeId, BasicNode)>),
    /// The node led when the call started and no longer does (the new leader, if known):
    /// the call may or may not have taken effect.
    #[error("the leader stepped down during the call{}", .0.as_ref().map(|l| format!("; {l} leads now")).unwrap_or_default())]
    SteppedDown(Option<String>),
    /// The leader could not be reached, or its answer was lost: the call may have taken effect.
    #[error("{0}")]
    Unreachable(String),
    /// Removing a node that is not a voter.
    #[error("node {0} is not a voting member")]
    NotAMember(NodeId),
    /// Refused for good: asking again gets the same answer.
    #[error("{0}")]
    Refused(String),
    /// The leader does not let whoever asked do this.
    #[error("refused by the zone's leader: {0}")]
    Denied(String),
    #[error("{0}")]
    Failed(String),
}

impl From<RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>> for LeadError {
    fn from(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(to)) => {
                LeadError::NotLeader(to.leader_id.zip(to.leader_node))
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                LeadError::Refused(e.to_string())
            }
            other => LeadError::Failed(other.to_string()),
        }
    }
}
