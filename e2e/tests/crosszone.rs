//! Cross-zone drills: zones federated by a global control plane, each with its zone ingress,
//! reg-server running in several zones, demo's sidecar in zone-1 calling it. Real global-cp,
//! zone-cp, meridian-dp and Envoy. Every drill prints requests sent, failed, served per zone,
//! and the time traffic took to shift.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_e2e::{DemoApp, GlobalCp, Sidecar, ZoneCp, http_get, http_post, meshctl, ok};
use meridian_testing::{ChaosProxy, free_port, wait_until};

const MESH: &str = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n";
const RETRY: &str = "type: MeshRetry\nname: retry-reg\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: MeshService, name: reg-server}\n    default:\n      http:\n        numRetries: 5\n        retryOn: [5xx, ConnectFailure, Reset]\n";

/// One zone: its control plane, its ingress, and a reg-server instance with its sidecar.
struct Zone {
    name: String,
    cp: ZoneCp,
    /// The link other zones reach the ingress through (the ingress advertises it).
    link: ChaosProxy,
    _ingress: Sidecar,
    reg: DemoApp,
    _reg_sidecar: Sidecar,
    _files: tempfile::TempDir,
}

fn zone(name: &str, dir: &std::path::Path, global: &GlobalCp) -> Zone {
    let cp = ZoneCp::start_federated(name, &dir.join(name), global).expect("zone-cp");
    let files = tempfile::tempdir().expect("tempdir");
    let ingress_file = files.path().join("ingress.yaml");
    let port = free_port().expect("port");
    let link = ChaosProxy::start(([127, 0, 0, 1], port).into()).expect("link");
    std::fs::write(
        &ingress_file,
        format!(
            "type: ZoneIngress\nname: ingress-1\nnetworking:\n  address: 127.0.0.1\n  port: {port}\n  advertisedAddress: 127.0.0.1\n  advertisedPort: {}\n",
            link.port
        ),
    )
    .expect("write");
    let ingress = Sidecar::start(
        &cp,
        &[
            "--proxy-type",
            "ingress",
            "--dataplane-file",
            &ingress_file.display().to_string(),
        ],
    )
    .expect("ingress");
    let reg = DemoApp::start(&["--name", "reg-server", "--zone", name]).expect("reg-server");
    // Each zone's instance is tagged with its zone as its version, for routes to pick.
    let reg_file = files.path().join("reg-server.yaml");
    std::fs::write(
        &reg_file,
        format!(
            "type: Dataplane\nname: reg-server-{name}\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {}\n    servicePort: {}\n    tags: {{kuma.io/service: reg-server, kuma.io/protocol: http, version: {name}}}\n",
            free_port().expect("port"),
            reg.port
        ),
    )
    .expect("write");
    let reg_sidecar = Sidecar::start(
        &cp,
        &[
            "--dataplane-file",
            &reg_file.display().to_string(),
            // reg-server's `/` does no work: a fair health check, which catches a 500.
            "--probe-http-path",
            "/",
        ],
    )
    .expect("reg-server sidecar");
    Zone {
        name: name.to_owned(),
        cp,
        link,
        _ingress: ingress,
        reg,
        _reg_sidecar: reg_sidecar,
        _files: files,
    }
}

struct World {
    global: GlobalCp,
    zones: Vec<Zone>,
    _demo: Sidecar,
    /// demo's outbound to reg-server, in zone-1.
    url: String,
    _dir: tempfile::TempDir,
}

impl World {
    fn start(zone_names: &[&str]) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let global = GlobalCp::start(dir.path(), None).expect("global-cp");
        for doc in [MESH, RETRY] {
            ok(meshctl(&global.api_url, &["apply", "-f", "-"], Some(doc)).expect("meshctl"));
        }
        let zones: Vec<Zone> = zone_names.iter().map(|z| zone(z, dir.path(), &global)).collect();
        let out = free_port().expect("port");
        let demo = Sidecar::start(
            &zones[0].cp,
            &[
                "--name",
                "demo-1",
                "--inbound",
                &format!(
                    "{}:{}:demo:http",
                    free_port().expect("port"),
                    free_port().expect("port")
                ),
                "--outbound",
                &format!("{out}:reg-server"),
            ],
        )
        .expect("demo sidecar");
        let world = World {
            global,
            zones,
            _demo: demo,
            url: format!("http://127.0.0.1:{out}/"),
            _dir: dir,
        };
        world.wait_for_zones(zone_names.len() - 1);
        world
    }

    fn apply(&self, yaml: &str) {
        ok(meshctl(&self.global.api_url, &["apply", "-f", "-"], Some(yaml)).expect("meshctl"));
    }

    /// The other zones in demo's endpoints for reg-server, as zone-1 generated them.
    fn remote_zones(&self) -> std::collections::BTreeSet<String> {
        let config = self.zones[0]
            .cp
            .proxy_config("default", "demo-1")
            .unwrap_or_default();
        config["endpoints"]["reg-server"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["zone"].as_str())
            .filter(|z| *z != self.zones[0].name)
            .map(str::to_owned)
            .collect()
    }

    /// Waits until demo's cluster reaches `others` other zones through their ingresses.
    fn wait_for_zones(&self, others: usize) {
        wait_until("other zones in demo's endpoints", Duration::from_secs(30), || {
            self.remote_zones().len() >= others
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}", self.remote_zones()));
    }
}

/// Which zone answered (`None` for a failed call).
fn call(url: &str) -> Option<String> {
    let (status, body, _) = http_get(url);
    if status != 200 {
        eprintln!("call failed: {status} {body}");
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["zone"].as_str().map(str::to_owned)
}

/// When each call answered, and which zone served it.
type Log = Arc<Mutex<Vec<(Instant, Option<String>)>>>;

/// Sent, failed, served per zone, and the time until the last answer not from the target zone.
type Outcome = (usize, usize, BTreeMap<String, usize>, Duration);

/// Calls at about 20 per second in the background, recording when each answered and from where.
struct Load {
    stop: Arc<AtomicBool>,
    log: Log,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(url: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l, url) = (stop.clone(), log.clone(), url.to_owned());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let began = Instant::now();
                let zone = call(&url);
                l.lock().expect("log").push((Instant::now(), zone));
                std::thread::sleep(Duration::from_millis(50).saturating_sub(began.elapsed()));
            }
        });
        Load {
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// Stops, and reports what happened after `since`: (sent, failed, served per zone, the time
    /// from `since` to the last answer not from `to`).
    fn finish(mut self, since: Instant, to: &str) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let log = self.log.lock().expect("log");
        let after: Vec<&(Instant, Option<String>)> = log.iter().filter(|(t, _)| *t >= since).collect();
        let mut per_zone = BTreeMap::new();
        let mut failed = 0;
        let mut shift = Duration::ZERO;
        for (t, zone) in &after {
            match zone {
                Some(z) => *per_zone.entry(z.clone()).or_insert(0) += 1,
                None => failed += 1,
            }
            if zone.as_deref() != Some(to) {
                shift = t.duration_since(since);
            }
        }
        (after.len(), failed, per_zone, shift)
    }
}

fn report(drill: &str, (sent, failed, per_zone, shift): &Outcome) {
    println!(
        "{drill}: {sent} requests, {failed} failed, served per zone {per_zone:?}, shifted in {:.2}s",
        shift.as_secs_f64()
    );
}

/// Steady state, then zone-1's reg-server killed, brought back, and failing its health check.
#[test]
fn traffic_fails_over_to_another_zone_and_comes_back() {
    let mut w = World::start(&["zone-1", "zone-2"]);

    // Steady state: local.
    let mut local = 0;
    for _ in 0..100 {
        if call(&w.url).as_deref() == Some("zone-1") {
            local += 1;
        }
    }
    println!("steady state: 100 requests, {local} served in zone-1");
    assert!(local >= 99, "only {local} of 100 were served locally");

    // Kill zone-1's only reg-server under load: retries move to zone-2 at once, then
    // readiness takes zone-1 out of the endpoints.
    let load = Load::start(&w.url);
    std::thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    w.zones[0].reg.kill().expect("kill");
    std::thread::sleep(Duration::from_secs(5));
    let outcome = load.finish(killed, "zone-2");
    report("kill zone-1's reg-server", &outcome);
    assert_eq!(outcome.1, 0, "client-visible errors during failover");
    assert!(
        outcome.3 <= Duration::from_secs(2),
        "took {:?} to shift",
        outcome.3
    );
    // What zone-1 told demo's proxy: its own instance unhealthy, zone-2's ingress next.
    let table = ok(w.zones[0]
        .cp
        .meshctl(&["inspect", "dataplane", "demo-1", "--endpoints"], None)
        .expect("meshctl"));
    println!("{table}");
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("reg-server ")).collect();
    assert!(
        rows.iter()
            .any(|r| r.contains("zone-1") && r.contains("unhealthy")),
        "{table}"
    );
    assert!(
        rows.iter().any(|r| r.contains("zone-2")
            && r.split_whitespace().nth(3) == Some("1")
            && r.ends_with(" healthy")),
        "{table}"
    );

    // Back: traffic returns home.
    let load = Load::start(&w.url);
    let back = Instant::now();
    w.zones[0].reg.restart().expect("restart");
    wait_until("traffic to come back to zone-1", Duration::from_secs(15), || {
        call(&w.url).as_deref() == Some("zone-1")
    })
    .expect("back home");
    std::thread::sleep(Duration::from_secs(2));
    let outcome = load.finish(back, "zone-1");
    report("zone-1's reg-server back", &outcome);
    assert_eq!(outcome.1, 0);

    // Still running but failing (500): same failover.
    let load = Load::start(&w.url);
    std::thread::sleep(Duration::from_secs(1));
    let failing = Instant::now();
    assert!(http_post(&w.zones[0].reg.url("/fail?status=500")));
    std::thread::sleep(Duration::from_secs(5));
    let outcome = load.finish(failing, "zone-2");
    report("zone-1's reg-server answering 500", &outcome);
    assert_eq!(outcome.1, 0);
    assert!(
        outcome.3 <= Duration::from_secs(2),
        "took {:?} to shift",
        outcome.3
    );
    assert!(http_post(&w.zones[0].reg.url("/recover")));
    wait_until(
        "traffic to come back after recovery",
        Duration::from_secs(15),
        || call(&w.url).as_deref() == Some("zone-1"),
    )
    .expect("back home");
}

/// Three zones: a rule prefers zone-3; with zone-3's ingress gone, zone-2; `None` keeps it local.
#[test]
fn failover_follows_the_zone_order_the_user_gave() {
    let mut w = World::start(&["zone-1", "zone-2", "zone-3"]);
    w.apply(
        "type: MeshLoadBalancingStrategy\nname: prefer-zone-3\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: MeshService, name: reg-server}\n    default:\n      localityAwareness:\n        crossZone:\n          failover:\n          - to: {type: Only, zones: [zone-3]}\n          - to: {type: Any}\n",
    );
    w.zones[0].reg.kill().expect("kill");
    wait_until("traffic to go to zone-3", Duration::from_secs(15), || {
        call(&w.url).as_deref() == Some("zone-3")
    })
    .expect("zone-3");
    let load = Load::start(&w.url);
    let since = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let outcome = load.finish(since, "zone-3");
    report("zone-1 down, zone-3 preferred", &outcome);
    assert_eq!(outcome.2.get("zone-3"), Some(&outcome.0), "{outcome:?}");

    // Cut zone-3's ingress off (it still runs and stays registered): zone-2 takes over.
    let load = Load::start(&w.url);
    let cut = Instant::now();
    w.zones[2].link.cut();
    wait_until("traffic to go to zone-2", Duration::from_secs(15), || {
        call(&w.url).as_deref() == Some("zone-2")
    })
    .expect("zone-2");
    std::thread::sleep(Duration::from_secs(2));
    let outcome = load.finish(cut, "zone-2");
    report("zone-3's ingress cut off", &outcome);
    assert_eq!(outcome.1, 0, "{outcome:?}");
    // Zone-to-zone health: zone-1 found zone-3's ingress unreachable and dropped the zone.
    wait_until(
        "zone-3 to leave demo's endpoints",
        Duration::from_secs(10),
        || !w.remote_zones().contains("zone-3"),
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", w.remote_zones()));
    w.zones[2].link.restore();
    wait_until("zone-3 to come back", Duration::from_secs(10), || {
        w.remote_zones().contains("zone-3")
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", w.remote_zones()));

    // `None`: the user wants traffic to stay local, even failing.
    w.apply(
        "type: MeshLoadBalancingStrategy\nname: prefer-zone-3\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: MeshService, name: reg-server}\n    default:\n      localityAwareness:\n        crossZone:\n          failover:\n          - to: {type: None}\n",
    );
    wait_until(
        "traffic to stay in zone-1, failing",
        Duration::from_secs(15),
        || call(&w.url).is_none(),
    )
    .expect("local only");
    let load = Load::start(&w.url);
    let since = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let outcome = load.finish(since, "zone-1");
    report("failover None with zone-1 down", &outcome);
    assert_eq!(outcome.1, outcome.0, "nothing leaves zone-1: {outcome:?}");
}

#[test]
fn a_route_sends_to_a_subset_in_another_zone_through_its_ingress() {
    let w = World::start(&["zone-1", "zone-2"]);
    // x-version: zone-2 goes to the instances tagged so, in zone-2 alone; the rest stay home.
    w.apply("type: MeshHTTPRoute\nname: by-zone\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: reg-server}\n    rules:\n    - matches: [{headers: [{name: x-version, value: zone-2}]}]\n      default:\n        backendRefs: [{kind: MeshServiceSubset, name: reg-server, tags: {version: zone-2}}]\n    - matches: [{path: {type: PathPrefix, value: /}}]\n      default:\n        backendRefs: [{kind: MeshServiceSubset, name: reg-server, tags: {version: zone-1}}]\n");
    let answered_by = |header: Option<&str>| -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for _ in 0..50 {
            let mut cmd = std::process::Command::new("curl");
            cmd.args(["-s", "--max-time", "10", &w.url]);
            if let Some(h) = header {
                cmd.args(["-H", h]);
            }
            let body = cmd
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let zone = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["zone"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("failed: {body}"));
            *seen.entry(zone).or_default() += 1;
        }
        seen
    };
    wait_until(
        "the route to reach zone-2's subset",
        Duration::from_secs(30),
        || {
            answered_by(Some("x-version: zone-2"))
                .keys()
                .eq(["zone-2"].iter())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", answered_by(Some("x-version: zone-2"))));
    let remote = answered_by(Some("x-version: zone-2"));
    let home = answered_by(None);
    println!("x-version: zone-2 -> {remote:?}; no header -> {home:?}");
    assert_eq!(remote, BTreeMap::from([("zone-2".into(), 50)]));
    assert_eq!(home, BTreeMap::from([("zone-1".into(), 50)]));
    // The subset's endpoints: none here, zone-2's ingress next.
    let config = w.zones[0]
        .cp
        .proxy_config("default", "demo-1")
        .unwrap_or_default();
    let subset = &config["endpoints"]["reg-server{version=zone-2}"];
    println!("reg-server{{version=zone-2}} endpoints: {subset}");
    assert!(
        subset
            .as_array()
            .is_some_and(|e| e.iter().all(|e| e["zone"] == "zone-2") && !e.is_empty()),
        "{subset}"
    );
}
