//! Tracing drills: the seed's MeshTrace sends the demo's spans (from real Envoys) to an OTLP
//! receiver, where one request to demo is one trace: demo's inbound (about 1 s) and reg-server's
//! four inbounds (about 250 ms each), in sequence, parented through demo's outbound calls.

use std::time::Duration;

use meridian_e2e::{DemoPair, ZoneCp, example, http_get, ok};
use meridian_otlp::{ReceivedSpan, Receiver, waterfall};
use meridian_testing::wait_until;

fn receiver() -> Receiver {
    Receiver::start(([127, 0, 0, 1], 0).into()).expect("receiver")
}

/// The seed's MeshTrace, unchanged but for the collector address: the test's receiver.
fn seed_meshtrace(receiver: &Receiver) -> String {
    let seed = std::fs::read_to_string(example("seed-meshtrace.yaml")).expect("seed");
    assert!(seed.contains("otel-collector.kuma-system.svc:4317"));
    seed.replace("otel-collector.kuma-system.svc:4317", &receiver.addr.to_string())
}

/// Waits until the receiver has a trace with at least `spans` spans (Envoy flushes spans every
/// few seconds) and returns it.
fn one_trace(receiver: &Receiver, spans: usize) -> (String, Vec<ReceivedSpan>) {
    let mut found = None;
    wait_until("a trace at the receiver", Duration::from_secs(30), || {
        found = receiver.traces().into_iter().find(|(_, s)| s.len() >= spans);
        found.is_some()
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", receiver.traces()));
    found.expect("trace")
}

fn children<'a>(spans: &'a [ReceivedSpan], parent: &ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    let mut c: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.parent_span_id == parent.span_id)
        .collect();
    c.sort_by_key(|s| s.start_ns);
    c
}

#[test]
fn the_seeds_meshtrace_shows_demo_calling_reg_server_four_times() {
    let receiver = receiver();
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ZoneCp::start("zone-1", &dir.path().join("zone")).expect("zone-cp");
    let pair = DemoPair::start(&cp).expect("demo pair");
    ok(cp
        .meshctl(&["apply", "-f", "-"], Some(&seed_meshtrace(&receiver)))
        .expect("meshctl"));
    // Wait for both proxies to have tracing, then send exactly one request.
    wait_until("tracing in both proxies", Duration::from_secs(20), || {
        ["demo-1", "reg-server-1"].iter().all(|n| {
            cp.proxy_config("default", n)
                .is_some_and(|c| c.to_string().contains("envoy.tracers.opentelemetry") && c["nacks"] == 0)
        })
    })
    .expect("tracing configured");
    std::thread::sleep(Duration::from_secs(2));
    receiver.clear();
    let (status, body, took) = http_get(&pair.demo_url);
    assert_eq!(status, 200, "{body}");
    let (id, spans) = one_trace(&receiver, 9);
    println!("{}", waterfall(&id, &spans));
    assert_eq!(receiver.traces().len(), 1, "one request, one trace");

    // demo's inbound is the root, about as long as the request.
    let root = spans
        .iter()
        .find(|s| s.parent_span_id.is_empty())
        .expect("a root span");
    assert_eq!(root.service, "demo");
    assert!(
        root.duration_ms() >= 950.0 && root.duration_ms() <= took.as_secs_f64() * 1000.0 + 50.0,
        "demo's span {:.0} ms",
        root.duration_ms()
    );
    // Under it, four calls in sequence, each reaching reg-server's inbound (~250 ms).
    let calls = children(&spans, root);
    assert_eq!(calls.len(), 4, "{spans:#?}");
    let mut previous_end = 0;
    for call in calls {
        assert_eq!(call.service, "demo");
        assert!(call.start_ns >= previous_end, "calls are in sequence");
        previous_end = call.end_ns;
        let served = children(&spans, call);
        assert_eq!(served.len(), 1, "{spans:#?}");
        let reg = served[0];
        assert_eq!(reg.service, "reg-server");
        assert!(
            (240.0..400.0).contains(&reg.duration_ms()),
            "reg-server's span {:.0} ms",
            reg.duration_ms()
        );
        assert_eq!(
            reg.attributes.get("service").map(String::as_str),
            Some("reg-server")
        );
    }
    for s in &spans {
        assert_eq!(
            s.attributes.get("mesh").map(String::as_str),
            Some("default"),
            "{s:?}"
        );
        assert_eq!(
            s.attributes.get("zone").map(String::as_str),
            Some("zone-1"),
            "{s:?}"
        );
    }
    // The seed's header went along with the spans, as gRPC metadata.
    assert!(
        receiver
            .metadata()
            .iter()
            .any(|m| m.get("x-api-key").map(String::as_str) == Some("<HONEYCOMB_API_KEY>")),
        "{:?}",
        receiver.metadata()
    );
}

#[test]
fn sampling_decides_how_many_requests_are_traced() {
    let receiver = receiver();
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ZoneCp::start("zone-1", &dir.path().join("zone")).expect("zone-cp");
    let pair = DemoPair::start(&cp).expect("demo pair");
    let policy = |percent: u32| {
        format!(
            "type: MeshTrace\nname: sampled\nspec:\n  targetRef: {{kind: Mesh}}\n  default:\n    backends:\n    - type: OpenTelemetry\n      openTelemetry: {{endpoint: '{}'}}\n    sampling: {{overall: {percent}, client: {percent}, random: {percent}}}\n    tags:\n    - {{name: team, literal: payments}}\n    - {{name: user, header: {{name: x-user, default: anonymous}}}}\n",
            receiver.addr
        )
    };
    // 100: every request is one trace.
    ok(cp
        .meshctl(&["apply", "-f", "-"], Some(&policy(100)))
        .expect("meshctl"));
    wait_until("tracing configured", Duration::from_secs(20), || {
        cp.proxy_config("default", "demo-1")
            .is_some_and(|c| c.to_string().contains("envoy.tracers.opentelemetry"))
    })
    .expect("configured");
    std::thread::sleep(Duration::from_secs(2));
    receiver.clear();
    assert_eq!(http_get(&pair.demo_url).0, 200);
    let tagged = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "x-user: alice",
            &pair.demo_url,
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&tagged.stdout), "200");
    assert_eq!(http_get(&pair.demo_url).0, 200);
    wait_until("three traces", Duration::from_secs(30), || {
        receiver.traces().iter().filter(|(_, s)| s.len() >= 9).count() == 3
    })
    .unwrap_or_else(|e| panic!("{e}: {} traces", receiver.traces().len()));
    let traces = receiver.traces();
    assert!(
        traces[0]
            .1
            .iter()
            .all(|s| s.attributes.get("team").map(String::as_str) == Some("payments"))
    );
    // A tag from a request header: demo's inbound span says who asked (or the default).
    let users: Vec<&str> = traces
        .iter()
        .filter_map(|(_, spans)| spans.iter().find(|s| s.parent_span_id.is_empty()))
        .filter_map(|root| root.attributes.get("user").map(String::as_str))
        .collect();
    assert!(
        users.contains(&"alice") && users.contains(&"anonymous"),
        "{users:?}"
    );

    // 0: nothing.
    ok(cp
        .meshctl(&["apply", "-f", "-"], Some(&policy(0)))
        .expect("meshctl"));
    wait_until("sampling 0 configured", Duration::from_secs(20), || {
        cp.proxy_config("default", "demo-1").is_some_and(|c| {
            let text = c.to_string();
            text.contains("envoy.tracers.opentelemetry")
                && text.contains("value: 0.0")
                && !text.contains("value: 100.0")
        })
    })
    .expect("configured");
    // Connections from before drain for the sidecars' drain time (1 s here), and Envoy sends
    // what it traced under the old config within its 5 s flush interval: let both pass.
    std::thread::sleep(Duration::from_secs(6));
    receiver.clear();
    for _ in 0..3 {
        assert_eq!(http_get(&pair.demo_url).0, 200);
    }
    // An absence can only be waited out: longer than Envoy's 5 s flush interval.
    std::thread::sleep(Duration::from_secs(7));
    assert!(receiver.traces().is_empty(), "{:?}", receiver.traces());
}

/// The control planes trace themselves: one MeshTimeout applied with meshctl on global is one
/// trace, from meshctl through global's REST handler, store and sync, to each zone's apply,
/// Raft commit and xDS push. The write goes to one global replica and the zones sync from
/// another: the trace travels with the write, through the database they share.
#[test]
fn a_policy_is_one_trace_from_meshctl_to_the_xds_push_in_every_zone() {
    use meridian_e2e::{GlobalCp, Sidecar, export_spans_to, meshctl};
    use meridian_testing::{Postgres, free_port};
    let receiver = receiver();
    export_spans_to(&format!("http://{}", receiver.addr));
    let pg = Postgres::start().expect("postgres");
    let dir = tempfile::tempdir().expect("tempdir");
    let (dir_a, dir_b) = (dir.path().join("global-a"), dir.path().join("global-b"));
    for d in [&dir_a, &dir_b] {
        std::fs::create_dir_all(d).expect("replica dir");
    }
    let global = GlobalCp::start(&dir_a, Some(&pg.url())).expect("global replica a");
    let synced_from = GlobalCp::start(&dir_b, Some(&pg.url())).expect("global replica b");
    let zones: Vec<ZoneCp> = ["zone-1", "zone-2"]
        .iter()
        .map(|z| ZoneCp::start_federated(z, &dir.path().join(z), &synced_from).expect("zone-cp"))
        .collect();
    let _sidecars: Vec<Sidecar> = zones
        .iter()
        .map(|z| {
            Sidecar::start(
                z,
                &[
                    "--name",
                    "web-1",
                    "--inbound",
                    &format!(
                        "{}:{}:web:http",
                        free_port().expect("port"),
                        free_port().expect("port")
                    ),
                    "--outbound",
                    &format!("{}:reg-server", free_port().expect("port")),
                ],
            )
            .expect("sidecar")
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    receiver.clear();
    ok(meshctl(
        &global.api_url,
        &["apply", "-f", "-"],
        Some("type: MeshTimeout\nname: traced\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 3s}\n"),
    )
    .expect("meshctl"));
    let mut found = None;
    wait_until(
        "the policy's trace to reach both zones' xDS push",
        Duration::from_secs(20),
        || {
            found = receiver.traces().into_iter().find(|(_, spans)| {
                ["zone-1", "zone-2"]
                    .iter()
                    .all(|z| spans.iter().any(|s| s.name == format!("zone {z}: xds push")))
            });
            found.is_some()
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:#?}", receiver.traces()));
    let (id, spans) = found.expect("trace");
    println!("{}", waterfall(&id, &spans));
    let by_name = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span {name:?}: {spans:#?}"))
    };
    let root = by_name("meshctl apply");
    assert_eq!(root.service, "meshctl");
    assert!(root.parent_span_id.is_empty());
    let rest = spans
        .iter()
        .find(|s| s.service == "global-cp" && s.name.starts_with("PUT "))
        .expect("global's REST span");
    assert_eq!(rest.parent_span_id, root.span_id);
    let write = by_name("store write");
    assert_eq!(write.parent_span_id, rest.span_id);
    // Replica a wrote and replica b sent the change on: b found the trace in the row.
    for z in ["zone-1", "zone-2"] {
        let sync = by_name(&format!("sync to {z}"));
        assert_eq!(sync.parent_span_id, write.span_id);
        let apply = by_name(&format!("zone {z}: apply from global"));
        assert_eq!(
            (apply.service.as_str(), apply.parent_span_id.as_str()),
            ("zone-cp", sync.span_id.as_str())
        );
        let commit = by_name(&format!("zone {z}: raft commit"));
        assert_eq!(commit.parent_span_id, apply.span_id);
        let push = by_name(&format!("zone {z}: xds push"));
        assert_eq!(push.parent_span_id, commit.span_id);
        assert_eq!(push.attributes.get("zone").map(String::as_str), Some(z));
        assert_eq!(
            push.attributes.get("proxies.pushed").map(String::as_str),
            Some("1"),
            "{push:?}"
        );
    }
}
