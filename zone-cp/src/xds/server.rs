//! The ADS protocol server: state-of-the-world and delta, over one gRPC service.
//!
//! ```text
//!   Envoy ──request──> stream task ──reads──> SnapshotCache (per proxy, watch channel)
//!         <─response──     │  ACK/NACK by nonce, status ──> SnapshotCache
//! ```
//!
//! Each stream is a task that selects on the next request and on a change of its proxy's
//! snapshot. Only resources whose content hash changed are sent (delta), and a change is pushed
//! clusters, endpoints, listeners, routes first, removals last (make before break).

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use super::cache::{CLUSTER, ENDPOINT, LISTENER, Nack, PUSH_ORDER, ProxyId, Snapshot, SnapshotCache};
use super::metrics::XdsMetrics;
use meridian_api::tokens::TokenKind;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Clone)]
pub struct AdsServer {
    cache: SnapshotCache,
    metrics: Arc<XdsMetrics>,
    /// Checks each stream's dataplane token against the Dataplane in the store; without it
    /// every stream is taken.
    auth: Option<(meridian_api::auth::Auth, Arc<dyn meridian_store::Store>)>,
    /// Streams reading their first request at once. Until a stream is admitted nothing is
    /// kept for it, and what it sends beyond HTTP/2's window waits unread: so at most this
    /// many first requests (up to the message limit each) are in memory at a time.
    admitting: Arc<tokio::sync::Semaphore>,
    /// Turns true when the process stops: every stream ends then, so the server drains at
    /// once and the proxies reconnect (to another node of the zone, if any).
    stop: tokio::sync::watch::Receiver<bool>,
}

/// How many streams may read their first request at once.
const ADMITTING: usize = 16;
/// How long a new stream may take to send its first request.
const FIRST_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl AdsServer {
    pub fn new(
        cache: SnapshotCache,
        metrics: Arc<XdsMetrics>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            cache,
            metrics,
            auth: None,
            admitting: Arc::new(tokio::sync::Semaphore::new(ADMITTING)),
            stop,
        }
    }

    /// A stream's first request, and the proxy it names once admitted. A stream without a
    /// valid proxy token (unless from the trusted host) is refused before it may wait for a
    /// turn, so strangers cannot hold the turns.
    async fn first<T: prost::Message + Default + 'static>(
        &self,
        metadata: tonic::metadata::MetadataMap,
        extensions: tonic::Extensions,
        inbound: &mut Streaming<T>,
        node: impl Fn(&T) -> Option<&Node>,
    ) -> Result<(T, ProxyId), Status> {
        let request = Request::from_parts(metadata, extensions, ());
        if let Some((auth, _)) = &self.auth {
            let checked = match token_of(&request) {
                Some(token) => auth
                    .tokens
                    .verify(token, &[TokenKind::Dataplane, TokenKind::ZoneIngress])
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                None if is_local(&request) && auth.trust_localhost => Ok(()),
                None => Err("no dataplane token: start meridian-dp with --dataplane-token-file (meshctl generate dataplane-token)".into()),
            };
            if let Err(why) = checked {
                warn!(peer = ?request.remote_addr(), reason = %why, "xDS stream refused");
                self.metrics.refused.inc();
                return Err(Status::unauthenticated(why));
            }
        }
        let _turn = tokio::time::timeout(FIRST_REQUEST_TIMEOUT, self.admitting.acquire())
            .await
            .map_err(|_| Status::unavailable("too many streams starting: retry"))?
            .map_err(|_| Status::unavailable("shutting down"))?;
        let first = tokio::time::timeout(FIRST_REQUEST_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no first request in time"))??
            .ok_or_else(|| Status::cancelled("stream closed"))?;
        let proxy = self.admit(&request, node(&first)).await?;
        Ok((first, proxy))
    }

    /// Refuses streams whose dataplane token does not match the Dataplane they claim.
    pub fn with_auth(self, auth: meridian_api::auth::Auth, store: Arc<dyn meridian_store::Store>) -> Self {
        Self {
            auth: Some((auth, store)),
            ..self
        }
    }

    /// The proxy a stream's first request names, once its token (if checked) says it may.
    /// Nothing is kept for the proxy before then.
    async fn admit<T>(&self, request: &Request<T>, node: Option<&Node>) -> Result<ProxyId, Status> {
        let proxy = proxy_of(node)?;
        if let Some((auth, store)) = &self.auth {
            let key = meridian_api::auth::Auth::proxy_key(&proxy.mesh, &proxy.name);
            let registered = match store.get(&key).await {
                Ok(stored) => Some(stored.resource),
                Err(meridian_store::StoreError::NotFound(_)) => None,
                // Without the Dataplane its token's tags cannot be checked: refuse.
                Err(e) => return Err(Status::unavailable(format!("reading Dataplane {}: {e}", proxy))),
            };
            let checked = auth
                .check_proxy(token_of(request), &key, is_local(request), registered.as_ref())
                .await;
            if let Err(why) = checked {
                warn!(proxy = %proxy, reason = %why, "xDS stream refused");
                self.metrics.refused.inc();
                return Err(Status::unauthenticated(format!("proxy {proxy}: {why}")));
            }
        }
        Ok(proxy)
    }
}

/// The bearer token a stream shows, if any.
fn token_of<T>(request: &Request<T>) -> Option<&str> {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v))
}

fn is_local<T>(request: &Request<T>) -> bool {
    request
        .remote_addr()
        .is_some_and(|a| a.ip().to_canonical().is_loopback())
}

fn proxy_of(node: Option<&Node>) -> Result<ProxyId, Status> {
    let id = node.map(|n| n.id.as_str()).unwrap_or("");
    ProxyId::from_node_id(id).ok_or_else(|| {
        // Quoted (control characters escaped) and cut short: an id is the client's to choose.
        let shown: String = id.chars().take(64).collect();
        let more = if id.chars().count() > 64 { "..." } else { "" };
        warn!(node_id = %shown, length = id.len(), "xDS stream refused: its node id is not MESH.NAME");
        Status::invalid_argument(format!(
            "node.id {shown:?}{more} must be MESH.NAME, the Dataplane's mesh and name (DNS-1123 labels)"
        ))
    })
}

/// Counts the stream on its proxy while it lives.
struct StreamGuard {
    cache: SnapshotCache,
    metrics: Arc<XdsMetrics>,
    proxy: ProxyId,
}

impl StreamGuard {
    fn open(cache: &SnapshotCache, metrics: &Arc<XdsMetrics>, proxy: &ProxyId) -> Self {
        cache.update_status(proxy, |s| {
            s.streams += 1;
            s.connected_since = Some(SystemTime::now());
        });
        metrics.streams.inc();
        info!(proxy = %proxy, "proxy connected");
        Self {
            cache: cache.clone(),
            metrics: metrics.clone(),
            proxy: proxy.clone(),
        }
    }

    fn nack(&self, type_url: &str, message: &str) {
        warn!(proxy = %self.proxy, type_url, error = message, "proxy rejected config (NACK)");
        self.metrics.nacks.inc();
        self.cache.update_status(&self.proxy, |s| {
            s.nacks += 1;
            s.last_nack = Some(Nack {
                type_url: type_url.to_owned(),
                message: message.to_owned(),
                at: SystemTime::now(),
            });
        });
    }

    fn ack(&self, type_url: &str, version: &str) {
        self.metrics.acks.inc();
        self.cache.update_status(&self.proxy, |s| {
            s.acked.insert(type_url.to_owned(), version.to_owned());
        });
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.cache.stream_ended(&self.proxy);
        self.metrics.streams.dec();
        info!(proxy = %self.proxy, "proxy disconnected");
    }
}

/// Types for which an empty initial subscription means "everything" (wildcard).
fn wildcard_by_default(type_url: &str) -> bool {
    type_url == CLUSTER || type_url == LISTENER
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (metadata, extensions, mut inbound) = request.into_parts();
        let (first, proxy) = self
            .first(metadata, extensions, &mut inbound, |r| r.node.as_ref())
            .await?;
        let (tx, rx) = mpsc::channel(16);
        let span = info_span!("ads", proxy = %proxy, mode = "sotw");
        let mut snapshots = self.cache.watch(&proxy);
        let current = snapshots.borrow_and_update().clone();
        let stream = SotwStream {
            guard: StreamGuard::open(&self.cache, &self.metrics, &proxy),
            snapshots,
            current,
            metrics: self.metrics.clone(),
            types: BTreeMap::new(),
            nonce: 0,
            tx,
        };
        tokio::spawn(drive(stream, first, inbound, self.stop.clone()).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (metadata, extensions, mut inbound) = request.into_parts();
        let (first, proxy) = self
            .first(metadata, extensions, &mut inbound, |r| r.node.as_ref())
            .await?;
        let (tx, rx) = mpsc::channel(16);
        let span = info_span!("ads", proxy = %proxy, mode = "delta");
        let mut snapshots = self.cache.watch(&proxy);
        let current = snapshots.borrow_and_update().clone();
        let stream = DeltaStream {
            guard: StreamGuard::open(&self.cache, &self.metrics, &proxy),
            snapshots,
            current,
            metrics: self.metrics.clone(),
            types: BTreeMap::new(),
            nonce: 0,
            tx,
        };
        tokio::spawn(drive(stream, first, inbound, self.stop.clone()).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The two protocol variants, as the stream loop sees them.
trait Protocol {
    type Request;

    fn snapshots(&mut self) -> &mut tokio::sync::watch::Receiver<Arc<Snapshot>>;
    /// Answers one request; `Err` ends the stream.
    async fn handle(&mut self, request: Self::Request) -> Result<(), ()>;
    /// Pushes what a new snapshot changed, and makes it the one requests are answered from;
    /// `Err` ends the stream.
    async fn push(&mut self, snapshot: Arc<Snapshot>) -> Result<(), ()>;
}

/// Resolves once `stop` turns true (never, if its sender is gone).
async fn stopping(stop: &mut tokio::sync::watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The life of one stream: answer each request, push each snapshot change, until either side
/// goes away or the process stops.
async fn drive<P: Protocol>(
    mut p: P,
    first: P::Request,
    mut inbound: Streaming<P::Request>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut next = Some(first);
    loop {
        if let Some(request) = next.take()
            && p.handle(request).await.is_err()
        {
            return;
        }
        tokio::select! {
            () = stopping(&mut stop) => {
                debug!("stream ended: stopping");
                return;
            }
            request = inbound.message() => match request {
                Ok(Some(r)) => next = Some(r),
                Ok(None) => return,
                Err(e) => {
                    debug!(error = %e, "stream ended");
                    return;
                }
            },
            changed = p.snapshots().changed() => {
                if changed.is_err() {
                    return;
                }
                let snapshot = p.snapshots().borrow_and_update().clone();
                if p.push(snapshot).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// What a state-of-the-world client has of one type.
#[derive(Default)]
struct SotwType {
    names: BTreeSet<String>,
    sent_version: Option<String>,
    nonce: String,
}

struct SotwStream {
    guard: StreamGuard,
    snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    /// The snapshot requests are answered from.
    current: Arc<Snapshot>,
    metrics: Arc<XdsMetrics>,
    types: BTreeMap<String, SotwType>,
    nonce: u64,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

impl Protocol for SotwStream {
    type Request = DiscoveryRequest;

    fn snapshots(&mut self) -> &mut tokio::sync::watch::Receiver<Arc<Snapshot>> {
        &mut self.snapshots
    }

    async fn push(&mut self, snapshot: Arc<Snapshot>) -> Result<(), ()> {
        self.current = snapshot.clone();
        let mut clusters_sent = false;
        for type_url in PUSH_ORDER {
            if self.types.contains_key(type_url) {
                // Replaced clusters warm until their endpoints come again, even unchanged.
                let force = type_url == ENDPOINT && clusters_sent;
                let sent = self.send(type_url, &snapshot, force).await?;
                clusters_sent |= type_url == CLUSTER && sent;
            }
        }
        Ok(())
    }

    async fn handle(&mut self, r: DiscoveryRequest) -> Result<(), ()> {
        let state = self.types.entry(r.type_url.clone()).or_default();
        if !r.response_nonce.is_empty() && r.response_nonce != state.nonce {
            return Ok(()); // answers an older push: superseded
        }
        let names: BTreeSet<String> = r.resource_names.iter().cloned().collect();
        let names_changed = names != state.names;
        state.names = names;
        if let Some(error) = &r.error_detail {
            self.guard.nack(&r.type_url, &error.message);
            return Ok(());
        }
        if !r.response_nonce.is_empty() {
            self.guard.ack(&r.type_url, &r.version_info);
        }
        let first = r.response_nonce.is_empty();
        // The snapshot last pushed, not a newer one: that one is pushed in order by `push`.
        let snapshot = self.current.clone();
        self.send(&r.type_url, &snapshot, first || names_changed)
            .await
            .map(drop)
    }
}

impl SotwStream {
    /// Sends the type's resources unless the client has this version; says whether it did.
    async fn send(&mut self, type_url: &str, snapshot: &Snapshot, force: bool) -> Result<bool, ()> {
        let version = snapshot.type_version(type_url);
        let state = self.types.entry(type_url.to_owned()).or_default();
        if !force && state.sent_version.as_deref() == Some(version.as_str()) {
            return Ok(false);
        }
        let all = wildcard_by_default(type_url) && state.names.is_empty();
        let resources = snapshot
            .of_type(type_url)
            .into_iter()
            .flatten()
            .filter(|(name, _)| all || state.names.contains(*name))
            .map(|(_, r)| r.resource.clone())
            .collect();
        self.nonce += 1;
        state.nonce = self.nonce.to_string();
        state.sent_version = Some(version.clone());
        let response = DiscoveryResponse {
            version_info: version,
            resources,
            type_url: type_url.to_owned(),
            nonce: state.nonce.clone(),
            ..Default::default()
        };
        self.metrics.pushes.inc();
        self.tx.send(Ok(response)).await.map(|()| true).map_err(drop)
    }
}

/// What a delta client has of one type.
#[derive(Default)]
struct DeltaType {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Name to version, for every resource the client has.
    known: BTreeMap<String, String>,
}

impl DeltaType {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

struct DeltaStream {
    guard: StreamGuard,
    snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    /// The snapshot requests are answered from.
    current: Arc<Snapshot>,
    metrics: Arc<XdsMetrics>,
    types: BTreeMap<String, DeltaType>,
    nonce: u64,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

/// Which part of a diff to send: a change sends upserts for every type first, then removals.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    Upserts,
    Removals,
    Both,
}

impl Protocol for DeltaStream {
    type Request = DeltaDiscoveryRequest;

    fn snapshots(&mut self) -> &mut tokio::sync::watch::Receiver<Arc<Snapshot>> {
        &mut self.snapshots
    }

    async fn push(&mut self, snapshot: Arc<Snapshot>) -> Result<(), ()> {
        self.current = snapshot.clone();
        for type_url in PUSH_ORDER {
            if self.types.contains_key(type_url) {
                self.send(type_url, &snapshot, Part::Upserts, false).await?;
            }
        }
        for type_url in PUSH_ORDER.iter().rev() {
            if self.types.contains_key(*type_url) {
                self.send(type_url, &snapshot, Part::Removals, false).await?;
            }
        }
        Ok(())
    }

    async fn handle(&mut self, r: DeltaDiscoveryRequest) -> Result<(), ()> {
        let first = !self.types.contains_key(&r.type_url);
        let state = self.types.entry(r.type_url.clone()).or_default();
        if first {
            state.wildcard = (wildcard_by_default(&r.type_url) && r.resource_names_subscribe.is_empty())
                || r.resource_names_subscribe.iter().any(|n| n == "*");
            // A reconnecting client says what it already has: send only what differs.
            state.known = r.initial_resource_versions.clone().into_iter().collect();
        }
        for name in &r.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
            } else {
                state.names.insert(name.clone());
                // A client subscribing again to what it has wants it again: Envoy does so
                // for the endpoints of a cluster it replaced, and keeps the new cluster
                // warming (the old one serving) until they come.
                if !first {
                    state.known.remove(name);
                }
            }
        }
        for name in &r.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(name);
                state.known.remove(name);
            }
        }
        // Each delta response stands alone, so an answer to any of them counts (unlike
        // state of the world, where only the latest nonce does).
        if !r.response_nonce.is_empty() {
            match &r.error_detail {
                Some(error) => self.guard.nack(&r.type_url, &error.message),
                None => self
                    .guard
                    .ack(&r.type_url, &format!("{} resources", state.known.len())),
            }
        }
        // The snapshot last pushed, not a newer one: that one is pushed in order by `push`.
        let snapshot = self.current.clone();
        self.send(&r.type_url, &snapshot, Part::Both, first).await
    }
}

impl DeltaStream {
    async fn send(
        &mut self,
        type_url: &str,
        snapshot: &Snapshot,
        part: Part,
        always: bool,
    ) -> Result<(), ()> {
        let state = self.types.entry(type_url.to_owned()).or_default();
        let current = snapshot.of_type(type_url);
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        if part != Part::Removals {
            for (name, r) in current.into_iter().flatten() {
                if state.wants(name) && state.known.get(name) != Some(&r.version) {
                    resources.push(Resource {
                        name: name.clone(),
                        version: r.version.clone(),
                        resource: Some(r.resource.clone()),
                        ..Default::default()
                    });
                }
            }
        }
        if part != Part::Upserts {
            for name in state.known.keys() {
                let gone = current.is_none_or(|c| !c.contains_key(name));
                if gone {
                    removed.push(name.clone());
                }
            }
        }
        if resources.is_empty() && removed.is_empty() && !always {
            return Ok(());
        }
        for r in &resources {
            state.known.insert(r.name.clone(), r.version.clone());
        }
        for name in &removed {
            state.known.remove(name);
        }
        // Envoy warms a replaced cluster until its endpoints come again, serving with the old
        // one meanwhile: send them again, even unchanged (the push sends endpoints next).
        if type_url == CLUSTER
            && let Some(endpoints) = self.types.get_mut(ENDPOINT)
        {
            for r in &resources {
                endpoints.known.remove(&r.name);
            }
        }
        self.nonce += 1;
        let response = DeltaDiscoveryResponse {
            system_version_info: snapshot.type_version(type_url),
            resources,
            type_url: type_url.to_owned(),
            removed_resources: removed,
            nonce: self.nonce.to_string(),
            ..Default::default()
        };
        self.metrics.pushes.inc();
        self.tx.send(Ok(response)).await.map_err(drop)
    }
}
