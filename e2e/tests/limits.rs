//! Drills against the ports' bounds: connections held idle or fed a byte at a time, streams
//! that never say who they are, messages over the limit, node ids a megabyte long. Each says
//! what the attacker sees, and that the control plane keeps answering everyone else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use meridian_e2e::{GlobalCp, ZoneCp, http_get};
use meridian_proto::sync::{Hello, Inventory, ZoneMessage, zone_message};
use meridian_proto::sync_service::global_sync_client::GlobalSyncClient;
use meridian_testing::wait_until;

/// Lets this test process hold more sockets than the default soft limit.
fn raise_own_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}

fn metric(api_url: &str, name: &str) -> u64 {
    let (_, text, _) = http_get(&format!("{api_url}/metrics"));
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn idle_connections_beyond_the_descriptor_limit_do_not_stop_healthz() {
    raise_own_fd_limit();
    meridian_e2e::limit_open_files(1024);
    let dir = tempfile::tempdir().expect("tempdir");
    let global = GlobalCp::start(dir.path(), None).expect("global-cp");
    let addr = global.api_url.trim_start_matches("http://").to_owned();
    // 1,100 connections that never send a byte.
    let idle: Vec<TcpStream> = (0..1100).filter_map(|_| TcpStream::connect(&addr).ok()).collect();
    eprintln!("{} idle connections open", idle.len());
    let started = Instant::now();
    wait_until("/healthz to answer 200", Duration::from_secs(60), || {
        http_get(&format!("{}/healthz", global.api_url)).0 == 200
    })
    .expect("/healthz answers within a minute");
    eprintln!("/healthz answered {:?} after the flood", started.elapsed());
    assert!(
        metric(
            &global.api_url,
            "meridian_connections_refused_total{port=\"rest\"}"
        ) > 0,
        "the connections beyond the cap were refused, and counted"
    );
    drop(idle);
}

#[test]
fn a_client_feeding_headers_a_byte_at_a_time_is_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let global = GlobalCp::start(dir.path(), None).expect("global-cp");
    let addr = global.api_url.trim_start_matches("http://").to_owned();
    let mut slow = TcpStream::connect(&addr).expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .expect("write");
    let mut reader = slow.try_clone().expect("clone");
    let closed = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        // Closed by the server: a read ends (0 bytes or an error), with no answer given.
        reader.read(&mut buf).unwrap_or(0)
    });
    let started = Instant::now();
    while !closed.is_finished() && started.elapsed() < Duration::from_secs(40) {
        let _ = slow.write_all(b"X");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(closed.is_finished(), "the slow client is still held after 40 s");
    assert_eq!(
        closed.join().expect("reader"),
        0,
        "no answer, only the connection closed"
    );
    eprintln!("slow client cut off after {:?}", started.elapsed());
    assert_eq!(http_get(&format!("{}/healthz", global.api_url)).0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_stream_without_hello_is_closed_and_one_over_the_limit_is_told_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let global = GlobalCp::start(dir.path(), None).expect("global-cp");
    let token = global.zone_token("zone-1").expect("token");
    let url = global.sync_url.replace("grpc://", "http://");
    let mut client = GlobalSyncClient::connect(url.clone()).await.expect("connect");

    // Opens the stream and says nothing.
    let silent = tokio_stream::pending::<ZoneMessage>();
    let mut request = tonic::Request::new(silent);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let refused = tokio::time::timeout(Duration::from_secs(20), client.stream(request))
        .await
        .expect("an answer within 20 s")
        .expect_err("no Hello");
    assert_eq!(refused.code(), tonic::Code::DeadlineExceeded, "{refused:?}");
    assert!(refused.message().contains("Hello"), "{refused:?}");

    // Hello, then an inventory over the 64 MiB limit.
    let mut client = GlobalSyncClient::connect(url)
        .await
        .expect("connect")
        .max_encoding_message_size(usize::MAX);
    let hello = ZoneMessage {
        kind: Some(zone_message::Kind::Hello(Hello {
            zone: "zone-1".into(),
            applied_revision: 0,
            version: "test".into(),
        })),
    };
    let mut change = meridian_proto::sync::Change::delete(
        1,
        &meridian_model::ResourceKey::new(meridian_model::Kind::Dataplane, "default", "dp-1"),
    );
    change.resource = "x".repeat(65 << 20);
    let huge = ZoneMessage {
        kind: Some(zone_message::Kind::Inventory(Inventory {
            full: false,
            changes: vec![change],
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(hello).await.expect("hello");
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let mut answers = client.stream(request).await.expect("accepted").into_inner();
    tx.send(huge).await.expect("inventory");
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match answers.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends");
    let status = ended.expect_err("ended with a status, not OK");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    drop(tx);
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn open_stream(url: String, node_id: String) -> Result<(), tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::connect(url)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?
        .max_encoding_message_size(usize::MAX);
    let first = DeltaDiscoveryRequest {
        node: Some(Node {
            id: node_id,
            cluster: "x".into(),
            ..Default::default()
        }),
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
        ..Default::default()
    };
    let mut stream = client
        .delta_aggregated_resources(tokio_stream::iter([first]))
        .await?
        .into_inner();
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.message()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn xds_streams_with_huge_or_forged_node_ids_leave_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("zone.log");
    meridian_e2e::zone_logs_to(&log);
    let zone = ZoneCp::start("zone-1", &dir.path().join("zone")).expect("zone-cp");
    // Warm up: the allocator's arenas and the runtime's threads exist before the baseline.
    for i in 0..20 {
        let _ = open_stream(zone.xds_url.clone(), format!("default.warm-{i}")).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(zone.pid());
    let streams: Vec<_> = (0..120)
        .map(|i| {
            let url = zone.xds_url.clone();
            tokio::spawn(async move { open_stream(url, format!("default.{}{i}", "x".repeat(1 << 20))).await })
        })
        .collect();
    for s in streams {
        let refused = s.await.expect("task").expect_err("a megabyte node id");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().len() < 512, "the refusal does not echo the id");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(zone.pid());
    eprintln!("zone-cp RSS {before} KiB before 120 megabyte node ids, {after} KiB after");
    assert!(
        after.saturating_sub(before) < 40 * 1024,
        "{} KiB left behind",
        after.saturating_sub(before)
    );

    // A node id with a line break and a log line after it: refused, and logged on one line.
    let forged = "default.web-1\n2026-12-01T00:00:00.000000Z  INFO meridian: admin token issued".to_owned();
    let refused = open_stream(zone.xds_url.clone(), forged)
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    wait_until("the refusal in the log", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("web-1\\n2026"))
    })
    .expect("logged");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        !text.lines().any(|l| l.starts_with("2026-12-01T00:00:00.000000Z")),
        "a forged line: {text}"
    );
}
