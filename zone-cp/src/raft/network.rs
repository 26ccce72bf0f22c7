//! Raft between a zone's nodes over gRPC (`meridian.raft.v1.ZoneRaft`, JSON in each message),
//! and the `Forward` call that carries a write from a follower to the leader.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use meridian_proto::raft::RaftPayload;
use meridian_proto::raft_service::zone_raft_client::ZoneRaftClient;
use meridian_proto::raft_service::zone_raft_server::ZoneRaft;
use openraft::error::{
    CheckIsLeaderError, ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError,
    RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use std::sync::Arc;

use meridian_api::auth::{Auth, Authority, Change, may_change};
use meridian_store::Write;
use tracing::{info, warn};

use super::peer_tls::PeerTls;
use super::{NodeId, TypeConfig, ZoneReply, ZoneRequest};

fn encode(value: &impl Serialize) -> Result<RaftPayload, Status> {
    serde_json::to_vec(value)
        .map(|json| RaftPayload { json })
        .map_err(|e| Status::internal(format!("encoding: {e}")))
}

fn decode<T: DeserializeOwned>(payload: &RaftPayload) -> Result<T, Status> {
    serde_json::from_slice(&payload.json).map_err(|e| Status::invalid_argument(format!("decoding: {e}")))
}

/// A gRPC channel to node `target` at `addr`, connected on first use; over mutual TLS when
/// the zone has peer certificates.
pub fn channel(addr: &str, target: NodeId, tls: Option<&PeerTls>) -> Result<Channel, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("raft address {addr:?}: {e}"))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true);
    let endpoint = match tls {
        Some(tls) => endpoint
            .tls_config(tls.client(target))
            .map_err(|e| format!("peer TLS for node {target}: {e}"))?,
        None => endpoint,
    };
    Ok(endpoint.connect_lazy())
}

/// How this node dials others whose member address does not work from here (NAT, proxies):
/// node id to `HOST:PORT`. Empty: every member's own address.
pub type Routes = std::sync::Arc<std::collections::BTreeMap<NodeId, String>>;

/// The address to dial for node `id`, whose member address is `addr`.
pub fn route<'a>(routes: &'a Routes, id: NodeId, addr: &'a str) -> &'a str {
    routes.get(&id).map_or(addr, String::as_str)
}

/// How this node reaches the others: where to dial them, and the peer TLS to do it with.
#[derive(Clone, Default)]
pub struct Network {
    pub routes: Routes,
    pub tls: Option<Arc<PeerTls>>,
    /// One channel (one HTTP/2 connection, one TLS handshake) per node and address, shared by
    /// replication, votes and forwarded calls: a handshake inside a 20 ms heartbeat budget
    /// would time out.
    channels: Arc<std::sync::Mutex<std::collections::HashMap<(NodeId, String), Channel>>>,
    health: Health,
}

/// Whether each peer answers: one line when a peer is lost, one when it is back. (openraft's
/// own line per failed call is left out of the default log filter.)
#[derive(Clone, Default)]
struct Health(Arc<std::sync::Mutex<HashMap<NodeId, PeerHealth>>>);

#[derive(Default)]
struct PeerHealth {
    failing_since: Option<Instant>,
    reported_lost: bool,
}

/// How long a peer fails every call before it counts as lost: a slow heartbeat on a busy
/// machine is not news.
const LOST_AFTER: Duration = Duration::from_secs(2);

impl Health {
    fn record(&self, peer: NodeId, failure: Option<&dyn std::fmt::Display>) {
        let mut peers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let h = peers.entry(peer).or_default();
        match failure {
            None => {
                if h.reported_lost {
                    info!(peer, "raft peer is back");
                }
                *h = PeerHealth::default();
            }
            Some(why) => {
                let since = *h.failing_since.get_or_insert_with(Instant::now);
                if !h.reported_lost && since.elapsed() >= LOST_AFTER {
                    h.reported_lost = true;
                    warn!(peer, error = %why, "raft peer lost: no answer for {LOST_AFTER:?}");
                }
            }
        }
    }
}

impl Network {
    pub fn new(routes: Routes, tls: Option<Arc<PeerTls>>) -> Self {
        Self {
            routes,
            tls,
            channels: Arc::default(),
            health: Health::default(),
        }
    }

    /// A client for node `target`, whose member address is `addr`.
    pub fn client(&self, target: NodeId, addr: &str) -> Result<ZoneRaftClient<Channel>, String> {
        let addr = route(&self.routes, target, addr).to_owned();
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let channel = match channels.get(&(target, addr.clone())) {
            Some(channel) => channel.clone(),
            None => {
                let channel = channel(&addr, target, self.tls.as_deref())?;
                channels.insert((target, addr), channel.clone());
                channel
            }
        };
        Ok(ZoneRaftClient::new(channel))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            client: self.client(target, &node.addr),
            health: self.health.clone(),
        }
    }
}

/// The link to one other node.
pub struct Peer {
    target: NodeId,
    client: Result<ZoneRaftClient<Channel>, String>,
    health: Health,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failed(String);

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, E>>;

impl Peer {
    async fn call<Req, Resp, E>(
        &mut self,
        route: Route,
        request: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result = self.try_call(route, request, option).await;
        match &result {
            Err(RPCError::Unreachable(e)) => self.health.record(self.target, Some(e)),
            Err(RPCError::Network(e)) => self.health.record(self.target, Some(e)),
            // An answer, even a refusal, means the peer is there.
            _ => self.health.record(self.target, None),
        }
        result
    }

    async fn try_call<Req, Resp, E>(
        &mut self,
        route: Route,
        request: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = self
            .client
            .as_mut()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&Failed(e.clone()))))?;
        let payload = encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = Request::new(payload);
        request.set_timeout(option.hard_ttl());
        let reply = match route {
            Route::AppendEntries => client.append_entries(request).await,
            Route::Vote => client.vote(request).await,
            Route::InstallSnapshot => client.install_snapshot(request).await,
        }
        .map_err(|status| match status.code() {
            // No connection: openraft backs off (500 ms) before trying this node again.
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
            // A slow answer (a busy machine, a long fsync) is tried again at the next
            // heartbeat. Backing off here would starve a live follower for longer than the
            // election timeout, and it would call an election.
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let result: Result<Resp, E> =
            decode(reply.get_ref()).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum Route {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        self.call(Route::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.call(Route::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.call(Route::Vote, &rpc, &option).await
    }
}

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
    fn change<R>(&self, decide: impl FnOnce(Change<'_>) -> R) -> R {
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
    let unreachable = |why: String| {
        LeadError::Unreachable(format!(
            "forwarding to the leader (node {leader} at {}): {why}",
            route(&network.routes, leader, addr)
        ))
    };
    let mut client = network.client(leader, addr).map_err(unreachable)?;
    let forward = Forward {
        authority: authority.clone(),
        call: call.clone(),
    };
    let mut request = Request::new(encode(&forward).map_err(|e| LeadError::Failed(e.message().to_owned()))?);
    request.set_timeout(timeout);
    let reply = client
        .forward(request)
        .await
        .map_err(|e| unreachable(e.message().to_owned()))?;
    decode::<Forwarded>(reply.get_ref()).map_err(|e| unreachable(e.message().to_owned()))?
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

/// The server side: hands each call to the local Raft, once the caller has shown it is the
/// zone member it speaks for.
pub struct RaftService {
    pub raft: Raft<TypeConfig>,
    /// With peer TLS, every caller's certificate has been verified against the zone's CA in
    /// the handshake; each call also checks which node it names.
    pub tls: Option<Arc<PeerTls>>,
    /// Who may do what: a forwarded call is checked against the authority it carries.
    pub auth: Auth,
}

impl RaftService {
    /// Refuses a replication or vote RPC whose sender (the leader, or the candidate) is not
    /// the node the caller's certificate names: a member cannot speak for another.
    fn check_sender<T>(&self, request: &Request<T>, sender: NodeId) -> Result<(), Status> {
        let Some(tls) = &self.tls else { return Ok(()) };
        let certs = request.peer_certs().unwrap_or_default();
        if tls.names(&certs, sender) {
            return Ok(());
        }
        warn!(sender, peer = ?request.remote_addr(), "raft call refused: the certificate does not name its sender");
        Err(Status::permission_denied(format!(
            "the caller's certificate is not node {sender}'s"
        )))
    }

    /// Refuses a forwarded call from a caller that is not a member of the zone.
    fn check_member<T>(&self, request: &Request<T>) -> Result<NodeId, Status> {
        let Some(tls) = &self.tls else { return Ok(0) };
        let certs = request.peer_certs().unwrap_or_default();
        let members: Vec<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        match members.into_iter().find(|id| tls.names(&certs, *id)) {
            Some(id) => Ok(id),
            None => {
                warn!(peer = ?request.remote_addr(), "forwarded call refused: the caller is not a member of the zone");
                Err(Status::permission_denied(
                    "the caller is not a member of this zone",
                ))
            }
        }
    }
}

#[tonic::async_trait]
impl ZoneRaft for RaftService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(request.get_ref())?;
        self.check_sender(&request, rpc.vote.leader_id.node_id)?;
        encode(&self.raft.append_entries(rpc).await).map(Response::new)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<NodeId> = decode(request.get_ref())?;
        let candidate = rpc.vote.leader_id.node_id;
        self.check_sender(&request, candidate)?;
        // A node that was never a voter here (or was removed) cannot call elections and win
        // the zone, whatever certificate it holds. A node not yet in any cluster (joining) has
        // nobody to compare with.
        let voters: Vec<NodeId> = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.membership_config.membership().voter_ids().collect()
        };
        if !voters.is_empty() && !voters.contains(&candidate) {
            warn!(
                candidate,
                "vote refused: the candidate is not a voter of this zone"
            );
            return Err(Status::permission_denied(format!(
                "node {candidate} is not a voter of this zone"
            )));
        }
        encode(&self.raft.vote(rpc).await).map(Response::new)
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(request.get_ref())?;
        self.check_sender(&request, rpc.vote.leader_id.node_id)?;
        encode(&self.raft.install_snapshot(rpc).await).map(Response::new)
    }

    async fn forward(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let from = self.check_member(&request)?;
        let Forward { authority, call } = decode(request.get_ref())?;
        let allowed = match self.auth.resolve(&authority).await {
            // A read index changes nothing and tells only a position in the log.
            Ok(_) if matches!(call, LeaderCall::ReadIndex) => Ok(()),
            Ok(caller) => call.change(|change| may_change(&caller, change)),
            Err(refusal) => Err(refusal),
        };
        let forwarded: Forwarded = match allowed {
            Ok(()) => lead(&self.raft, call).await,
            Err(refusal) => {
                warn!(from, authority = ?authority, reason = %refusal, "forwarded call refused");
                Err(LeadError::Denied(refusal.to_string()))
            }
        };
        encode(&forwarded).map(Response::new)
    }
}
