//! What a stream is admitted with: a node id naming a Dataplane, that Dataplane's token, and
//! requests within the size limit (however large the responses).

use super::*;

#[tokio::test]
async fn a_node_id_that_names_no_dataplane_is_refused() {
    let url = serve(SnapshotCache::default()).await;
    let mut client = AggregatedDiscoveryServiceClient::connect(url)
        .await
        .expect("connect");
    let (tx, requests) = mpsc::channel(8);
    tx.send(DeltaDiscoveryRequest {
        node: Some(Node {
            id: "nodot".into(),
            ..Default::default()
        }),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await
    .expect("send");
    let err = client
        .delta_aggregated_resources(ReceiverStream::new(requests))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("MESH.NAME"), "{}", err.message());
}

#[tokio::test]
async fn a_stream_must_show_the_token_of_the_dataplane_it_claims() {
    use meridian_api::auth::Auth;
    use meridian_api::tokens::{Subject, Tokens};
    use meridian_store::Store;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = meridian_store::SqlStore::open_sqlite(dir.path())
        .await
        .expect("store");
    store.migrate().await.expect("migrate");
    let store: Arc<dyn Store> = Arc::new(store);
    meridian_store::create_default_mesh(&*store).await.expect("mesh");
    // dp-1 is registered as service web.
    let dataplane = meridian_model::parse_one(
        "type: Dataplane\nname: dp-1\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 8080\n    tags: {kuma.io/service: web}\n",
        meridian_model::Format::Yaml,
    )
    .expect("dataplane");
    store.put(dataplane).await.expect("registered");
    let tokens = Tokens::new(store.clone());
    let auth = Auth {
        tokens: tokens.clone(),
        trust_localhost: false,
    };
    let cache = SnapshotCache::default();
    cache
        .set(&ProxyId::new("default", "dp-1"), snapshot(&[("c1", "v1")]))
        .expect("consistent");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = tokio::sync::watch::channel(false).1;
    let server = AdsServer::new(cache, Arc::new(XdsMetrics::default()), stop).with_auth(auth, store);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdsService::new(server, 4 << 20))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let open = |token: Option<String>| {
        let url = url.clone();
        async move {
            let mut client = AggregatedDiscoveryServiceClient::connect(url)
                .await
                .expect("connect");
            let first = DeltaDiscoveryRequest {
                node: node(),
                type_url: CLUSTER.into(),
                ..Default::default()
            };
            let mut request = tonic::Request::new(tokio_stream::iter([first]));
            if let Some(token) = token {
                request.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {token}").parse().expect("header"),
                );
            }
            client.delta_aggregated_resources(request).await
        }
    };
    let token = |name: &str, service: Option<&str>| {
        let tokens = tokens.clone();
        let subject = Subject::Dataplane {
            mesh: "default".into(),
            name: name.into(),
            tags: service
                .map(|s| [("kuma.io/service".to_owned(), vec![s.to_owned()])].into())
                .unwrap_or_default(),
        };
        async move {
            tokens
                .issue(subject, Duration::from_secs(60))
                .await
                .expect("issue")
                .token
        }
    };
    let refused = open(None).await.expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let refused = open(Some(token("dp-2", None).await))
        .await
        .expect_err("another dataplane's token");
    // Known, and not allowed: permission denied, as against no token at all.
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(refused.message().contains("\"dp-2\""), "{}", refused.message());
    // Its own name, but a token that allows only another service than it claims.
    let refused = open(Some(token("dp-1", Some("payments")).await))
        .await
        .expect_err("a service the token does not allow");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(refused.message().contains("payments"), "{}", refused.message());
    let mut accepted = open(Some(token("dp-1", Some("web")).await))
        .await
        .expect("its own token")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), accepted.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("a response");
    assert_eq!(first.resources.len(), 1);
}

#[tokio::test]
async fn messages_larger_than_the_codec_buffers_pass_and_oversized_requests_end_the_stream() {
    let cache = SnapshotCache::default();
    let id = ProxyId::new("default", "dp-1");
    // 300 KiB in one response, far past the 1 KiB the stream's buffers start with.
    let big = "x".repeat(300 << 10);
    cache.set(&id, snapshot(&[("a", &big)])).expect("consistent");
    let url = serve(cache.clone()).await;
    let mut delta = Delta::clusters(&url).await;
    let first = delta.next().await;
    let cluster = Cluster::decode(
        first.resources[0]
            .resource
            .as_ref()
            .expect("resource")
            .value
            .as_slice(),
    )
    .expect("decodes");
    assert_eq!(cluster.alt_stat_name, big, "the whole resource");
    delta.reply(&first, None).await;
    wait_status(&cache, &id, "the ACK", |s| s.acked.contains_key(CLUSTER)).await;

    // A request over the limit ends the stream with an error, naming the limit.
    delta
        .tx
        .send(DeltaDiscoveryRequest {
            type_url: CLUSTER.into(),
            resource_names_subscribe: vec!["y".repeat(LIMIT + 1)],
            ..Default::default()
        })
        .await
        .expect("send");
    let ended = tokio::time::timeout(Duration::from_secs(5), delta.rx.message())
        .await
        .expect("an answer in time");
    let status = ended.expect_err("the stream ends in an error");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(status.message().contains(&LIMIT.to_string()), "{status:?}");
}
