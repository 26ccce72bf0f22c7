//! Raft between a zone's nodes over gRPC (`meridian.raft.v1.ZoneRaft`, JSON in each message),
//! and the `Forward` call that carries a write from a follower to the leader.

use std::time::Duration;

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

use super::{NodeId, TypeConfig, ZoneReply, ZoneRequest};

fn encode(value: &impl Serialize) -> Result<RaftPayload, Status> {
    serde_json::to_vec(value)
        .map(|json| RaftPayload { json })
        .map_err(|e| Status::internal(format!("encoding: {e}")))
}

fn decode<T: DeserializeOwned>(payload: &RaftPayload) -> Result<T, Status> {
    serde_json::from_slice(&payload.json).map_err(|e| Status::invalid_argument(format!("decoding: {e}")))
}

/// A gRPC channel to a node, connected on first use.
pub fn channel(addr: &str) -> Result<Channel, String> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map(|e| {
            e.connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
                .connect_lazy()
        })
        .map_err(|e| format!("raft address {addr:?}: {e}"))
}

/// Makes a [`Peer`] per target node.
#[derive(Clone, Default)]
pub struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            client: channel(&node.addr).map(ZoneRaftClient::new),
        }
    }
}

/// The link to one other node.
pub struct Peer {
    target: NodeId,
    client: Result<ZoneRaftClient<Channel>, String>,
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
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                RPCError::Unreachable(Unreachable::new(&status))
            }
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

/// A forwarded write's answer: the reply and the log index it was applied at (so the
/// follower can wait until it has applied it too), or why the leader could not take it.
pub type Forwarded = Result<(ZoneReply, u64), String>;

/// Sends a write to the leader at `addr`.
pub async fn forward(
    addr: &str,
    request: &ZoneRequest,
    timeout: Duration,
) -> Result<(ZoneReply, u64), String> {
    let mut client = ZoneRaftClient::new(channel(addr)?);
    let mut call = Request::new(encode(request).map_err(|e| e.to_string())?);
    call.set_timeout(timeout);
    let reply = client
        .forward(call)
        .await
        .map_err(|e| format!("forwarding to the leader at {addr}: {}", e.message()))?;
    let forwarded: Forwarded = decode(reply.get_ref()).map_err(|e| e.to_string())?;
    forwarded
}

/// The server side: hands each call to the local Raft.
pub struct RaftService {
    pub raft: Raft<TypeConfig>,
}

#[tonic::async_trait]
impl ZoneRaft for RaftService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request.get_ref())?;
        encode(&self.raft.append_entries(rpc).await).map(Response::new)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request.get_ref())?;
        encode(&self.raft.vote(rpc).await).map(Response::new)
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request.get_ref())?;
        encode(&self.raft.install_snapshot(rpc).await).map(Response::new)
    }

    async fn forward(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let write: ZoneRequest = decode(request.get_ref())?;
        let forwarded: Forwarded = match self.raft.client_write(write).await {
            Ok(done) => Ok((done.data, done.log_id.index)),
            Err(e) => Err(e.to_string()),
        };
        encode(&forwarded).map(Response::new)
    }
}
