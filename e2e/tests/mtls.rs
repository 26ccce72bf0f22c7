//! Zero-trust drills: mesh mTLS from the builtin CA, permissions enforced by Envoy's RBAC on
//! the inbound, certificates rotated under load. Real zone-cp, meridian-dp and Envoy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meridian_e2e::{DemoPair, Sidecar, ZoneCp, example, http_get, ok};
use meridian_testing::{free_port, wait_until};

fn mtls_mesh(extra: &str) -> String {
    format!(
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n{extra}"
    )
}

/// Waits until `url` answers `status` every time for 2 s. After a change, connections opened
/// under the old config serve one more request each until they drain (the sidecars' drain
/// time is 1 s here), so a few answers in a row prove nothing.
fn settle(what: &str, url: &str, status: u16) {
    wait_until(what, Duration::from_secs(30), || {
        let since = std::time::Instant::now();
        while since.elapsed() < Duration::from_secs(2) {
            if http_get(url).0 != status {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    })
    .unwrap_or_else(|e| panic!("{e}: last answer {:?}", http_get(url)));
}

/// Applies the seed's TrafficPermission, unchanged.
fn apply_seed_permission(cp: &ZoneCp) {
    let file = example("seed-traffic-permission.yaml").display().to_string();
    ok(cp.meshctl(&["apply", "-f", &file], None).expect("meshctl"));
}

/// Envoy's `/certs` of a sidecar, as JSON.
fn certs(sidecar: &Sidecar) -> serde_json::Value {
    let (status, body, _) = http_get(&format!("http://127.0.0.1:{}/certs", sidecar.admin_port));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

/// The URI SANs and serial number of the certificate a sidecar presents.
fn own_cert(sidecar: &Sidecar) -> (Vec<String>, String) {
    let all = certs(sidecar);
    let chain = all["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["cert_chain"].as_array().cloned().unwrap_or_default())
        .next()
        .unwrap_or_default();
    let uris = chain["subject_alt_names"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["uri"].as_str().map(str::to_owned))
        .collect();
    (uris, chain["serial_number"].as_str().unwrap_or("").to_owned())
}

/// The serial number of the mesh root a sidecar trusts.
fn trusted_ca(sidecar: &Sidecar) -> String {
    let all = certs(sidecar);
    all["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ca_cert"].as_array().cloned().unwrap_or_default())
        .find_map(|c| c["serial_number"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[test]
fn the_seed_permission_decides_who_reaches_reg_server_over_mtls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ZoneCp::start("zone-1", &dir.path().join("zone")).expect("zone-cp");
    let pair = DemoPair::start(&cp).expect("demo pair");
    // A third service that also calls reg-server.
    let web_out = free_port().expect("port");
    let web = Sidecar::start(
        &cp,
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
            &format!("{web_out}:reg-server"),
        ],
    )
    .expect("web sidecar");
    let web_url = format!("http://127.0.0.1:{web_out}/");
    let plaintext_url = format!("http://127.0.0.1:{}/", pair.reg_inbound);
    // The demo app itself: its inbound now takes only mesh mTLS, like reg-server's. Its calls to
    // reg-server go out through its sidecar.
    let demo_url = pair.demo.url("/");

    // mTLS on, with the new mesh's allow-all permission still there: everyone gets through,
    // over TLS.
    ok(cp
        .meshctl(&["apply", "-f", "-"], Some(&mtls_mesh("")))
        .expect("meshctl"));
    settle("the inbound to require TLS", &plaintext_url, 0);
    settle("demo to answer over mTLS", &demo_url, 200);
    assert_eq!(http_get(&web_url).0, 200, "allow-all lets web in");
    let handshakes = pair
        .reg_sidecar
        .stat(&format!("listener.127.0.0.1_{}.ssl.handshake", pair.reg_inbound));
    assert!(
        handshakes > 0,
        "reg-server's inbound saw {handshakes} TLS handshakes"
    );
    let (reg_ids, _) = own_cert(&pair.reg_sidecar);
    let (demo_ids, _) = own_cert(&pair.demo_sidecar);
    assert_eq!(reg_ids, vec!["spiffe://default/reg-server"]);
    assert_eq!(demo_ids, vec!["spiffe://default/demo"]);

    // The seed's permission instead of allow-all: demo in, web refused by RBAC.
    ok(cp
        .meshctl(&["delete", "meshtrafficpermission", "allow-all-default"], None)
        .expect("meshctl"));
    apply_seed_permission(&cp);
    settle("web to be refused", &web_url, 403);
    let (_, body, _) = http_get(&web_url);
    assert!(body.contains("RBAC"), "{body}");
    let (status, body, _) = http_get(&demo_url);
    assert_eq!(status, 200, "demo is allowed: {body}");
    assert_eq!(body.matches("\"service\":\"reg-server\"").count(), 4, "{body}");
    assert!(
        pair.reg_sidecar.stat(&format!(
            "http.inbound_127.0.0.1_{}.rbac.denied",
            pair.reg_inbound
        )) > 0
    );

    // No permission left: demo is denied too. Re-applying restores it. No restarts.
    ok(cp
        .meshctl(&["delete", "trafficpermission", "allow-demo-to-reg"], None)
        .expect("meshctl"));
    settle("demo to be refused", &demo_url, 403);
    apply_seed_permission(&cp);
    settle("demo to be let in again", &demo_url, 200);
    assert_eq!(http_get(&web_url).0, 403);

    // Why is web denied? An explicit deny, a call refused by Envoy, and `inspect traffic`
    // naming the policy that decided; `--rules` shows reg-server's inbound with its origin.
    let deny_web = "type: MeshTrafficPermission\nname: deny-web\nmesh: default\nspec:\n  targetRef: {kind: MeshService, name: reg-server}\n  from:\n  - targetRef: {kind: MeshService, name: web}\n    default: {action: Deny}\n";
    ok(cp
        .meshctl(&["apply", "-f", "-"], Some(deny_web))
        .expect("meshctl"));
    let (status, body, _) = http_get(&web_url);
    assert_eq!(status, 403, "{body}");
    let why = ok(cp
        .meshctl(
            &["inspect", "traffic", "--from", "web", "--to", "reg-server"],
            None,
        )
        .expect("meshctl"));
    assert!(why.contains("web -> reg-server in mesh default: denied"), "{why}");
    assert!(why.contains("MeshTrafficPermission/deny-web"), "{why}");
    let demo_why = ok(cp
        .meshctl(
            &["inspect", "traffic", "--from", "demo", "--to", "reg-server"],
            None,
        )
        .expect("meshctl"));
    assert!(demo_why.contains(": allowed"), "{demo_why}");
    assert!(
        demo_why.contains("TrafficPermission/allow-demo-to-reg"),
        "{demo_why}"
    );
    let rules = ok(cp
        .meshctl(&["inspect", "dataplane", "reg-server-1", "--rules"], None)
        .expect("meshctl"));
    assert!(rules.contains("allow demo"), "{rules}");
    assert!(
        rules.contains("allow-demo-to-reg") && rules.contains("deny-web"),
        "{rules}"
    );
    let affected = ok(cp
        .meshctl(&["inspect", "meshtrafficpermission", "deny-web"], None)
        .expect("meshctl"));
    assert!(
        affected.contains("reg-server-1") && !affected.contains("web-1"),
        "{affected}"
    );
    ok(cp
        .meshctl(&["delete", "meshtrafficpermission", "deny-web"], None)
        .expect("meshctl"));

    // PERMISSIVE: plaintext is taken as well (for migration); mTLS traffic is still checked.
    ok(cp
        .meshctl(&["apply", "-f", "-"], Some(&mtls_mesh("    mode: PERMISSIVE\n")))
        .expect("meshctl"));
    settle("plaintext to be accepted", &plaintext_url, 200);
    assert_eq!(http_get(&demo_url).0, 200);
    assert_eq!(http_get(&web_url).0, 403);

    let config = cp.proxy_config("default", "reg-server-1").expect("_config");
    assert_eq!(config["nacks"], 0, "{config}");
    assert!(
        !config.to_string().contains("PRIVATE KEY"),
        "keys never leave the CP's memory"
    );
    drop(web);
}

#[test]
fn a_two_minute_certificate_is_rotated_while_requests_flow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ZoneCp::start("zone-1", &dir.path().join("zone")).expect("zone-cp");
    let pair = DemoPair::start(&cp).expect("demo pair");
    ok(cp
        .meshctl(
            &["apply", "-f", "-"],
            Some(&mtls_mesh(
                "    dpCert:\n      rotation:\n        expiration: 2m\n",
            )),
        )
        .expect("meshctl"));
    let url = format!("http://127.0.0.1:{}/", pair.outbound);
    wait_until("certificates", Duration::from_secs(20), || {
        !own_cert(&pair.reg_sidecar).1.is_empty()
    })
    .expect("certificates");
    settle("calls to go over mTLS", &url, 200);
    let (_, reg_first) = own_cert(&pair.reg_sidecar);
    let (_, demo_first) = own_cert(&pair.demo_sidecar);
    assert!(!reg_first.is_empty() && !demo_first.is_empty());

    // Four clients call reg-server through demo's outbound until both certificates changed.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, sent, failed, url) = (stop.clone(), sent.clone(), failed.clone(), url.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (status, body, _) = http_get(&url);
                    sent.fetch_add(1, Ordering::Relaxed);
                    if status != 200 {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("request failed: {status} {body}");
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    let rotated = wait_until(
        "both certificates to be replaced",
        Duration::from_secs(150),
        || own_cert(&pair.reg_sidecar).1 != reg_first && own_cert(&pair.demo_sidecar).1 != demo_first,
    );
    let rotated_after = started.elapsed();
    // Keep going a little on the new certificates.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "certificate rotation: lifetime 2m, replaced after {:.1}s under load; {sent} requests, {failed} failed",
        rotated_after.as_secs_f64()
    );
    rotated.expect("rotation");
    assert!(sent > 100, "only {sent} requests were sent");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed during rotation");
    assert_eq!(cp.proxy_config("default", "demo-1").expect("_config")["nacks"], 0);
}

#[test]
fn every_zone_trusts_the_root_global_made() {
    use meridian_e2e::GlobalCp;
    let dir = tempfile::tempdir().expect("tempdir");
    let global = GlobalCp::start(dir.path(), None).expect("global-cp");
    let zones: Vec<ZoneCp> = ["zone-1", "zone-2"]
        .iter()
        .map(|z| ZoneCp::start_federated(z, &dir.path().join(z), &global).expect("zone-cp"))
        .collect();
    ok(meridian_e2e::meshctl(&global.api_url, &["apply", "-f", "-"], Some(&mtls_mesh(""))).expect("meshctl"));
    let sidecars: Vec<Sidecar> = zones
        .iter()
        .map(|z| {
            let port = free_port().expect("port");
            Sidecar::start(
                z,
                &[
                    "--name",
                    "web-1",
                    "--inbound",
                    &format!("{port}:{}:web:http", free_port().expect("port")),
                ],
            )
            .expect("sidecar")
        })
        .collect();
    wait_until(
        "both sidecars to get certificates",
        Duration::from_secs(30),
        || sidecars.iter().all(|s| !own_cert(s).1.is_empty()),
    )
    .expect("certificates");
    let roots: Vec<String> = sidecars.iter().map(trusted_ca).collect();
    assert!(!roots[0].is_empty());
    assert_eq!(roots[0], roots[1], "both zones trust the one root global made");
    // Each zone issued its own proxy's certificate from it.
    assert_ne!(own_cert(&sidecars[0]).1, own_cert(&sidecars[1]).1);
}

/// Whether the inbound at 127.0.0.1:`port` takes TLS `version` (`-tls1_2`, `-tls1_3`): the
/// handshake fails without a client certificate either way, but not over the version.
fn handshakes(port: u16, version: &str) -> bool {
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            version,
            "-brief",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = [
        "protocol version",
        "unsupported protocol",
        "no protocols available",
        "wrong version number",
    ];
    let connected = !text.contains("Connection refused") && !text.contains("connect:errno");
    println!(
        "openssl {version}: {}",
        text.lines()
            .filter(|l| l.contains("error") || l.contains("alert"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    connected && !refused.iter().any(|r| text.contains(r))
}

#[test]
fn mesh_tls_sets_an_inbound_s_versions_and_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ZoneCp::start("zone-1", &dir.path().join("zone")).expect("zone-cp");
    let pair = DemoPair::start(&cp).expect("demo pair");
    let plaintext_url = format!("http://127.0.0.1:{}/", pair.reg_inbound);
    ok(cp
        .meshctl(&["apply", "-f", "-"], Some(&mtls_mesh("")))
        .expect("meshctl"));
    settle("the inbound to require TLS", &plaintext_url, 0);
    settle("demo to answer over mTLS", &pair.demo.url("/"), 200);
    assert!(
        handshakes(pair.reg_inbound, "-tls1_2"),
        "TLS 1.2 is taken by default"
    );

    // TLS 1.3 only, and plaintext taken too on reg-server's inbound (the Mesh stays STRICT).
    ok(cp
        .meshctl(
            &["apply", "-f", "-"],
            Some("type: MeshTLS\nname: reg-tls\nspec:\n  targetRef: {kind: MeshService, name: reg-server}\n  from:\n  - targetRef: {kind: Mesh}\n    default:\n      tlsVersion: {min: TLS13, max: TLS13}\n      mode: Permissive\n"),
        )
        .expect("meshctl"));
    settle("reg-server to take plaintext", &plaintext_url, 200);
    wait_until("TLS 1.2 to be refused", Duration::from_secs(15), || {
        !handshakes(pair.reg_inbound, "-tls1_2")
    })
    .expect("tls 1.2 refused");
    assert!(handshakes(pair.reg_inbound, "-tls1_3"), "TLS 1.3 is still taken");
    settle(
        "demo still reaches reg-server over mTLS",
        &pair.demo.url("/"),
        200,
    );
    println!("with MeshTLS: plaintext 200, TLS 1.2 refused, TLS 1.3 taken, mesh traffic 200");

    // Gone: the Mesh's STRICT again.
    ok(cp
        .meshctl(&["delete", "meshtls", "reg-tls"], None)
        .expect("meshctl"));
    settle("plaintext to be refused again", &plaintext_url, 0);
    assert!(handshakes(pair.reg_inbound, "-tls1_2"));
}
