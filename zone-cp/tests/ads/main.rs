//! The ADS protocol against a real gRPC client: ACK and NACK by nonce, delta diffs,
//! reconnect with known versions, and state-of-the-world.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meridian_zone_cp::xds::cache::{CLUSTER, ENDPOINT, LISTENER, ProxyId, Snapshot, SnapshotCache};
use meridian_zone_cp::xds::grpc::AdsService;
use meridian_zone_cp::xds::metrics::XdsMetrics;
use meridian_zone_cp::xds::server::AdsServer;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

mod admission;

/// The request size limit of the test server (zone-cp's own is 4 MiB).
const LIMIT: usize = 1 << 20;

async fn serve(cache: SnapshotCache) -> String {
    serve_until(cache, tokio::sync::watch::channel(false).1).await
}

/// Serves until `stop` turns true.
async fn serve_until(cache: SnapshotCache, stop: tokio::sync::watch::Receiver<bool>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = AdsServer::new(cache, Arc::new(XdsMetrics::default()), stop);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdsService::new(server, LIMIT))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

/// A resource of `type_url` whose content is `content` (the cache checks that it decodes).
fn any(type_url: &str, content: &str) -> Any {
    let content = content.to_owned();
    let value = match type_url {
        CLUSTER => Cluster {
            alt_stat_name: content,
            ..Default::default()
        }
        .encode_to_vec(),
        LISTENER => Listener {
            stat_prefix: content,
            ..Default::default()
        }
        .encode_to_vec(),
        ENDPOINT => ClusterLoadAssignment {
            cluster_name: content,
            ..Default::default()
        }
        .encode_to_vec(),
        other => panic!("no test resource of {other}"),
    };
    Any {
        type_url: type_url.into(),
        value,
    }
}

fn snapshot(clusters: &[(&str, &str)]) -> Snapshot {
    let mut s = Snapshot::default();
    for (name, content) in clusters {
        s.insert(CLUSTER, (*name).into(), any(CLUSTER, content));
    }
    s
}

fn node() -> Option<Node> {
    Some(Node {
        id: "default.dp-1".into(),
        ..Default::default()
    })
}

struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    /// A stream subscribed to every cluster, as the test node.
    async fn clusters(url: &str) -> Self {
        let first = DeltaDiscoveryRequest {
            node: node(),
            type_url: CLUSTER.into(),
            ..Default::default()
        };
        Self::open(url, first).await
    }

    async fn open(url: &str, first: DeltaDiscoveryRequest) -> Self {
        let mut client = AggregatedDiscoveryServiceClient::connect(url.to_owned())
            .await
            .expect("connect");
        let (tx, requests) = mpsc::channel(8);
        tx.send(first).await.expect("send");
        let rx = client
            .delta_aggregated_resources(ReceiverStream::new(requests))
            .await
            .expect("stream")
            .into_inner();
        Self { tx, rx }
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a response in time")
            .expect("no error")
            .expect("stream open")
    }

    async fn nothing_within(&mut self, wait: Duration) {
        if let Ok(r) = tokio::time::timeout(wait, self.rx.message()).await {
            panic!("expected no response, got {r:?}");
        }
    }

    async fn reply(&self, to: &DeltaDiscoveryResponse, error: Option<&str>) {
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: to.type_url.clone(),
                response_nonce: to.nonce.clone(),
                error_detail: error.map(|m| RpcStatus {
                    code: 3,
                    message: m.into(),
                    details: vec![],
                }),
                ..Default::default()
            })
            .await
            .expect("send");
    }
}

/// Waits (up to 5 s) until the proxy's status satisfies `check`, and returns it.
async fn wait_status(
    cache: &SnapshotCache,
    id: &ProxyId,
    what: &str,
    check: impl Fn(&meridian_zone_cp::xds::cache::ProxyStatus) -> bool,
) -> meridian_zone_cp::xds::cache::ProxyStatus {
    for _ in 0..500 {
        if let Some(status) = cache.status(id).filter(|s| check(s)) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}: {:?}", cache.status(id));
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

#[tokio::test]
async fn delta_sends_only_what_changed_and_records_acks_and_nacks() {
    let cache = SnapshotCache::default();
    let id = ProxyId::new("default", "dp-1");
    cache
        .set(&id, snapshot(&[("a", "1"), ("b", "1")]))
        .expect("consistent");
    let url = serve(cache.clone()).await;
    let mut delta = Delta::clusters(&url).await;

    // An empty subscription to clusters is a wildcard: everything comes.
    let first = delta.next().await;
    assert_eq!(names(&first), ["a", "b"]);
    delta.reply(&first, None).await;

    // One resource changes, one goes, one comes: only those are sent.
    cache
        .set(&id, snapshot(&[("a", "2"), ("c", "1")]))
        .expect("consistent");
    let upserts = delta.next().await;
    assert_eq!(names(&upserts), ["a", "c"]);
    assert!(
        upserts.removed_resources.is_empty(),
        "removals come after upserts"
    );
    delta.reply(&upserts, None).await;
    let removals = delta.next().await;
    assert!(removals.resources.is_empty());
    assert_eq!(removals.removed_resources, ["b"]);

    // A NACK is recorded and visible; Envoy keeps its last good config, so nothing is resent.
    delta.reply(&removals, Some("bad cluster")).await;
    let status = wait_status(&cache, &id, "the NACK", |s| s.nacks >= 1).await;
    delta.nothing_within(Duration::from_millis(200)).await;
    assert_eq!(status.nacks, 1);
    assert_eq!(status.last_nack.expect("nack").message, "bad cluster");
    assert!(status.acked.contains_key(CLUSTER));
    assert_eq!(status.streams, 1);

    // The same content again is no change: nothing is sent.
    cache
        .set(&id, snapshot(&[("a", "2"), ("c", "1")]))
        .expect("consistent");
    delta.nothing_within(Duration::from_millis(200)).await;
    drop(delta);
    wait_status(&cache, &id, "the stream to be gone", |s| s.streams == 0).await;
}

#[tokio::test]
async fn streams_end_when_the_process_stops() {
    let cache = SnapshotCache::default();
    cache
        .set(&ProxyId::new("default", "dp-1"), snapshot(&[("a", "1")]))
        .expect("consistent");
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let url = serve_until(cache, stopping).await;
    let first = DeltaDiscoveryRequest {
        node: node(),
        type_url: CLUSTER.into(),
        ..Default::default()
    };
    let mut delta = Delta::open(&url, first).await;
    let response = delta.next().await;
    delta.reply(&response, None).await;
    stop.send_replace(true);
    // The stream ends (the proxy then reconnects elsewhere) rather than holding the drain.
    let ended = tokio::time::timeout(Duration::from_secs(5), delta.rx.message())
        .await
        .expect("the stream ends without waiting for the proxy");
    assert!(matches!(ended, Ok(None)), "ended cleanly: {ended:?}");
}

#[tokio::test]
async fn a_reconnecting_delta_client_gets_only_what_it_lacks() {
    let cache = SnapshotCache::default();
    let id = ProxyId::new("default", "dp-1");
    cache
        .set(&id, snapshot(&[("a", "1"), ("b", "1")]))
        .expect("consistent");
    let url = serve(cache.clone()).await;
    let mut first = Delta::clusters(&url).await;
    let initial = first.next().await;
    let versions = initial
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(first);

    cache
        .set(&id, snapshot(&[("a", "1"), ("b", "2")]))
        .expect("consistent");
    let mut again = Delta::open(
        &url,
        DeltaDiscoveryRequest {
            node: node(),
            type_url: CLUSTER.into(),
            initial_resource_versions: versions,
            ..Default::default()
        },
    )
    .await;
    let resumed = again.next().await;
    assert_eq!(names(&resumed), ["b"], "a, unchanged, is not sent again");
}

#[tokio::test]
async fn explicit_subscriptions_only_get_their_names() {
    let cache = SnapshotCache::default();
    let id = ProxyId::new("default", "dp-1");
    let mut s = snapshot(&[]);
    s.insert(LISTENER, "l1".into(), any(LISTENER, "x"));
    s.insert(LISTENER, "l2".into(), any(LISTENER, "y"));
    cache.set(&id, s).expect("consistent");
    let url = serve(cache.clone()).await;
    let mut delta = Delta::open(
        &url,
        DeltaDiscoveryRequest {
            node: node(),
            type_url: LISTENER.into(),
            resource_names_subscribe: vec!["l2".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(names(&delta.next().await), ["l2"]);
}

async fn sotw_next(rx: &mut Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(5), rx.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("open")
}

#[tokio::test]
async fn state_of_the_world_acks_nacks_and_ignores_stale_nonces() {
    let cache = SnapshotCache::default();
    let id = ProxyId::new("default", "dp-1");
    cache.set(&id, snapshot(&[("a", "1")])).expect("consistent");
    let url = serve(cache.clone()).await;
    let mut client = AggregatedDiscoveryServiceClient::connect(url)
        .await
        .expect("connect");
    let (tx, requests) = mpsc::channel(8);
    tx.send(DiscoveryRequest {
        node: node(),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await
    .expect("send");
    let mut rx = client
        .stream_aggregated_resources(ReceiverStream::new(requests))
        .await
        .expect("stream")
        .into_inner();
    let first = sotw_next(&mut rx).await;
    assert_eq!(first.resources.len(), 1);
    tx.send(DiscoveryRequest {
        type_url: CLUSTER.into(),
        version_info: first.version_info.clone(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await
    .expect("ack");
    // An ACK that arrives after a newer push answers an outdated one; wait until it is in.
    wait_status(&cache, &id, "the ACK", |s| s.acked.contains_key(CLUSTER)).await;

    cache
        .set(&id, snapshot(&[("a", "1"), ("b", "1")]))
        .expect("consistent");
    let second = sotw_next(&mut rx).await;
    assert_eq!(
        second.resources.len(),
        2,
        "state of the world sends the whole type"
    );
    assert_ne!(second.version_info, first.version_info);

    // A request that answers the older push is stale: ignored, even though it is a NACK.
    tx.send(DiscoveryRequest {
        type_url: CLUSTER.into(),
        response_nonce: first.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "stale".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await
    .expect("send");
    tx.send(DiscoveryRequest {
        type_url: CLUSTER.into(),
        version_info: first.version_info.clone(),
        response_nonce: second.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "rejected".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await
    .expect("nack");
    // Requests are handled in order: once the second is in, the stale first one was seen too.
    let status = wait_status(&cache, &id, "the NACK", |s| s.nacks >= 1).await;
    assert_eq!(status.nacks, 1, "only the current nonce's NACK counts");
    assert_eq!(status.last_nack.expect("nack").message, "rejected");
    assert_eq!(status.acked.get(CLUSTER), Some(&first.version_info));
}

#[tokio::test]
async fn a_replaced_cluster_gets_its_endpoints_again_even_unchanged() {
    let cache = SnapshotCache::default();
    let id = ProxyId::new("default", "dp-1");
    let mut s = snapshot(&[("reg", "plaintext")]);
    s.insert(ENDPOINT, "reg".into(), any(ENDPOINT, "10.0.0.1"));
    cache.set(&id, s.clone()).expect("consistent");
    let url = serve(cache.clone()).await;
    let mut delta = Delta::clusters(&url).await;
    let clusters = delta.next().await;
    delta.reply(&clusters, None).await;
    delta
        .tx
        .send(DeltaDiscoveryRequest {
            type_url: ENDPOINT.into(),
            resource_names_subscribe: vec!["reg".into()],
            ..Default::default()
        })
        .await
        .expect("send");
    let endpoints = delta.next().await;
    assert_eq!(names(&endpoints), ["reg"]);
    delta.reply(&endpoints, None).await;

    // The cluster changes (say, it now speaks TLS) and its endpoints do not: Envoy keeps the
    // new cluster warming until they come, so they are sent again.
    s.insert(CLUSTER, "reg".into(), any(CLUSTER, "tls"));
    cache.set(&id, s).expect("consistent");
    let pushed = delta.next().await;
    assert_eq!((pushed.type_url.as_str(), names(&pushed)), (CLUSTER, vec!["reg"]));
    let again = delta.next().await;
    assert_eq!((again.type_url.as_str(), names(&again)), (ENDPOINT, vec!["reg"]));

    // Subscribing again to a name it has gets it again too.
    delta
        .tx
        .send(DeltaDiscoveryRequest {
            type_url: ENDPOINT.into(),
            resource_names_subscribe: vec!["reg".into()],
            ..Default::default()
        })
        .await
        .expect("send");
    assert_eq!(names(&delta.next().await), ["reg"]);
    delta.nothing_within(Duration::from_millis(200)).await;
}
