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
pub mod leader;
#[allow(clippy::result_large_err)]
pub mod log;
pub mod network;
pub mod peer_tls;
#[allow(clippy::result_large_err)]
pub mod state;
pub mod store;
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

/// A started Raft node: what the rest of the zone-cp uses.
pub struct Node {
    pub raft: openraft::Raft<TypeConfig>,
    pub store: std::sync::Arc<store::ZoneStore>,
    log: LogStore,
    network: network::Network,
    /// Where this node serves Raft (a zone of one started without `--raft-addr` does not).
    raft_addr: Option<std::net::SocketAddr>,
}

/// How a node joins its zone's cluster.
pub struct NodeConfig {
    pub zone: String,
    pub node_id: NodeId,
    /// Where to serve Raft; none for a zone of one node that is not to grow.
    pub raft_addr: Option<std::net::SocketAddr>,
    /// Peer TLS (`--raft-tls-*`): required to serve Raft on anything but loopback.
    pub tls: Option<peer_tls::TlsFiles>,
    /// Every node of the zone, this one included.
    pub members: std::collections::BTreeMap<NodeId, String>,
    /// Wait to be added to an existing cluster instead of forming one.
    pub join: bool,
    /// Addresses to dial other nodes at, where their member addresses do not work from here.
    pub dial: std::collections::BTreeMap<NodeId, String>,
    pub heartbeat: std::time::Duration,
    /// The shortest election timeout; the longest is twice this.
    pub election_timeout: std::time::Duration,
    /// Log entries between snapshots.
    pub snapshot_every: u64,
}

impl Node {
    /// Opens the node's log and state in `data_dir`, serves Raft on `raft_addr`, and forms the
    /// cluster from `members` if this node has never been part of one.
    pub async fn start(
        config: NodeConfig,
        local: meridian_store::SqlStore,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let NodeConfig {
            zone,
            node_id,
            raft_addr,
            tls,
            members,
            join,
            dial,
            heartbeat,
            election_timeout,
            snapshot_every,
        } = config;
        anyhow::ensure!(
            election_timeout > heartbeat,
            "--raft-election-timeout ({election_timeout:?}) must exceed --raft-heartbeat ({heartbeat:?})"
        );
        anyhow::ensure!(
            members.contains_key(&node_id),
            "--peers must list this node (--node-id {node_id})"
        );
        let tls = tls
            .map(|files| peer_tls::PeerTls::load(&zone, node_id, &files))
            .transpose()
            .context("the Raft peer TLS files (--raft-tls-cert, --raft-tls-key, --raft-tls-ca)")?;
        // Not even on loopback: every local user reaches that, and a Raft peer can write
        // anything (a signing key, say) into the zone.
        if let Some(addr) = raft_addr
            && tls.is_none()
        {
            anyhow::bail!(
                "refusing to serve Raft on {addr} without peer TLS: whoever reaches it could write to the zone. Make certificates with `zone-cp generate peer-certs --zone {zone} --nodes 1,2,3 --dir DIR` and give each node --raft-tls-cert, --raft-tls-key and --raft-tls-ca"
            );
        }
        let network = network::Network::new(std::sync::Arc::new(dial), tls.clone());
        let log = LogStore::open(data_dir).await.context("opening raft.db")?;
        let state = StateMachine::new(local.clone(), log.clone())
            .await
            .context("reading the zone's applied Raft position")?;
        let raft_config = openraft::Config {
            cluster_name: format!("meridian-zone-{zone}"),
            heartbeat_interval: heartbeat.as_millis() as u64,
            election_timeout_min: election_timeout.as_millis() as u64,
            // A narrow range: openraft waits out the old leader's lease (this maximum) before
            // the election timeout, and twice it again after losing a vote to a longer log, so
            // the maximum sets most of the time to a new leader.
            election_timeout_max: 3 * election_timeout.as_millis() as u64 / 2,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
            max_in_snapshot_log_to_keep: snapshot_every / 5,
            ..Default::default()
        }
        .validate()
        .context("the Raft settings")?;
        let raft = openraft::Raft::new(
            node_id,
            std::sync::Arc::new(raft_config),
            network.clone(),
            log.clone(),
            state,
        )
        .await
        .context("starting Raft")?;
        let known_members = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .count()
            .max(members.len());
        if raft_addr.is_none() && (join || known_members > 1) {
            anyhow::bail!(
                "this node is one of several in zone {zone}: give it --raft-addr (where the other nodes reach it)"
            );
        }
        if join {
            tracing::info!(
                node_id,
                "waiting to be added to the zone's cluster (meshctl zone members add)"
            );
        } else if !raft.is_initialized().await.context("reading Raft's state")? {
            let nodes: std::collections::BTreeMap<NodeId, openraft::BasicNode> = members
                .iter()
                .map(|(id, addr)| (*id, openraft::BasicNode::new(addr.clone())))
                .collect();
            tracing::info!(members = ?members, "forming the zone's Raft cluster");
            // Every node forms the same membership; whichever call comes second is refused
            // as already initialized, which is fine.
            if let Err(e) = raft.initialize(nodes).await {
                tracing::info!(error = %e, "Raft was already initialized");
            }
        }
        let store = store::ZoneStore::new(raft.clone(), local, network.clone());
        Ok(Self {
            raft,
            store,
            log,
            network,
            raft_addr,
        })
    }

    /// Serves Raft to the zone's other nodes until `stop` (nothing, for a zone of one started
    /// without `--raft-addr`). Forwarded calls are done only if `auth` allows them to the
    /// authority they carry.
    pub async fn serve(
        &self,
        auth: meridian_api::auth::Auth,
        cap: usize,
        refused: meridian_api::serve::Refused,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>> {
        let Some(addr) = self.raft_addr else {
            tracing::info!("a zone of one node: no Raft port (give --raft-addr to let it grow)");
            return Ok(tokio::spawn(async move {
                let _ = stop.changed().await;
                Ok(())
            }));
        };
        let service = network::RaftService {
            raft: self.raft.clone(),
            tls: self.network.tls.clone(),
            auth,
        };
        serve(addr, service, self.network.tls.as_deref(), cap, refused, stop).await
    }

    /// Adds node `id` at Raft address `address` as a voting member (through the leader).
    pub async fn add_member(&self, id: NodeId, address: String) -> Result<(), leader::LeadError> {
        if self.raft_addr.is_none() {
            return Err(leader::LeadError::Refused(
                "this zone-cp serves no Raft port: restart it with --raft-addr (and peer TLS) before adding members".into(),
            ));
        }
        store::on_leader(
            &self.raft,
            &self.network,
            leader::LeaderCall::AddMember { id, address },
        )
        .await
        .map(drop)
    }

    /// Removes node `id` from the cluster (through the leader).
    pub async fn remove_member(&self, id: NodeId) -> Result<(), leader::LeadError> {
        store::on_leader(&self.raft, &self.network, leader::LeaderCall::RemoveMember { id })
            .await
            .map(drop)
    }

    /// Becomes true while this node leads the zone.
    pub fn leadership(&self) -> tokio::sync::watch::Receiver<bool> {
        let mut metrics = self.raft.metrics();
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                let leading = {
                    let m = metrics.borrow_and_update();
                    m.current_leader == Some(m.id) && m.state == openraft::ServerState::Leader
                };
                tx.send_if_modified(|l| std::mem::replace(l, leading) != leading);
                if metrics.changed().await.is_err() || tx.is_closed() {
                    return;
                }
            }
        });
        rx
    }

    /// Raft's state as Prometheus gauges (`meridian_raft_*`), kept up to date from openraft's
    /// metrics.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::gauge::Gauge;
        let gauges: [(&str, &str, Gauge); 6] = [
            (
                "raft_leader",
                "1 while this node leads the zone",
                Gauge::default(),
            ),
            ("raft_term", "The current Raft term", Gauge::default()),
            (
                "raft_leader_id",
                "The node this node follows (0: none known)",
                Gauge::default(),
            ),
            (
                "raft_applied_index",
                "The last log index applied to the state",
                Gauge::default(),
            ),
            (
                "raft_last_log_index",
                "The last log index this node holds",
                Gauge::default(),
            ),
            ("raft_voters", "Voting members of the cluster", Gauge::default()),
        ];
        let leader_changes = Counter::<u64>::default();
        for (name, help, gauge) in &gauges {
            registry.register(*name, *help, gauge.clone());
        }
        registry.register(
            "raft_leader_changes",
            "Times this node saw the leader change",
            leader_changes.clone(),
        );
        let mut metrics = self.raft.metrics();
        tokio::spawn(async move {
            let mut leader = None;
            loop {
                {
                    let m = metrics.borrow_and_update();
                    let values = [
                        i64::from(m.state == openraft::ServerState::Leader),
                        m.current_term as i64,
                        m.current_leader.unwrap_or(0) as i64,
                        m.last_applied.map_or(0, |l| l.index as i64),
                        m.last_log_index.unwrap_or(0) as i64,
                        m.membership_config.membership().voter_ids().count() as i64,
                    ];
                    for ((_, _, gauge), value) in gauges.iter().zip(values) {
                        gauge.set(value);
                    }
                    if m.current_leader != leader {
                        leader = m.current_leader;
                        leader_changes.inc();
                        match leader {
                            Some(node) if node == m.id => {
                                tracing::info!(term = m.current_term, "this node is the raft leader")
                            }
                            Some(node) => {
                                tracing::info!(leader = node, term = m.current_term, "raft leader elected")
                            }
                            None => tracing::warn!(
                                term = m.current_term,
                                "no raft leader: an election is under way"
                            ),
                        }
                    }
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// `GET /raft`: this node's view of the cluster.
    pub async fn status(&self) -> serde_json::Value {
        let m = self.raft.metrics().borrow().clone();
        let role = match m.state {
            openraft::ServerState::Leader => "leader",
            openraft::ServerState::Follower => "follower",
            openraft::ServerState::Candidate => "candidate",
            openraft::ServerState::Learner => "learner",
            openraft::ServerState::Shutdown => "shutdown",
        };
        let committed: Option<Option<LogId>> = self.log.meta("committed").await.ok().flatten();
        let members: Vec<serde_json::Value> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| {
                serde_json::json!({
                    "id": id,
                    "address": node.addr,
                    "voter": m.membership_config.membership().voter_ids().any(|v| v == *id),
                })
            })
            .collect();
        serde_json::json!({
            "node_id": m.id,
            "role": role,
            "term": m.current_term,
            "leader": m.current_leader,
            "commit_index": committed.flatten().map(|l| l.index),
            "applied_index": m.last_applied.map(|l| l.index),
            "last_log_index": m.last_log_index,
            "snapshot_index": m.snapshot.map(|l| l.index),
            "members": members,
        })
    }
}

/// Serves the zone's Raft RPCs on `addr` (over mutual TLS when given) until `stop`.
async fn serve(
    addr: std::net::SocketAddr,
    service: network::RaftService,
    tls: Option<&peer_tls::PeerTls>,
    cap: usize,
    refused: meridian_api::serve::Refused,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding Raft to {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, tls = tls.is_some(), "Raft serving");
    let service = meridian_proto::raft_service::zone_raft_server::ZoneRaftServer::new(service)
        .max_decoding_message_size(256 << 20);
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls.server()).context("the Raft peer TLS")?;
    }
    Ok(tokio::spawn(
        server.add_service(service).serve_with_incoming_shutdown(
            meridian_api::serve::grpc_incoming(listener, "raft", cap, stop.clone(), refused),
            async move {
                let _ = stop.changed().await;
            },
        ),
    ))
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
