//! The zone drills: real zone-cp, meridian-dp and Envoy, the seed's demo calling reg-server.

use std::time::Duration;

use meridian_e2e::{DemoPair, ZoneCp, http_get, ok, stderr};
use meridian_testing::wait_until;

/// A standalone zone with the seed's demo.
struct DemoZone {
    cp: ZoneCp,
    pair: DemoPair,
    _dir: tempfile::TempDir,
}

fn demo_zone() -> DemoZone {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ZoneCp::start("zone-1", &dir.path().join("zone")).expect("zone-cp");
    let pair = DemoPair::start(&cp).expect("demo pair");
    DemoZone { cp, pair, _dir: dir }
}

const SHORT_TIMEOUT: &str = "type: MeshTimeout\nname: short\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: MeshService, name: reg-server}\n    default:\n      http:\n        requestTimeout: 100ms\n";

#[test]
fn demo_calls_reg_server_through_both_sidecars_and_policies_apply_live() {
    let z = demo_zone();
    let (status, body, took) = http_get(&z.pair.demo_url);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.matches("\"service\":\"reg-server\"").count(), 4, "{body}");
    assert!(
        took >= Duration::from_millis(1000),
        "4 sequential calls of 250 ms took {took:?}"
    );
    // Both sidecars carried the calls.
    assert!(z.pair.demo_sidecar.stat("cluster.reg-server.upstream_rq_2xx") >= 4);
    let inbound = z.pair.reg_sidecar.stat(&format!(
        "http.inbound_127.0.0.1_{}.downstream_rq_2xx",
        inbound_port(&z.cp, "reg-server-1")
    ));
    assert!(inbound >= 4, "reg-server's inbound saw {inbound} requests");

    // A MeshTimeout shorter than reg-server's delay: 504 within the timeout, no restarts.
    ok(z.cp
        .meshctl(&["apply", "-f", "-"], Some(SHORT_TIMEOUT))
        .expect("meshctl"));
    wait_until("the timeout to take effect", Duration::from_secs(10), || {
        http_get(&z.pair.demo_url).0 == 504
    })
    .expect("504");
    let (status, _, took) = http_get(&z.pair.demo_url);
    assert_eq!(status, 504);
    assert!(
        took < Duration::from_millis(250),
        "the 100 ms timeout cut the call at {took:?}"
    );

    ok(z.cp
        .meshctl(&["delete", "meshtimeout", "short"], None)
        .expect("meshctl"));
    wait_until("the timeout to be gone", Duration::from_secs(10), || {
        http_get(&z.pair.demo_url).0 == 200
    })
    .expect("200");

    // The config the CP generated, and that the proxy took it.
    let config = z.cp.proxy_config("default", "demo-1").expect("_config");
    assert_eq!(config["connected"], true, "{config}");
    assert_eq!(config["nacks"], 0, "{config}");
    assert!(
        config["resources"]["listeners"]
            .get(format!("outbound:127.0.0.1:{}", outbound_port(&z.cp)))
            .is_some(),
        "{config}"
    );
    let inspect = ok(z
        .cp
        .meshctl(&["inspect", "dataplane", "demo-1"], None)
        .expect("meshctl"));
    assert!(
        inspect.contains("connected") && inspect.contains("outbound:reg-server"),
        "{inspect}"
    );
}

fn dataplane_json(cp: &ZoneCp, name: &str) -> serde_json::Value {
    let out = ok(cp
        .meshctl(&["get", "dataplane", name, "-o", "json"], None)
        .expect("meshctl"));
    serde_json::from_str(&out).expect("json")
}

fn inbound_port(cp: &ZoneCp, name: &str) -> u64 {
    dataplane_json(cp, name)["networking"]["inbound"][0]["port"]
        .as_u64()
        .expect("port")
}

fn outbound_port(cp: &ZoneCp) -> u64 {
    dataplane_json(cp, "demo-1")["networking"]["outbound"][0]["port"]
        .as_u64()
        .expect("port")
}

#[test]
fn traffic_survives_the_zone_cp_and_proxies_reconnect() {
    let mut z = demo_zone();
    z.cp.kill_9().expect("kill -9 zone-cp");
    for _ in 0..5 {
        let (status, body, _) = http_get(&z.pair.demo_url);
        assert_eq!(
            status, 200,
            "Envoy keeps its last config while the CP is down: {body}"
        );
    }
    let cp = z.cp.restart().expect("restart zone-cp");
    wait_until("both proxies to reconnect", Duration::from_secs(30), || {
        ["demo-1", "reg-server-1"].iter().all(|n| {
            cp.proxy_config("default", n)
                .is_some_and(|c| c["connected"] == true)
        })
    })
    .expect("reconnected");
    ok(cp
        .meshctl(&["apply", "-f", "-"], Some(SHORT_TIMEOUT))
        .expect("meshctl"));
    wait_until("changes to flow again", Duration::from_secs(10), || {
        http_get(&z.pair.demo_url).0 == 504
    })
    .expect("504");
    z.cp = cp;
}

#[test]
fn sigterm_ends_zone_cp_promptly_with_envoys_connected_and_traffic_keeps_flowing() {
    let mut z = demo_zone();
    wait_until("both proxies connected", Duration::from_secs(30), || {
        ["demo-1", "reg-server-1"].iter().all(|n| {
            z.cp.proxy_config("default", n)
                .is_some_and(|c| c["connected"] == true)
        })
    })
    .expect("connected");
    // The xDS streams end at the stop signal instead of holding the drain for its 5 s grace.
    let (took, status) = z.cp.terminate().expect("zone-cp exits");
    assert!(status.success(), "exits 0 on SIGTERM: {status}");
    assert!(took < Duration::from_secs(3), "took {took:?} to stop");
    let (status, body, _) = http_get(&z.pair.demo_url);
    assert_eq!(status, 200, "Envoy keeps its last config: {body}");
}

#[test]
fn a_stopped_sidecar_deregisters_its_dataplane() {
    let mut z = demo_zone();
    z.pair.reg_sidecar.terminate().expect("SIGTERM");
    z.pair
        .reg_sidecar
        .wait_exit(Duration::from_secs(15))
        .expect("meridian-dp exits");
    let out =
        z.cp.meshctl(&["get", "dataplane", "reg-server-1"], None)
            .expect("meshctl");
    assert_eq!(out.status.code(), Some(1), "the Dataplane is gone");
    // With no endpoint left, demo's calls fail fast instead of hanging.
    wait_until(
        "reg-server to leave demo's endpoints",
        Duration::from_secs(10),
        || http_get(&z.pair.demo_url).0 == 503,
    )
    .expect("503");
}

#[test]
fn malformed_dataplanes_are_refused_at_registration_and_on_the_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ZoneCp::start("zone-1", &dir.path().join("zone")).expect("zone-cp");
    let cases = [
        (
            "  - port: 70000\n    tags: {kuma.io/service: a}\n",
            "networking.inbound[0].port",
        ),
        (
            "  - port: 10001\n    tags: {version: v1}\n",
            "networking.inbound[0].tags.kuma.io/service",
        ),
        (
            "  - port: 10001\n    tags: {kuma.io/service: a}\n  - port: 10001\n    tags: {kuma.io/service: b}\n",
            "networking.inbound[1].port",
        ),
    ];
    for (inbound, field) in cases {
        let yaml = format!(
            "type: Dataplane\nname: bad\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n{inbound}"
        );
        let file = dir.path().join("dp.yaml");
        std::fs::write(&file, &yaml).expect("write");
        let out = std::process::Command::new(meridian_e2e::bin("meridian-dp").expect("bin"))
            .args(["run", "--cp-address", &cp.xds_url, "--dataplane-file"])
            .arg(&file)
            .output()
            .expect("meridian-dp");
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains(field),
            "meridian-dp names {field}: {}",
            stderr(&out)
        );
        let api = cp.meshctl(&["apply", "-f", "-"], Some(&yaml)).expect("meshctl");
        assert_eq!(api.status.code(), Some(1));
        assert!(stderr(&api).contains(field), "{}", stderr(&api));
        let (status, body, _) = {
            let out = std::process::Command::new("curl")
                .args([
                    "-s",
                    "-w",
                    "\n%{http_code}",
                    "-X",
                    "PUT",
                    "-H",
                    "content-type: application/yaml",
                    "--data-binary",
                    &yaml,
                ])
                .arg(format!("{}/meshes/default/dataplanes/bad", cp.api_url))
                .output()
                .expect("curl");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
            (code.to_owned(), body.to_owned(), ())
        };
        assert_eq!(status, "400", "{body}");
        assert!(body.contains(field), "{body}");
    }
    assert_eq!(
        cp.meshctl(&["get", "dataplane", "bad"], None)
            .expect("meshctl")
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn meridian_dp_restarts_an_envoy_that_dies() {
    let z = demo_zone();
    let before = z.pair.demo_sidecar.envoy_pid().expect("envoy pid");
    std::process::Command::new("kill")
        .args(["-9", &before.to_string()])
        .status()
        .expect("kill -9 envoy");
    wait_until("a new envoy", Duration::from_secs(15), || {
        z.pair.demo_sidecar.envoy_pid().is_some_and(|p| p != before)
    })
    .expect("restarted");
    wait_until("traffic to flow again", Duration::from_secs(30), || {
        http_get(&z.pair.demo_url).0 == 200
    })
    .expect("200");
}

#[test]
fn a_sidecar_needs_its_own_dataplane_token_where_the_host_is_not_trusted() {
    use meridian_e2e::{Sidecar, meshctl};
    use meridian_testing::free_port;
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ZoneCp::start_untrusting("zone-1", &dir.path().join("zone")).expect("zone-cp");
    let admin = cp.admin_token().expect("admin token");
    let token = ok(meshctl(
        &cp.api_url,
        &[
            "--token",
            &admin,
            "generate",
            "dataplane-token",
            "--name",
            "web-1",
        ],
        None,
    )
    .expect("meshctl"));
    let token_file = dir.path().join("web-1.token");
    std::fs::write(&token_file, token.trim()).expect("write");
    let inbound = format!(
        "{}:{}:web",
        free_port().expect("port"),
        free_port().expect("port")
    );
    let token_path = token_file.display().to_string();

    // With its own token: registered, and Envoy gets its config.
    let _web = Sidecar::start(
        &cp,
        &[
            "--name",
            "web-1",
            "--inbound",
            &inbound,
            "--dataplane-token-file",
            &token_path,
        ],
    )
    .expect("web-1 with its token");
    assert_eq!(
        http_get(&format!("{}/meshes/default/dataplanes/web-1", cp.api_url)).0,
        200
    );

    // Another Dataplane showing web-1's token is refused, and nothing is registered.
    let out = std::process::Command::new(meridian_e2e::bin("meridian-dp").expect("bin"))
        .args(["run", "--cp-address", &cp.xds_url])
        .args([
            "--name",
            "other-1",
            "--inbound",
            &inbound,
            "--dataplane-token-file",
            &token_path,
        ])
        .output()
        .expect("meridian-dp");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));
    assert_eq!(
        http_get(&format!("{}/meshes/default/dataplanes/other-1", cp.api_url)).0,
        404
    );
    // And no token at all: the zone's API refuses the registration.
    let out = std::process::Command::new(meridian_e2e::bin("meridian-dp").expect("bin"))
        .args(["run", "--cp-address", &cp.xds_url])
        .args(["--name", "anon-1", "--inbound", &inbound])
        .output()
        .expect("meridian-dp");
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));

    // A zone ingress shows its own kind of token; a Dataplane's does not open its door.
    let ingress_file = dir.path().join("ingress.yaml");
    std::fs::write(
        &ingress_file,
        format!(
            "type: ZoneIngress\nname: ingress-1\nnetworking:\n  address: 127.0.0.1\n  port: {}\n",
            free_port().expect("port")
        ),
    )
    .expect("write");
    let ingress_path = ingress_file.display().to_string();
    let out = std::process::Command::new(meridian_e2e::bin("meridian-dp").expect("bin"))
        .args(["run", "--cp-address", &cp.xds_url])
        .args(["--proxy-type", "ingress", "--dataplane-file", &ingress_path])
        .args(["--dataplane-token-file", &token_path])
        .output()
        .expect("meridian-dp");
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));
    let ingress_token = ok(meshctl(
        &cp.api_url,
        &[
            "--token",
            &admin,
            "generate",
            "zone-ingress-token",
            "--name",
            "ingress-1",
        ],
        None,
    )
    .expect("meshctl"));
    let ingress_token_file = dir.path().join("ingress-1.token");
    std::fs::write(&ingress_token_file, ingress_token.trim()).expect("write");
    let _ingress = Sidecar::start(
        &cp,
        &[
            "--proxy-type",
            "ingress",
            "--dataplane-file",
            &ingress_path,
            "--dataplane-token-file",
            &ingress_token_file.display().to_string(),
        ],
    )
    .expect("ingress with its token");
    assert_eq!(
        http_get(&format!("{}/zoneingresses/ingress-1", cp.api_url)).0,
        200
    );
}

#[test]
fn a_sidecar_needs_only_the_dataplane_port_and_says_why_it_cannot_register() {
    use meridian_testing::free_port;
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ZoneCp::start("zone-1", &dir.path().join("zone")).expect("zone-cp");
    let inbound = format!(
        "{}:{}:web",
        free_port().expect("port"),
        free_port().expect("port")
    );
    let run = |cp_address: &str, timeout: &str| {
        std::process::Command::new(meridian_e2e::bin("meridian-dp").expect("bin"))
            .args(["run", "--cp-address", cp_address, "--register-timeout", timeout])
            .args(["--name", "web-1", "--inbound", &inbound])
            .args(["--envoy-binary", "/bin/false"])
            .output()
            .expect("meridian-dp")
    };

    // Nothing answers: a bounded wait, then an error naming the address and the cause.
    let nobody = format!("http://127.0.0.1:{}", free_port().expect("port"));
    let started = std::time::Instant::now();
    let out = run(&nobody, "2s");
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(20));
    let err = stderr(&out);
    assert!(
        err.contains("could not register") && err.contains(&nobody),
        "{err}"
    );
    // Why, as far as it got (a port that is closed refuses at once: "unreachable").
    assert!(err.contains("unreachable") || err.contains("no answer"), "{err}");

    // The zone's REST API is not the dataplane port: it is not where a sidecar registers,
    // and the dataplane port answers nothing but the proxies' own kinds.
    let (status, body, _) = http_get(&format!("{}/meshes/default/meshtraces", cp.xds_url));
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("dataplane port"), "{body}");
    let (status, _, _) = http_get(&format!("{}/healthz", cp.xds_url));
    assert_eq!(status, 200);

    // The dataplane port alone registers the Dataplane (Envoy is /bin/false: it exits and
    // is restarted; the Dataplane stays until SIGTERM).
    let mut dp = meridian_testing::KillOnDrop::new(
        std::process::Command::new(meridian_e2e::bin("meridian-dp").expect("bin"))
            .args([
                "run",
                "--cp-address",
                &cp.xds_url,
                "--name",
                "web-1",
                "--inbound",
                &inbound,
            ])
            .args(["--envoy-binary", "/bin/false"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("meridian-dp"),
    );
    wait_until("web-1 to register", Duration::from_secs(20), || {
        http_get(&format!("{}/meshes/default/dataplanes/web-1", cp.api_url)).0 == 200
    })
    .expect("registered");
    dp.terminate(Duration::from_secs(10)).expect("sigterm");
    wait_until("web-1 to deregister", Duration::from_secs(20), || {
        http_get(&format!("{}/meshes/default/dataplanes/web-1", cp.api_url)).0 == 404
    })
    .expect("deregistered");
}
