//! Raft between a zone's nodes over gRPC (`meridian.raft.v1.ZoneRaft`, JSON in each message),
//! and the server side of the `Forward` call that carries a call from a follower to the
//! leader (`leader.rs` says what those calls are and does them).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use meridian_proto::raft::RaftPayload;
use meridian_proto::raft_service::zone_raft_client::ZoneRaftClient;
use meridian_proto::raft_service::zone_raft_server::ZoneRaft;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
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

use meridian_api::auth::{Auth, may_change};
use tracing::{info, warn};

use super::leader::{Forward, Forwarded, LeadError, LeaderCall, lead};
use super::peer_tls::PeerTls;
use super::{NodeId, TypeConfig};

pub(super) fn encode(value: &impl Serialize) -> Result<RaftPayload, Status> {
    serde_json::to_vec(value)
        .map(|json| RaftPayload { json })
        .map_err(|e| Status::internal(format!("encoding: {e}")))
}

pub(super) fn decode<T: DeserializeOwned>(payload: &RaftPayload) -> Result<T, Status> {
    serde_json::from_slice(&payload.json).map_err(|e| Status::invalid_argument(format!("decoding: {e}")))
}

/// Why another node cannot be dialled at all (as opposed to not answering now).
#[derive(Clone, Debug, thiserror::Error)]
pub enum DialError {
    #[error("raft address {addr:?}: {reason}")]
    Address { addr: String, reason: String },
    #[error("peer TLS for node {target}: {reason}")]
    Tls { target: NodeId, reason: String },
}

/// A gRPC channel to node `target` at `addr`, connected on first use; over mutual TLS when
/// the zone has peer certificates.
pub fn channel(addr: &str, target: NodeId, tls: Option<&PeerTls>) -> Result<Channel, DialError> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| DialError::Address {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true);
    let endpoint = match tls {
        Some(tls) => endpoint
            .tls_config(tls.client(target))
            .map_err(|e| DialError::Tls {
                target,
                reason: e.to_string(),
            })?,
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
    pub fn client(&self, target: NodeId, addr: &str) -> Result<ZoneRaftClient<Channel>, DialError> {
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
    client: Result<ZoneRaftClient<Channel>, DialError>,
    health: Health,
}

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
            .map_err(|e| RPCError::Unreachable(Unreachable::new(e)))?;
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
        // A read index changes nothing and tells only a position in the log: the member
        // asking (checked above) has authorised the read itself.
        let allowed = if matches!(call, LeaderCall::ReadIndex) {
            Ok(())
        } else {
            match self.auth.resolve(&authority).await {
                Ok(caller) => call.change(|change| may_change(&caller, change)),
                Err(refusal) => Err(refusal),
            }
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
