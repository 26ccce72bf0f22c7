//! Traffic policies with real Envoy: MeshHTTPRoute (header matches, weighted splits over
//! subsets, rewrites, header modifiers, redirects), MeshFaultInjection and MeshRateLimit. A
//! standalone zone, `backend` in versions v1 and v2 (each a demo-app beside its sidecar), and a
//! client sidecar whose outbound the drills call. Each drill prints its counts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meridian_e2e::{Answer, DemoApp, Sidecar, ZoneCp, ok, requests};
use meridian_testing::{free_port, wait_until};

struct Mesh {
    cp: ZoneCp,
    /// The client's outbound to backend.
    url: String,
    _apps: Vec<DemoApp>,
    /// The backends' sidecars, then the client's.
    sidecars: Vec<Sidecar>,
    _dir: tempfile::TempDir,
}

/// A zone with backend (HTTP) in each of `versions` and a client calling it.
fn mesh(versions: &[&str]) -> Mesh {
    mesh_of(versions, "http")
}

/// A zone with backend in each of `versions`, speaking `protocol`, and a client calling it.
fn mesh_of(versions: &[&str], protocol: &str) -> Mesh {
    mesh_with(versions, protocol, "0ms")
}

/// ... its instances answering after `delay`.
fn mesh_with(versions: &[&str], protocol: &str, delay: &str) -> Mesh {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ZoneCp::start("zone-1", &dir.path().join("zone")).expect("zone-cp");
    let (mut apps, mut sidecars) = (Vec::new(), Vec::new());
    for version in versions {
        let app = DemoApp::start(&[
            "--name",
            "backend",
            "--instance",
            &format!("backend-{version}"),
            "--delay",
            delay,
        ])
        .expect("app");
        let file = dir.path().join(format!("backend-{version}.yaml"));
        let inbound = free_port().expect("port");
        std::fs::write(
            &file,
            format!(
                "type: Dataplane\nname: backend-{version}\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {inbound}\n    servicePort: {}\n    tags:\n      kuma.io/service: backend\n      kuma.io/protocol: {protocol}\n      version: {version}\n",
                app.port
            ),
        )
        .expect("write");
        sidecars
            .push(Sidecar::start(&cp, &["--dataplane-file", &file.display().to_string()]).expect("sidecar"));
        apps.push(app);
    }
    let client = DemoApp::start(&["--name", "client"]).expect("client");
    let (inbound, outbound) = (free_port().expect("port"), free_port().expect("port"));
    sidecars.push(
        Sidecar::start(
            &cp,
            &[
                "--name",
                "client-1",
                "--inbound",
                &format!("{inbound}:{}:client:http", client.port),
                "--outbound",
                &format!("{outbound}:backend"),
            ],
        )
        .expect("client sidecar"),
    );
    apps.push(client);
    let url = format!("http://127.0.0.1:{outbound}");
    wait_until(
        "every backend to answer through the mesh",
        Duration::from_secs(30),
        || {
            let seen = instances(&connections(&format!("{url}/"), 20));
            versions
                .iter()
                .all(|v| seen.contains_key(&format!("backend-{v}")))
        },
    )
    .expect("backends");
    Mesh {
        cp,
        url,
        _apps: apps,
        sidecars,
        _dir: dir,
    }
}

impl Mesh {
    fn apply(&self, yaml: &str) {
        ok(self
            .cp
            .meshctl(&["apply", "-f", "-"], Some(yaml))
            .expect("meshctl"));
    }
}

/// How many answers each instance gave (`status NNN` for answers that are not a 200).
fn instances(answers: &[Answer]) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for a in answers {
        let key = match a.status {
            200 => serde_json::from_str::<serde_json::Value>(&a.body)
                .ok()
                .and_then(|v| v["instance"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "unreadable".into()),
            other => format!("status {other}"),
        };
        *seen.entry(key).or_default() += 1;
    }
    seen
}

fn share(seen: &BTreeMap<String, usize>, key: &str, total: usize) -> f64 {
    100.0 * *seen.get(key).unwrap_or(&0) as f64 / total as f64
}

fn split(v1: u32, v2: u32) -> String {
    format!(
        "type: MeshHTTPRoute\nname: backend-route\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {{kind: MeshService, name: backend}}\n    rules:\n    - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n      default:\n        backendRefs:\n        - {{kind: MeshServiceSubset, name: backend, tags: {{version: v1}}, weight: {v1}}}\n        - {{kind: MeshServiceSubset, name: backend, tags: {{version: v2}}, weight: {v2}}}\n"
    )
}

const BY_HEADER: &str = "type: MeshHTTPRoute\nname: backend-route\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: MeshService, name: backend}\n    rules:\n    - matches:\n      - headers: [{type: Exact, name: x-version, value: v2}]\n      default:\n        backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v2}}]\n    - matches: [{path: {type: PathPrefix, value: /}}]\n      default:\n        backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v1}}]\n";

#[test]
fn header_matches_and_weighted_splits_route_to_subsets() {
    let m = mesh(&["v1", "v2"]);
    let root = format!("{}/", m.url);
    m.apply(BY_HEADER);
    wait_until("the header route to take effect", Duration::from_secs(15), || {
        instances(&requests(&root, 20, &[])) == BTreeMap::from([("backend-v1".into(), 20)])
    })
    .expect("route");
    let with = instances(&requests(&root, 200, &[("x-version", "v2")]));
    let without = instances(&requests(&root, 200, &[]));
    println!("x-version: v2 -> {with:?}; no header -> {without:?}");
    assert_eq!(with, BTreeMap::from([("backend-v2".into(), 200)]));
    assert_eq!(without, BTreeMap::from([("backend-v1".into(), 200)]));

    m.apply(&split(80, 20));
    wait_until("the split to take effect", Duration::from_secs(15), || {
        instances(&requests(&root, 50, &[("x-version", "v2")])).contains_key("backend-v1")
    })
    .expect("split");
    let seen = instances(&requests(&root, 1000, &[]));
    let v1 = share(&seen, "backend-v1", 1000);
    println!("80/20 over 1000 requests: {seen:?} ({v1:.1}% to v1)");
    assert!((75.0..=85.0).contains(&v1), "{seen:?}");

    // The split changes to 50/50 while requests flow: none of them fails.
    let url = root.clone();
    let load = std::thread::spawn(move || requests(&url, 1500, &[]));
    std::thread::sleep(Duration::from_millis(300));
    m.apply(&split(50, 50));
    let during = instances(&load.join().expect("load"));
    println!("while changing to 50/50: {during:?}");
    assert!(
        during.keys().all(|k| k.starts_with("backend-")),
        "a request failed: {during:?}"
    );
    let seen = instances(&requests(&root, 1000, &[]));
    let v1 = share(&seen, "backend-v1", 1000);
    println!("50/50 over 1000 requests: {seen:?} ({v1:.1}% to v1)");
    assert!((45.0..=55.0).contains(&v1), "{seen:?}");

    let rules = ok(m
        .cp
        .meshctl(&["inspect", "dataplane", "client-1", "--rules"], None)
        .expect("meshctl"));
    println!("{rules}");
    assert!(
        rules.contains("MeshHTTPRoute") && rules.contains("backend-route"),
        "{rules}"
    );
}

const REWRITES: &str = "type: MeshHTTPRoute\nname: rewrites\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: backend}\n    rules:\n    - matches: [{path: {type: PathPrefix, value: /old}}]\n      default:\n        filters:\n        - type: URLRewrite\n          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}\n        - type: RequestHeaderModifier\n          requestHeaderModifier: {set: [{name: x-routed, value: 'yes'}], remove: [x-secret]}\n        - type: ResponseHeaderModifier\n          responseHeaderModifier: {add: [{name: x-served-by, value: mesh}]}\n    - matches: [{path: {type: Exact, value: /moved}}]\n      default:\n        filters:\n        - type: RequestRedirect\n          requestRedirect: {statusCode: 301, hostname: example.com, path: {type: ReplaceFullPath, replaceFullPath: /elsewhere}}\n    - matches: [{path: {type: RegularExpression, value: '^/re/[a-z]+/[0-9]+$'}, queryParams: [{type: Exact, name: q, value: '1'}]}]\n      default:\n        filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /regex-matched}}}]\n    - matches: [{path: {type: Exact, value: /mirrored}}]\n      default:\n        filters:\n        - type: RequestMirror\n          requestMirror: {backendRef: {kind: MeshServiceSubset, name: backend, tags: {version: v2}}}\n        backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v1}}]\n";

/// `curl -i`: the status line and headers, then the body.
fn curl_i(url: &str, headers: &[&str]) -> String {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-i", "--max-time", "10", url]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    String::from_utf8_lossy(&cmd.output().expect("curl").stdout).into_owned()
}

#[test]
fn rewrites_header_modifiers_redirects_and_mirrors_are_seen() {
    let m = mesh(&["v1", "v2"]);
    m.apply(REWRITES);
    let old = format!("{}/old/x?q=1", m.url);
    wait_until("the rewrite to take effect", Duration::from_secs(15), || {
        curl_i(&old, &[]).contains("\"path\":\"/new/x?q=1\"")
    })
    .expect("rewrite");
    let answer = curl_i(&old, &["x-secret: s3cret"]);
    println!("{answer}");
    let body: serde_json::Value =
        serde_json::from_str(answer.rsplit("\r\n\r\n").next().unwrap_or_default()).expect("json");
    assert_eq!(body["path"], "/new/x?q=1", "the app sees the rewritten path");
    assert_eq!(body["headers"]["x-routed"], "yes", "the app sees the set header");
    assert!(
        body["headers"].get("x-secret").is_none(),
        "the removed header is gone: {body}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("x-served-by: mesh"),
        "{answer}"
    );

    let moved = curl_i(&format!("{}/moved", m.url), &[]);
    println!("{moved}");
    assert!(moved.starts_with("HTTP/1.1 301"), "{moved}");
    assert!(
        moved
            .to_ascii_lowercase()
            .contains("location: http://example.com/elsewhere"),
        "{moved}"
    );

    // A regex and a query parameter, and a full-path rewrite; Envoy took it all.
    let re = curl_i(&format!("{}/re/abc/123?q=1", m.url), &[]);
    assert!(re.contains("\"path\":\"/regex-matched?q=1\""), "{re}");
    let other = curl_i(&format!("{}/re/abc/123?q=2", m.url), &[]);
    assert!(other.contains("\"path\":\"/re/abc/123?q=2\""), "{other}");
    let config = m.cp.proxy_config("default", "client-1").expect("_config");
    assert_eq!(config["nacks"], 0, "{config}");

    // A mirror: v1 answers, v2 gets a copy of every request.
    let client = m.sidecars.last().expect("client sidecar");
    let mirrored = |client: &Sidecar| -> u64 {
        let (_, stats, _) = meridian_e2e::http_get(&format!("http://127.0.0.1:{}/stats", client.admin_port));
        stats
            .lines()
            .find_map(|l| l.strip_prefix("cluster.backend{version=v2}.upstream_rq_total: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let before = mirrored(client);
    let answers = instances(&requests(&format!("{}/mirrored", m.url), 20, &[]));
    wait_until("the copies to reach v2", Duration::from_secs(10), || {
        mirrored(client) >= before + 20
    })
    .unwrap_or_else(|e| panic!("{e}: {} copies", mirrored(client) - before));
    println!(
        "/mirrored: answers {answers:?}; copies to v2: {}",
        mirrored(client) - before
    );
    assert_eq!(answers, BTreeMap::from([("backend-v1".into(), 20)]));
}

fn p50(answers: &[Answer]) -> Duration {
    let mut took: Vec<Duration> = answers.iter().map(|a| a.took).collect();
    took.sort();
    took[took.len() / 2]
}

#[test]
fn faults_abort_a_share_of_requests_and_delay_them() {
    let m = mesh(&["v1"]);
    let root = format!("{}/", m.url);
    let before = p50(&requests(&root, 50, &[]));
    m.apply("type: MeshFaultInjection\nname: faults\nspec:\n  targetRef: {kind: MeshService, name: backend}\n  from:\n  - targetRef: {kind: Mesh}\n    default:\n      http:\n      - abort: {httpStatus: 503, percentage: 50}\n");
    wait_until("aborts to start", Duration::from_secs(15), || {
        instances(&requests(&root, 20, &[])).contains_key("status 503")
    })
    .expect("abort");
    let seen = instances(&requests(&root, 1000, &[]));
    let aborted = share(&seen, "status 503", 1000);
    println!("50% abort over 1000 requests: {seen:?} ({aborted:.1}% 503)");
    assert!((45.0..=55.0).contains(&aborted), "{seen:?}");

    m.apply("type: MeshFaultInjection\nname: faults\nspec:\n  targetRef: {kind: MeshService, name: backend}\n  from:\n  - targetRef: {kind: Mesh}\n    default:\n      http:\n      - delay: {value: 200ms, percentage: 100}\n");
    // Connections opened under the abort conf serve on until they drain (1 s here): wait
    // until a run of answers is all delayed and none aborted.
    wait_until("delays to replace the aborts", Duration::from_secs(15), || {
        requests(&root, 10, &[])
            .iter()
            .all(|a| a.status == 200 && a.took >= Duration::from_millis(150))
    })
    .expect("delay");
    let delayed = requests(&root, 50, &[]);
    assert!(delayed.iter().all(|a| a.status == 200));
    let after = p50(&delayed);
    let added = after.saturating_sub(before);
    println!("200 ms delay: p50 {before:?} -> {after:?} (+{added:?})");
    assert!(
        (Duration::from_millis(170)..=Duration::from_millis(230)).contains(&added),
        "p50 rose by {added:?}"
    );
}

#[test]
fn a_rate_limit_answers_429_beyond_its_rate() {
    let m = mesh(&["v1"]);
    let root = format!("{}/", m.url);
    m.apply("type: MeshRateLimit\nname: limit\nspec:\n  targetRef: {kind: MeshService, name: backend}\n  rules:\n  - default:\n      local:\n        http:\n          requestRate: {num: 10, interval: 1s}\n          onRateLimit: {status: 429, headers: {set: [{name: x-rate-limited, value: 'true'}]}}\n");
    wait_until(
        "the limit to take effect (its bucket drained)",
        Duration::from_secs(15),
        || instances(&requests(&root, 30, &[])).contains_key("status 429"),
    )
    .expect("limit");
    // A token comes back every 100 ms: drain the bucket, then look at the answer that is over.
    let mut limited = String::new();
    wait_until("a limited answer", Duration::from_secs(10), || {
        requests(&root, 15, &[]);
        limited = curl_i(&root, &[]);
        limited.starts_with("HTTP/1.1 429")
    })
    .unwrap_or_else(|e| panic!("{e}: {limited}"));
    assert!(limited.contains("x-rate-limited: true"), "{limited}");
    // A 5 s burst, as fast as one client goes.
    let started = Instant::now();
    let mut answers = Vec::new();
    while started.elapsed() < Duration::from_secs(5) {
        answers.extend(requests(&root, 20, &[]));
    }
    let window = started.elapsed().as_secs_f64();
    let seen = instances(&answers);
    let passed = *seen.get("backend-v1").unwrap_or(&0) as f64;
    let expected = 10.0 * window;
    println!(
        "10/s over {window:.2} s: {} requests, {seen:?}; {passed} passed against {expected:.0} expected",
        answers.len()
    );
    assert!(
        (passed - expected).abs() <= expected * 0.1,
        "{passed} passed, {expected:.0} expected: {seen:?}"
    );
    assert_eq!(
        seen.get("status 429").copied().unwrap_or(0) + passed as usize,
        answers.len(),
        "every other request was limited: {seen:?}"
    );
}

/// `n` requests, each on a connection of its own (what a TCP route splits).
fn connections(url: &str, n: usize) -> Vec<Answer> {
    (0..n)
        .map(|_| {
            let (status, body, took) = meridian_e2e::http_get(url);
            Answer { status, body, took }
        })
        .collect()
}

fn tcp_split(v1: u32, v2: u32) -> String {
    format!(
        "type: MeshTCPRoute\nname: tcp-route\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {{kind: MeshService, name: backend}}\n    rules:\n    - default:\n        backendRefs:\n        - {{kind: MeshServiceSubset, name: backend, tags: {{version: v1}}, weight: {v1}}}\n        - {{kind: MeshServiceSubset, name: backend, tags: {{version: v2}}, weight: {v2}}}\n"
    )
}

#[test]
fn a_tcp_route_splits_connections_and_an_http_route_wins_over_it() {
    let m = mesh_of(&["v1", "v2"], "tcp");
    let root = format!("{}/", m.url);
    m.apply(&tcp_split(1, 3));
    wait_until("the TCP split to take effect", Duration::from_secs(15), || {
        let seen = instances(&connections(&root, 20));
        share(&seen, "backend-v2", 20) >= 50.0
    })
    .expect("tcp split");
    let seen = instances(&connections(&root, 200));
    let v2 = share(&seen, "backend-v2", 200);
    println!("TCP 25/75 over 200 connections: {seen:?} ({v2:.1}% to v2)");
    assert!((65.0..=85.0).contains(&v2), "{seen:?}");
    drop(m);

    // On an HTTP service, a MeshTCPRoute routes until a MeshHTTPRoute does.
    let m = mesh(&["v1", "v2"]);
    let root = format!("{}/", m.url);
    m.apply(&tcp_split(0, 1));
    wait_until("the TCP route to route HTTP", Duration::from_secs(15), || {
        instances(&requests(&root, 20, &[])) == BTreeMap::from([("backend-v2".into(), 20)])
    })
    .expect("tcp route on http");
    m.apply(&split(1, 0));
    wait_until("the HTTP route to win", Duration::from_secs(15), || {
        instances(&requests(&root, 20, &[])) == BTreeMap::from([("backend-v1".into(), 20)])
    })
    .expect("http route wins");
    let seen = instances(&requests(&root, 200, &[]));
    println!("MeshTCPRoute all to v2, MeshHTTPRoute all to v1: {seen:?}");
    assert_eq!(seen, BTreeMap::from([("backend-v1".into(), 200)]));
    let rules = ok(m
        .cp
        .meshctl(&["inspect", "dataplane", "client-1", "--rules"], None)
        .expect("meshctl"));
    assert!(rules.contains("the MeshTCPRoute is left out"), "{rules}");
}

#[test]
fn a_timeout_on_a_route_cuts_its_requests_alone() {
    let m = mesh_with(&["v1"], "http", "300ms");
    m.apply("type: MeshHTTPRoute\nname: api-route\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: backend}\n    rules:\n    - matches: [{path: {type: PathPrefix, value: /api}}]\n      default: {}\n");
    m.apply("type: MeshTimeout\nname: api-timeout\nspec:\n  targetRef: {kind: MeshHTTPRoute, name: api-route}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {http: {requestTimeout: 100ms}}\n");
    let api = format!("{}/api/x", m.url);
    wait_until(
        "the route's timeout to take effect",
        Duration::from_secs(15),
        || requests(&api, 1, &[])[0].status == 504,
    )
    .expect("timeout");
    let on_route = requests(&api, 10, &[]);
    let elsewhere = requests(&format!("{}/other", m.url), 10, &[]);
    let statuses = |a: &[Answer]| a.iter().map(|a| a.status).collect::<Vec<_>>();
    println!(
        "with a 300 ms backend: /api/x (100 ms route timeout) {:?} in {:?}; /other {:?} in {:?}",
        statuses(&on_route),
        p50(&on_route),
        statuses(&elsewhere),
        p50(&elsewhere)
    );
    assert!(
        on_route.iter().all(|a| a.status == 504),
        "{:?}",
        statuses(&on_route)
    );
    assert!(p50(&on_route) < Duration::from_millis(250));
    assert!(
        elsewhere.iter().all(|a| a.status == 200),
        "{:?}",
        statuses(&elsewhere)
    );
}

const LEGACY_SPLIT: &str = "type: TrafficRoute\nname: split\nmesh: default\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: backend}\nconf:\n  loadBalancer: {roundRobin: {}}\n  split:\n  - {weight: 80, destination: {kuma.io/service: backend, version: v1}}\n  - {weight: 20, destination: {kuma.io/service: backend, version: v2}}\n";

const LEGACY_FAULT: &str = "type: FaultInjection\nname: abort\nmesh: default\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: backend, kuma.io/protocol: http}\nconf:\n  abort: {httpStatus: 503, percentage: 50}\n";

/// The client's routes and clusters and a backend's listeners, as the zone generated them.
fn generated(m: &Mesh) -> serde_json::Value {
    let client = m.cp.proxy_config("default", "client-1").unwrap_or_default();
    let backend = m.cp.proxy_config("default", "backend-v1").unwrap_or_default();
    serde_json::json!({
        "routes": client["resources"]["routes"],
        "clusters": client["resources"]["clusters"],
        "listeners": backend["resources"]["listeners"],
    })
}

#[test]
fn legacy_traffic_route_and_fault_injection_behave_like_their_new_forms() {
    let m = mesh(&["v1", "v2"]);
    let root = format!("{}/", m.url);
    // What meshctl convert prints is what the older policies come to.
    let out = std::process::Command::new(meridian_e2e::bin("meshctl").expect("meshctl"))
        .args(["convert", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(format!("{LEGACY_SPLIT}---\n{LEGACY_FAULT}").as_bytes())?;
            child.wait_with_output()
        })
        .expect("meshctl convert");
    let converted = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{converted}");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for kind in [
        "type: MeshHTTPRoute",
        "type: MeshTCPRoute",
        "type: MeshFaultInjection",
    ] {
        assert!(converted.contains(kind), "{converted}");
    }

    m.apply(LEGACY_SPLIT);
    wait_until("the legacy split to take effect", Duration::from_secs(15), || {
        instances(&requests(&root, 50, &[]))
            .get("backend-v2")
            .is_some_and(|n| *n < 25)
    })
    .expect("legacy split");
    let seen = instances(&requests(&root, 1000, &[]));
    let v1 = share(&seen, "backend-v1", 1000);
    println!("legacy TrafficRoute 80/20 over 1000 requests: {seen:?} ({v1:.1}% to v1)");
    assert!((75.0..=85.0).contains(&v1), "{seen:?}");
    m.apply(LEGACY_FAULT);
    wait_until("the legacy abort to take effect", Duration::from_secs(15), || {
        instances(&requests(&root, 20, &[])).contains_key("status 503")
    })
    .expect("legacy abort");
    let seen = instances(&requests(&root, 1000, &[]));
    let aborted = share(&seen, "status 503", 1000);
    println!("legacy FaultInjection 50% abort over 1000 requests: {seen:?} ({aborted:.1}% 503)");
    assert!((45.0..=55.0).contains(&aborted), "{seen:?}");
    let legacy = generated(&m);

    // The converted forms in their place: the same Envoy config.
    ok(m.cp
        .meshctl(&["delete", "traffic-route", "split"], None)
        .expect("meshctl"));
    ok(m.cp
        .meshctl(&["delete", "fault-injection", "abort"], None)
        .expect("meshctl"));
    m.apply(&converted);
    wait_until(
        "the new forms to give the same config",
        Duration::from_secs(15),
        || generated(&m) == legacy,
    )
    .unwrap_or_else(|e| panic!("{e}:\n{:#}\nagainst\n{legacy:#}", generated(&m)));
    assert!(
        legacy["routes"].as_object().is_some_and(|r| !r.is_empty()),
        "{legacy:#}"
    );
}

#[test]
fn a_connection_rate_limit_closes_the_excess_connections() {
    let m = mesh_of(&["v1"], "tcp");
    let root = format!("{}/", m.url);
    m.apply("type: MeshRateLimit\nname: conns\nspec:\n  targetRef: {kind: MeshService, name: backend}\n  rules:\n  - default:\n      local:\n        tcp: {connectionRate: {num: 5, interval: 1s}}\n");
    wait_until(
        "the connection limit to take effect",
        Duration::from_secs(15),
        || instances(&connections(&root, 20)).contains_key("status 0"),
    )
    .expect("limit");
    std::thread::sleep(Duration::from_secs(1));
    // A 2 s burst of new connections: 5 in the bucket, one more every 200 ms.
    let started = Instant::now();
    let mut answers = Vec::new();
    while started.elapsed() < Duration::from_secs(2) {
        answers.extend(connections(&root, 5));
    }
    let window = started.elapsed().as_secs_f64();
    let seen = instances(&answers);
    let passed = *seen.get("backend-v1").unwrap_or(&0) as f64;
    let expected = 5.0 + 5.0 * window;
    println!(
        "5 connections/s over {window:.2} s: {} tried, {seen:?}; {passed} passed against {expected:.0} expected",
        answers.len()
    );
    assert!((passed - expected).abs() <= expected * 0.25, "{seen:?}");
    assert!(seen.get("status 0").is_some_and(|n| *n > 0), "{seen:?}");
}
