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

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info, info_span, warn};

use super::cache::{CLUSTER, LISTENER, Nack, ProxyId, SnapshotCache};
use super::metrics::XdsMetrics;
use super::streams::{DeltaStream, SotwStream, drive};
use meridian_api::auth::Refusal;
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
                Err(e) => {
                    return Err(meridian_api::grpc_status(
                        &format!("reading Dataplane {proxy}"),
                        &e,
                    ));
                }
            };
            let checked = auth
                .check_proxy(token_of(request), &key, is_local(request), registered.as_ref())
                .await;
            if let Err(why) = checked {
                warn!(proxy = %proxy, reason = %why, "xDS stream refused");
                self.metrics.refused.inc();
                let message = format!("proxy {proxy}: {why}");
                return Err(match why {
                    Refusal::Unauthenticated(_) => Status::unauthenticated(message),
                    Refusal::Forbidden(_) => Status::permission_denied(message),
                    Refusal::Unavailable(_) => Status::unavailable(message),
                });
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
pub(super) struct StreamGuard {
    cache: SnapshotCache,
    metrics: Arc<XdsMetrics>,
    proxy: ProxyId,
}

impl StreamGuard {
    pub(super) fn open(cache: &SnapshotCache, metrics: &Arc<XdsMetrics>, proxy: &ProxyId) -> Self {
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

    pub(super) fn nack(&self, type_url: &str, message: &str) {
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

    pub(super) fn ack(&self, type_url: &str, version: &str) {
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
pub(super) fn wildcard_by_default(type_url: &str) -> bool {
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
        let guard = StreamGuard::open(&self.cache, &self.metrics, &proxy);
        let stream = SotwStream::new(guard, self.cache.watch(&proxy), self.metrics.clone(), tx);
        tokio::spawn(drive(stream, first, inbound, self.stop.clone()).instrument(span));
        Ok(Response::new(Box::pin(
            ReceiverStream::new(rx).map(|r| r.map(|r| *r)),
        )))
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
        let guard = StreamGuard::open(&self.cache, &self.metrics, &proxy);
        let stream = DeltaStream::new(guard, self.cache.watch(&proxy), self.metrics.clone(), tx);
        tokio::spawn(drive(stream, first, inbound, self.stop.clone()).instrument(span));
        Ok(Response::new(Box::pin(
            ReceiverStream::new(rx).map(|r| r.map(|r| *r)),
        )))
    }
}
