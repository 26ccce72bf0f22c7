//! Global to zone sync drills: real global-cp and zone-cp processes.

use std::time::Duration;

use meridian_e2e::{DemoPair, GlobalCp, ZoneCp, http_get, meshctl, ok};
use meridian_testing::wait_until;

mod postgres;

fn trace(name: &str, endpoint: &str) -> String {
    format!(
        "type: MeshTrace\nname: {name}\nspec:\n  backends:\n  - name: otel\n    type: open_telemetry\n    conf:\n      endpoint: {endpoint}\n"
    )
}

/// A resource as the zone has it (`None` when it does not).
fn on_zone(zone: &ZoneCp, kind: &str, name: &str) -> Option<serde_json::Value> {
    let out = zone.meshctl(&["get", kind, name, "-o", "json"], None).ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// `meshctl apply -f -` against `api_url`; the apply must succeed.
fn apply(api_url: &str, doc: &str) {
    ok(meshctl(api_url, &["apply", "-f", "-"], Some(doc)).expect("meshctl"));
}

/// One sample from a control plane's `/metrics` (0 when absent).
fn metric(api_url: &str, name: &str) -> f64 {
    let (_, text, _) = http_get(&format!("{api_url}/metrics"));
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn wait_on_zone(zone: &ZoneCp, what: &str, check: impl Fn(Option<serde_json::Value>) -> bool) {
    wait_until(what, Duration::from_secs(20), || {
        check(on_zone(zone, "meshtrace", what.split(' ').next().unwrap_or("")))
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn policies_written_on_global_reach_every_zone_and_zones_show_online() {
    let dir = tempfile::tempdir().expect("tempdir");
    let global = GlobalCp::start(dir.path(), None).expect("global-cp");
    let z1 = ZoneCp::start_federated("zone-1", &dir.path().join("z1"), &global).expect("zone-1");
    let z2 = ZoneCp::start_federated("zone-2", &dir.path().join("z2"), &global).expect("zone-2");
    apply(&global.api_url, &trace("t1", "a:4317"));
    for zone in [&z1, &z2] {
        wait_on_zone(zone, "t1 arrives", |t| {
            t.is_some_and(|t| t["spec"]["backends"][0]["conf"]["endpoint"] == "a:4317")
        });
    }
    // Once both zones are current, what follows is read from the store once, by global's
    // change feed, for both streams.
    let stream_reads = metric(&global.api_url, "meridian_sync_stream_reads_total");
    let feed_reads = metric(&global.api_url, "meridian_sync_feed_reads_total");
    assert!(
        stream_reads > 0.0,
        "zones that started from scratch read the store themselves"
    );
    apply(&global.api_url, &trace("t1", "b:4317"));
    ok(meshctl(&global.api_url, &["delete", "meshtrace", "t1"], None).expect("delete"));
    for zone in [&z1, &z2] {
        wait_on_zone(zone, "t1 goes", |t| t.is_none());
    }
    assert_eq!(
        metric(&global.api_url, "meridian_sync_stream_reads_total"),
        stream_reads,
        "a zone stream read the store itself"
    );
    assert!(metric(&global.api_url, "meridian_sync_feed_reads_total") > feed_reads);
    let (code, body, _) = http_get(&format!("{}/zones/zone-1", global.api_url));
    assert_eq!(code, 200, "{body}");
    let z: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(z["state"], "Online", "{z}");
    let (_, zones, _) = http_get(&format!("{}/zones", global.api_url));
    assert!(zones.contains("zone-2"), "{zones}");
    // A federated zone's default mesh came from global: it is the same resource.
    assert!(ok(z1.meshctl(&["get", "meshes"], None).expect("meshes")).contains("default"));
    // Policies are written on global only; the zone's API says where.
    let refused = z1
        .meshctl(&["apply", "-f", "-"], Some(&trace("local", "a:4317")))
        .expect("meshctl");
    assert_eq!(refused.status.code(), Some(1));
    let err = meridian_e2e::stderr(&refused);
    assert!(err.contains("403") && err.contains(&global.sync_url), "{err}");
}

#[test]
fn a_zone_that_was_away_converges_without_rewriting_what_did_not_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let global = GlobalCp::start(dir.path(), None).expect("global-cp");
    let mut zone = ZoneCp::start_federated("zone-1", &dir.path().join("z1"), &global).expect("zone");
    for name in ["same", "changed", "deleted"] {
        apply(&global.api_url, &trace(name, "a:4317"));
    }
    wait_on_zone(&zone, "deleted arrives", |t| t.is_some());
    zone.kill_9().expect("kill zone");

    apply(&global.api_url, &trace("changed", "b:4317"));
    ok(meshctl(&global.api_url, &["delete", "meshtrace", "deleted"], None).expect("delete"));
    apply(&global.api_url, &trace("created", "c:4317"));

    let zone = zone.restart().expect("restart zone");
    wait_on_zone(&zone, "created arrives", |t| t.is_some());
    wait_on_zone(&zone, "deleted goes", |t| t.is_none());
    let changed = on_zone(&zone, "meshtrace", "changed").expect("changed");
    assert_eq!(changed["spec"]["backends"][0]["conf"]["endpoint"], "b:4317");
    // Resuming from the applied revision: the unchanged resource was not written again.
    let same = on_zone(&zone, "meshtrace", "same").expect("same");
    assert_eq!(same["version"], 1, "{same}");
    assert_eq!(changed["version"], 2, "{changed}");
}

#[test]
fn zones_keep_what_they_have_while_global_is_down_and_catch_up_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut global = GlobalCp::start(dir.path(), None).expect("global-cp");
    let zone = ZoneCp::start_federated("zone-1", &dir.path().join("z1"), &global).expect("zone");
    apply(&global.api_url, &trace("t1", "a:4317"));
    wait_on_zone(&zone, "t1 arrives", |t| t.is_some());
    global.kill_9().expect("kill global");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        on_zone(&zone, "meshtrace", "t1").is_some(),
        "the zone keeps serving what it has"
    );
    let global = global.restart().expect("restart global");
    apply(&global.api_url, &trace("t2", "a:4317"));
    wait_on_zone(&zone, "t2 arrives", |t| t.is_some());
}

#[test]
fn zones_without_a_valid_token_for_themselves_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let global = GlobalCp::start(dir.path(), None).expect("global-cp");
    apply(&global.api_url, &trace("t1", "a:4317"));
    // A real token, but for another zone.
    let other = global.zone_token("zone-2").expect("token");
    let impostor =
        ZoneCp::start_with_token("zone-1", &dir.path().join("z1"), &global.sync_url, &other).expect("zone");
    let garbage = ZoneCp::start_with_token(
        "zone-3",
        &dir.path().join("z3"),
        &global.sync_url,
        "v1.bogus.bogus",
    )
    .expect("zone");
    // A token good for one second, used after it ran out.
    let short = ok(global
        .meshctl(&["generate", "zone-token", "--zone", "zone-5", "--valid-for", "1s"])
        .expect("meshctl"));
    std::thread::sleep(Duration::from_millis(2100));
    let expired = ZoneCp::start_with_token("zone-5", &dir.path().join("z5"), &global.sync_url, short.trim())
        .expect("zone");
    // Wait until global has refused all three (not merely until they had no time to connect).
    wait_until("the zones to be refused", Duration::from_secs(20), || {
        metric(&global.api_url, "meridian_sync_refused_total") >= 3.0
    })
    .expect("refusals counted");
    for zone in [&impostor, &garbage, &expired] {
        assert!(
            on_zone(zone, "meshtrace", "t1").is_none(),
            "{} got global's policy",
            zone.zone
        );
    }
    let (_, zones, _) = http_get(&format!("{}/zones", global.api_url));
    assert!(!zones.contains("zone-1") && !zones.contains("zone-3"), "{zones}");
    let bad = global
        .meshctl(&[
            "generate",
            "zone-token",
            "--zone",
            "zone-6",
            "--valid-for",
            "soon",
        ])
        .expect("meshctl");
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        meridian_e2e::stderr(&bad).contains("validFor"),
        "{}",
        meridian_e2e::stderr(&bad)
    );
    // And a federated zone-cp cannot start without a token at all.
    let out = std::process::Command::new(meridian_e2e::bin("zone-cp").expect("bin"))
        .args(["run", "--zone", "zone-4", "--global-address", &global.sync_url])
        .arg("--data-dir")
        .arg(dir.path().join("z4"))
        .output()
        .expect("zone-cp");
    assert!(!out.status.success());
    assert!(
        meridian_e2e::stderr(&out).contains("--zone-token-file"),
        "{}",
        meridian_e2e::stderr(&out)
    );
}

const SHORT_TIMEOUT: &str = "type: MeshTimeout\nname: short\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: MeshService, name: reg-server}\n    default:\n      http:\n        requestTimeout: 100ms\n";

#[test]
fn a_timeout_applied_on_global_takes_effect_in_both_zones_envoys_and_survives_global_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut global = GlobalCp::start(dir.path(), None).expect("global-cp");
    let z1 = ZoneCp::start_federated("zone-1", &dir.path().join("z1"), &global).expect("zone-1");
    let z2 = ZoneCp::start_federated("zone-2", &dir.path().join("z2"), &global).expect("zone-2");
    let pairs = [
        DemoPair::start(&z1).expect("zone-1 demo"),
        DemoPair::start(&z2).expect("zone-2 demo"),
    ];

    apply(&global.api_url, SHORT_TIMEOUT);
    for pair in &pairs {
        wait_until("the timeout in Envoy's config", Duration::from_secs(20), || {
            pair.demo_config_dump().contains("0.100s")
        })
        .expect("in config_dump");
        wait_until("the timeout to take effect", Duration::from_secs(10), || {
            http_get(&pair.demo_url).0 == 504
        })
        .expect("504");
    }
    ok(meshctl(&global.api_url, &["delete", "meshtimeout", "short"], None).expect("delete"));
    for pair in &pairs {
        wait_until("the timeout to go", Duration::from_secs(20), || {
            http_get(&pair.demo_url).0 == 200
        })
        .expect("200");
    }

    // Global goes away: traffic in both zones goes on, every request succeeds.
    global.kill_9().expect("kill global");
    for _ in 0..5 {
        for pair in &pairs {
            let (status, body, _) = http_get(&pair.demo_url);
            assert_eq!(status, 200, "{body}");
        }
    }
    let global = global.restart().expect("restart global");
    apply(&global.api_url, SHORT_TIMEOUT);
    for pair in &pairs {
        wait_until("edits to flow again", Duration::from_secs(30), || {
            http_get(&pair.demo_url).0 == 504
        })
        .expect("504");
    }
}

#[test]
fn a_cut_off_zone_converges_to_globals_state_when_healed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let global = GlobalCp::start(dir.path(), None).expect("global-cp");
    let sync_addr = global
        .sync_url
        .trim_start_matches("grpc://")
        .parse()
        .expect("addr");
    let chaos = meridian_testing::ChaosProxy::start(sync_addr).expect("chaos proxy");
    let token = global.zone_token("zone-2").expect("token");
    let zone = ZoneCp::start_with_token(
        "zone-2",
        &dir.path().join("z2"),
        &format!("grpc://127.0.0.1:{}", chaos.port),
        &token,
    )
    .expect("zone-2 behind the proxy");
    for name in ["same", "changed", "deleted"] {
        apply(&global.api_url, &trace(name, "a:4317"));
    }
    wait_on_zone(&zone, "deleted arrives", |t| t.is_some());

    chaos.cut();
    apply(&global.api_url, &trace("created", "a:4317"));
    apply(&global.api_url, &trace("changed", "b:4317"));
    ok(meshctl(&global.api_url, &["delete", "meshtrace", "deleted"], None).expect("delete"));
    apply(&global.api_url, &trace("changed", "c:4317"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(on_zone(&zone, "meshtrace", "created").is_none(), "the cut held");
    chaos.restore();

    wait_until("zone-2 to converge", Duration::from_secs(40), || {
        on_zone(&zone, "meshtrace", "created").is_some() && on_zone(&zone, "meshtrace", "deleted").is_none()
    })
    .expect("converged");
    let names = |url: &str| -> Vec<String> {
        let out = ok(meshctl(url, &["get", "meshtraces", "-o", "json"], None).expect("list"));
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| format!("{}={}", i["name"], i["spec"]["backends"][0]["conf"]["endpoint"]))
            .collect()
    };
    assert_eq!(
        names(&zone.api_url),
        names(&global.api_url),
        "the zone holds exactly global's state"
    );
    assert_eq!(
        on_zone(&zone, "meshtrace", "same").expect("same")["version"],
        1,
        "unchanged resources were not rewritten"
    );
}

#[test]
fn the_sync_port_speaks_tls_to_zones_that_trust_its_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let server_key = rcgen::KeyPair::generate().expect("key");
    let server_params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("params");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server = server_params
        .signed_by(&server_key, &issuer)
        .expect("server cert");
    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write");
        path
    };
    let (ca_file, cert, key) = (
        write("ca.pem", ca.pem()),
        write("sync.pem", server.pem()),
        write("sync.key", server_key.serialize_pem()),
    );
    let other_ca = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .self_signed(&rcgen::KeyPair::generate().expect("key"))
        .expect("ca");
    let wrong_ca = write("other-ca.pem", other_ca.pem());

    let global = GlobalCp::start_tls(dir.path(), &cert, &key).expect("global-cp with TLS");
    assert!(global.sync_url.starts_with("grpcs://"));
    apply(&global.api_url, &trace("t1", "a:4317"));
    let token = global.zone_token("zone-1").expect("token");
    let zone = ZoneCp::start_federated_with(
        "zone-1",
        &dir.path().join("z1"),
        &global.sync_url,
        &token,
        Some(&ca_file),
    )
    .expect("zone");
    wait_on_zone(&zone, "t1 arrives", |t| t.is_some());
    // A zone that trusts another CA does not talk to this global.
    let token = global.zone_token("zone-2").expect("token");
    let stranger = ZoneCp::start_federated_with(
        "zone-2",
        &dir.path().join("z2"),
        &global.sync_url,
        &token,
        Some(&wrong_ca),
    )
    .expect("zone");
    wait_until("the stranger's sync to fail", Duration::from_secs(20), || {
        metric(&stranger.api_url, "meridian_sync_failures_total") >= 1.0
    })
    .expect("a failed attempt");
    assert!(on_zone(&stranger, "meshtrace", "t1").is_none());
    assert_eq!(metric(&zone.api_url, "meridian_sync_connected"), 1.0);
}

fn dataplane(name: &str, labels: &str) -> String {
    format!(
        "type: Dataplane\nname: {name}\n{labels}networking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    tags: {{kuma.io/service: web}}\n"
    )
}

/// A resource as `api_url` has it, as JSON (`None` on 404).
fn get(api_url: &str, path: &str) -> Option<serde_json::Value> {
    let (code, body, _) = http_get(&format!("{api_url}{path}"));
    (code == 200).then(|| serde_json::from_str(&body).expect("json"))
}

/// Opens a sync stream as `zone` with `token`, sends `inventory` as its full inventory, and
/// keeps the stream open until `done` returns true (or 20 s pass).
fn report_inventory(sync_url: &str, zone: &str, token: &str, inventory: &[String], done: impl Fn() -> bool) {
    use meridian_proto::sync::{Change, Hello, Inventory, ZoneMessage, zone_message};
    use meridian_proto::sync_service::global_sync_client::GlobalSyncClient;
    let changes: Vec<Change> = inventory
        .iter()
        .enumerate()
        .map(|(i, yaml)| {
            let r = meridian_model::parse_one(yaml, meridian_model::Format::Yaml)
                .expect("valid")
                .resource;
            Change::upsert(i as i64 + 1, &r)
        })
        .collect();
    let messages = [
        zone_message::Kind::Hello(Hello {
            zone: zone.into(),
            applied_revision: 0,
            version: "test".into(),
        }),
        zone_message::Kind::Inventory(Inventory { full: true, changes }),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let url = sync_url.replace("grpc://", "http://");
        let mut client = GlobalSyncClient::connect(url).await.expect("connect");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        for kind in messages {
            tx.send(ZoneMessage { kind: Some(kind) }).await.expect("queue");
        }
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        let _inbound = client.stream(request).await.expect("stream");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(tx);
    });
}

#[test]
fn zone_inventory_is_pinned_to_its_zone_and_relayed_to_the_others_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let global = GlobalCp::start(dir.path(), None).expect("global-cp");
    let z1 = ZoneCp::start_federated("zone-1", &dir.path().join("z1"), &global).expect("zone-1");
    let z2 = ZoneCp::start_federated("zone-2", &dir.path().join("z2"), &global).expect("zone-2");
    apply(&z1.api_url, &dataplane("web-1", ""));
    apply(
        &z1.api_url,
        "type: ZoneIngress\nname: ingress\nnetworking:\n  address: 127.0.0.1\n  port: 10001\n  advertisedAddress: 127.0.0.2\n  advertisedPort: 10002\n",
    );
    let pinned = "/meshes/default/dataplanes/zone-1.web-1";
    wait_until("global has zone-1's Dataplane", Duration::from_secs(20), || {
        get(&global.api_url, pinned).is_some()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let on_global = get(&global.api_url, pinned).expect("pinned");
    assert_eq!(on_global["labels"]["kuma.io/zone"], "zone-1", "{on_global}");
    wait_until("zone-2 has zone-1's inventory", Duration::from_secs(20), || {
        get(&z2.api_url, pinned).is_some() && get(&z2.api_url, "/zoneingresses/zone-1.ingress").is_some()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        get(&z2.api_url, "/zoneingresses/zone-1.ingress").expect("ingress")["zone"],
        "zone-1"
    );
    assert!(
        get(&z1.api_url, pinned).is_none(),
        "nothing comes back to its origin"
    );
    let zone1 = get(&global.api_url, "/zones/zone-1").expect("zone-1");
    assert_eq!(zone1["dataplanes"], 1, "{zone1}");
    assert_eq!(
        zone1["ingresses"],
        serde_json::json!(["127.0.0.2:10002"]),
        "{zone1}"
    );

    // zone-3 claims zone-1's Dataplane three ways, and reports one of its own.
    let token = global.zone_token("zone-3").expect("token");
    let refused = || {
        get(&global.api_url, "/zones/zone-3")
            .is_some_and(|z| z["inventoryRefused"].as_array().is_some_and(|r| r.len() == 3))
    };
    report_inventory(
        &global.sync_url,
        "zone-3",
        &token,
        &[
            dataplane("web-1", "labels: {kuma.io/zone: zone-1}\n"),
            dataplane("zone-1.web-1", "labels: {kuma.io/zone: zone-1}\n"),
            "type: ZoneIngress\nname: ingress\nzone: zone-1\nnetworking: {address: 127.0.0.3, port: 1}\n"
                .into(),
            dataplane("own", ""),
        ],
        refused,
    );
    let zone3 = get(&global.api_url, "/zones/zone-3").expect("zone-3");
    assert!(refused(), "{zone3}");
    let after = get(&global.api_url, pinned).expect("still there");
    assert_eq!(after, on_global, "zone-1's Dataplane is untouched");
    let own = get(&global.api_url, "/meshes/default/dataplanes/zone-3.own").expect("zone-3's own");
    assert_eq!(own["labels"]["kuma.io/zone"], "zone-3");
    assert!(get(&global.api_url, "/zoneingresses/zone-3.ingress").is_none());

    // Deleted on its zone: gone from global and the other zones.
    ok(z1
        .meshctl(&["delete", "dataplane", "web-1"], None)
        .expect("delete"));
    wait_until(
        "zone-1's Dataplane goes everywhere",
        Duration::from_secs(20),
        || get(&global.api_url, pinned).is_none() && get(&z2.api_url, pinned).is_none(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}
