//! Transparent proxying, in network namespaces this test makes: the iptables rules of
//! `meridian-dp install transparent-proxy`, and apps calling `<service>.mesh` through their
//! sidecars without declaring an outbound.

use meridian_testing::netns::{self, NetNs};

/// Skips (with the reason printed) where namespaces cannot be made.
macro_rules! need_netns {
    () => {
        if let Some(why) = netns::unavailable() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

fn dp() -> std::path::PathBuf {
    meridian_e2e::bin("meridian-dp").expect("meridian-dp")
}

/// Every table's rules, comments and counters aside.
fn rules(ns: &NetNs) -> String {
    let mut all = String::new();
    for save in ["iptables-save", "ip6tables-save"] {
        for table in ["nat", "filter"] {
            let text = ns.run(save, &["-t", table]).expect("save");
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                all.push_str(line);
                all.push('\n');
            }
        }
    }
    all
}

#[test]
fn install_is_idempotent_and_uninstall_restores_the_rules_exactly() {
    need_netns!();
    let ns = NetNs::new("rules").expect("netns");
    // Rules of the host's own that must survive.
    ns.run(
        "iptables",
        &["-t", "nat", "-A", "OUTPUT", "-d", "10.9.9.9", "-j", "RETURN"],
    )
    .expect("nat rule");
    ns.run(
        "iptables",
        &["-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"],
    )
    .expect("filter rule");
    ns.run("ip6tables", &["-t", "nat", "-N", "HOST_CHAIN"])
        .expect("v6 chain");
    let before = rules(&ns);

    let install = |extra: &[&str]| {
        let out = ns
            .command(dp())
            .args(["install", "transparent-proxy", "--exclude-inbound-ports", "22"])
            .args(extra)
            .output()
            .expect("install");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    install(&["--exclude-outbound-ips", "10.0.0.0/8,fd00::/8"]);
    let installed = rules(&ns);
    for rule in [
        "-A PREROUTING -p tcp -j MERIDIAN_INBOUND",
        "-A MERIDIAN_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
        "-A MERIDIAN_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A MERIDIAN_OUTBOUND -m owner --uid-owner 5678 -j RETURN",
        "-A MERIDIAN_OUTBOUND -d 10.0.0.0/8 -j RETURN",
        "-A MERIDIAN_OUTBOUND -d fd00::/8 -j RETURN",
        "-A MERIDIAN_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A MERIDIAN_DNS -p udp -j REDIRECT --to-ports 15053",
        "-A OUTPUT -d 10.9.9.9/32 -j RETURN",
    ] {
        assert!(installed.contains(rule), "{rule} missing from\n{installed}");
    }
    install(&["--exclude-outbound-ips", "10.0.0.0/8,fd00::/8"]);
    assert_eq!(rules(&ns), installed, "installing again changes nothing");
    // Installing with other flags replaces ours, not adds to them.
    install(&[]);
    let replaced = rules(&ns);
    assert!(!replaced.contains("10.0.0.0/8"), "{replaced}");
    assert_eq!(
        replaced.matches("-j MERIDIAN_INBOUND\n").count(),
        2,
        "one jump per family"
    );

    let out = ns
        .command(dp())
        .args(["uninstall", "transparent-proxy"])
        .output()
        .expect("uninstall");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        rules(&ns),
        before,
        "uninstall leaves the rules exactly as they were"
    );
    // And again: nothing to do, nothing changes.
    let out = ns
        .command(dp())
        .args(["uninstall", "transparent-proxy"])
        .output()
        .expect("uninstall");
    assert!(out.status.success());
    assert_eq!(rules(&ns), before);
}

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use meridian_testing::{KillOnDrop, wait_until};

/// The sidecar's user, as `install transparent-proxy` excludes it by default.
const DP_UID: &str = "5678";
const API: &str = "http://127.0.0.1:5681";

const MESH_MTLS: &str = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n";
const ALLOW: &str = "type: MeshTrafficPermission\nname: demo-to-reg\nmesh: default\nspec:\n  targetRef: {kind: MeshService, name: reg-server}\n  from:\n  - targetRef: {kind: MeshService, name: demo}\n    default: {action: Allow}\n";

/// Three namespaces: `cp` (the zone control plane, and a server outside the mesh), routing
/// between `demo` and `reg`, each an app with its transparently proxied sidecar.
///
/// ```text
///   demo 10.77.1.2 ── 10.77.1.1 cp 10.77.2.1 ── 10.77.2.2 reg
/// ```
struct Namespaces {
    // Processes first: they are killed before their namespaces go.
    _procs: Vec<KillOnDrop>,
    _dir: tempfile::TempDir,
    cp: NetNs,
    demo: NetNs,
    reg: NetNs,
}

impl Drop for Namespaces {
    /// Sidecars first, the control plane last: each deregisters on its way out.
    fn drop(&mut self) {
        while let Some(p) = self._procs.pop() {
            drop(p);
        }
    }
}

fn sidecar_dir(dir: &Path, name: &str) -> std::path::PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("dir");
    let uid: u32 = DP_UID.parse().expect("uid");
    std::os::unix::fs::chown(&d, Some(uid), Some(uid)).expect("chown");
    d
}

fn spawn(cmd: &mut Command, what: &str) -> KillOnDrop {
    KillOnDrop::new(
        cmd.stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}")),
    )
}

impl Namespaces {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // The sidecars run as their own user: the tree down to their files must be open to it.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let (cp, demo, reg) = (
            NetNs::new("cp").expect("netns"),
            NetNs::new("demo").expect("netns"),
            NetNs::new("reg").expect("netns"),
        );
        netns::link(&demo, "10.77.1.2", &cp, "10.77.1.1").expect("veth");
        netns::link(&reg, "10.77.2.2", &cp, "10.77.2.1").expect("veth");
        cp.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
            .expect("forwarding");
        demo.run("ip", &["route", "add", "default", "via", "10.77.1.1"])
            .expect("route");
        reg.run("ip", &["route", "add", "default", "via", "10.77.2.1"])
            .expect("route");

        let mut procs = Vec::new();
        let bin = |name: &str| meridian_e2e::bin(name).expect("binary");
        procs.push(spawn(
            cp.command(bin("zone-cp"))
                .args([
                    "run",
                    "--zone",
                    "zone-1",
                    "--api-addr",
                    "0.0.0.0:5681",
                    "--xds-addr",
                    "0.0.0.0:5678",
                ])
                .arg("--data-dir")
                .arg(dir.path().join("zone"))
                .env("RUST_LOG", "warn,openraft=off"),
            "zone-cp",
        ));
        wait_until("zone-cp", Duration::from_secs(30), || {
            curl(&cp, &[&format!("{API}/healthz")]).0 == 200
        })
        .expect("zone-cp healthy");
        apply(&cp, MESH_MTLS);
        apply(&cp, ALLOW);
        // Only what ALLOW lets through: the mesh's initial allow-all goes.
        cp.run(
            bin("meshctl").to_str().expect("path"),
            &[
                "--api-url",
                API,
                "delete",
                "meshtrafficpermission",
                "allow-all-default",
            ],
        )
        .expect("delete allow-all");
        // A server outside the mesh.
        procs.push(spawn(
            cp.command(bin("demo-app"))
                .args(["--listen", "10.77.1.1:9000", "--name", "outside"]),
            "outside app",
        ));

        for (ns, name, service, address) in [
            (&reg, "reg-1", "reg-server", "10.77.2.2"),
            (&demo, "demo-1", "demo", "10.77.1.2"),
        ] {
            procs.push(spawn(
                ns.command(bin("demo-app"))
                    .args(["--listen", "127.0.0.1:8080", "--name", service]),
                "app",
            ));
            let work = sidecar_dir(dir.path(), name);
            let token = meridian_e2e::meshctl(API, &["generate", "dataplane-token", "--name", name], None)
                .ok()
                .filter(|o| o.status.success());
            // meshctl reaches the API from the cp namespace only.
            let token = match token {
                Some(o) => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
                None => cp
                    .run(
                        bin("meshctl").to_str().expect("path"),
                        &["--api-url", API, "generate", "dataplane-token", "--name", name],
                    )
                    .expect("token")
                    .trim()
                    .to_owned(),
            };
            std::fs::write(work.join("token"), token).expect("token");
            std::fs::write(
                work.join("dataplane.yaml"),
                format!(
                    "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {address}\n  inbound:\n  - port: 10001\n    servicePort: 8080\n    tags:\n      kuma.io/service: {service}\n      kuma.io/protocol: http\n  transparentProxying: {{}}\n"
                ),
            )
            .expect("dataplane");
            let uid: u32 = DP_UID.parse().expect("uid");
            for f in ["token", "dataplane.yaml"] {
                std::os::unix::fs::chown(work.join(f), Some(uid), Some(uid)).expect("chown");
            }
            let out = ns
                .command(dp())
                .args(["install", "transparent-proxy"])
                .output()
                .expect("install");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let gateway = if address.starts_with("10.77.1.") {
                "10.77.1.1"
            } else {
                "10.77.2.1"
            };
            procs.push(spawn(
                ns.command("setpriv")
                    .args(["--reuid", DP_UID, "--regid", DP_UID, "--clear-groups", "--"])
                    .arg(dp())
                    .args(["run", "--cp-address", &format!("http://{gateway}:5678")])
                    .arg("--dataplane-file")
                    .arg(work.join("dataplane.yaml"))
                    .arg("--dataplane-token-file")
                    .arg(work.join("token"))
                    .arg("--work-dir")
                    .arg(&work)
                    .arg("--envoy-binary")
                    .arg(meridian_e2e::envoy_binary().expect("envoy"))
                    .args(["--drain-time", "1"])
                    .env("RUST_LOG", "warn"),
                "sidecar",
            ));
        }
        Self {
            _procs: procs,
            _dir: dir,
            cp,
            demo,
            reg,
        }
    }
}

/// curl inside `ns`: the status (0 when nothing answered) and the body.
fn curl(ns: &NetNs, args: &[&str]) -> (u16, String) {
    let out = ns
        .command("curl")
        .args(["-s", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn apply(cp: &NetNs, yaml: &str) {
    let out = cp
        .command(meridian_e2e::bin("meshctl").expect("meshctl"))
        .args(["--api-url", API, "apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(yaml.as_bytes())?;
            c.wait_with_output()
        })
        .expect("meshctl apply");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn apps_call_mesh_names_through_their_sidecars_and_permissions_decide_live() {
    need_netns!();
    let before = rules(&NetNs::new("fresh").expect("netns"));
    let n = Namespaces::start();
    let mesh_url = "http://reg-server.mesh/";

    eprintln!("--- demo calls reg-server.mesh, with no outbound declared");
    wait_until("reg-server.mesh to answer", Duration::from_secs(60), || {
        curl(&n.demo, &[mesh_url]).0 == 200
    })
    .expect("200 through both sidecars");
    let (_, body) = curl(&n.demo, &[mesh_url]);
    assert!(body.contains("reg-server"), "{body}");
    let (status, vips) = curl(&n.cp, &[&format!("{API}/meshes/default/virtualips/default")]);
    assert_eq!(status, 200, "{vips}");
    let vips: serde_json::Value = serde_json::from_str(&vips).expect("json");
    let vip = vips["services"]["reg-server"]
        .as_str()
        .expect("reg-server's VIP")
        .to_owned();
    assert!(vip.starts_with("24") || vip.starts_with("25"), "{vip}");
    assert_eq!(
        curl(&n.demo, &[&format!("http://{vip}/")]).0,
        200,
        "by its virtual IP"
    );
    // reg-server listens on reg's loopback, reached only through reg's sidecar, whose inbound
    // takes mTLS alone (the mesh is strict); a virtual IP leads nowhere but through demo's.
    // Each proxy got what it may reach: demo reg-server, reg-server nothing.
    let (_, config) = curl(
        &n.cp,
        &[&format!("{API}/meshes/default/dataplanes/demo-1/_config")],
    );
    assert!(
        config.contains("outbound:passthrough:ipv4") && config.contains(&format!("outbound:{vip}:80")),
        "{config}"
    );
    let demo_vip = vips["services"]["demo"].as_str().expect("demo's VIP");
    assert!(
        !config.contains(&format!("outbound:{demo_vip}:80")),
        "demo may not call demo"
    );
    let (_, config) = curl(
        &n.cp,
        &[&format!("{API}/meshes/default/dataplanes/reg-1/_config")],
    );
    assert!(config.contains("inbound:passthrough:ipv4"), "{config}");
    assert!(
        !config.contains(&format!("outbound:{vip}:80"))
            && !config.contains(&format!("outbound:{demo_vip}:80")),
        "reg-server calls nothing"
    );

    eprintln!("--- a deny takes the call away, an allow brings it back, no restart");
    apply(&n.cp, &ALLOW.replace("Allow", "Deny"));
    wait_until("the call to fail", Duration::from_secs(30), || {
        curl(&n.demo, &[mesh_url]).0 != 200
    })
    .expect("denied");
    apply(&n.cp, ALLOW);
    wait_until("the call to come back", Duration::from_secs(30), || {
        curl(&n.demo, &[mesh_url]).0 == 200
    })
    .expect("allowed again");

    eprintln!("--- outside the mesh: passed through, then refused, per the Mesh");
    let outside = "http://10.77.1.1:9000/";
    wait_until("passthrough", Duration::from_secs(20), || {
        curl(&n.demo, &[outside]).0 == 200
    })
    .expect("passthrough on by default");
    apply(
        &n.cp,
        &format!("{MESH_MTLS}networking:\n  outbound:\n    passthrough: false\n"),
    );
    wait_until("passthrough off", Duration::from_secs(30), || {
        curl(&n.demo, &[outside]).0 != 200
    })
    .expect("refused");
    // The sidecar's own user is never redirected (no loop, and not refused).
    let own = n
        .demo
        .command("setpriv")
        .args([
            "--reuid",
            DP_UID,
            "--regid",
            DP_UID,
            "--clear-groups",
            "--",
            "curl",
            "-sf",
            "--max-time",
            "5",
            outside,
        ])
        .output()
        .expect("curl as the sidecar");
    assert!(own.status.success(), "uid {DP_UID} goes straight out");
    assert_eq!(
        curl(&n.demo, &[mesh_url]).0,
        200,
        "mesh traffic is not outside traffic"
    );
    apply(&n.cp, MESH_MTLS);
    wait_until("passthrough on", Duration::from_secs(30), || {
        curl(&n.demo, &[outside]).0 == 200
    })
    .expect("passed through again");

    eprintln!("--- uninstall leaves each namespace's rules as they were");
    for ns in [&n.demo, &n.reg] {
        let out = ns
            .command(dp())
            .args(["uninstall", "transparent-proxy"])
            .output()
            .expect("uninstall");
        assert!(out.status.success());
        assert_eq!(rules(ns), before);
    }
}

/// Dataplanes in the store alone (no sidecar): enough for the zone to allocate.
fn register(cp: &meridian_e2e::ZoneCp, name: &str, service: &str, transparent: bool) {
    let tp = if transparent {
        "  transparentProxying: {}\n"
    } else {
        ""
    };
    let yaml = format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    tags: {{kuma.io/service: {service}}}\n{tp}"
    );
    meridian_e2e::ok(cp.meshctl(&["apply", "-f", "-"], Some(&yaml)).expect("meshctl"));
}

fn vips(cp: &meridian_e2e::ZoneCp) -> serde_json::Map<String, serde_json::Value> {
    let (status, body, _) =
        meridian_e2e::http_get(&format!("{}/meshes/default/virtualips/default", cp.api_url));
    if status != 200 {
        return Default::default();
    }
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["services"].as_object().cloned().unwrap_or_default()
}

#[test]
fn virtual_ips_stay_through_restarts_and_leader_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes = meridian_e2e::ZoneCp::start_cluster("zone-1", dir.path(), 3).expect("cluster");
    wait_until("the default mesh", Duration::from_secs(30), || {
        meridian_e2e::http_get(&format!("{}/meshes/default", nodes[0].api_url)).0 == 200
    })
    .expect("mesh");
    register(&nodes[0], "web-1", "web", true);
    register(&nodes[0], "api-1", "api", false);
    wait_until("virtual IPs for web and api", Duration::from_secs(20), || {
        vips(&nodes[0]).len() == 2
    })
    .expect("allocated");
    let first = vips(&nodes[0]);
    // Every node reads the same.
    wait_until("every node to agree", Duration::from_secs(20), || {
        nodes.iter().all(|n| vips(n) == first)
    })
    .expect("replicated");
    // A user cannot write them.
    let out = nodes[0]
        .meshctl(
            &["apply", "-f", "-"],
            Some("type: VirtualIPs\nname: default\nmesh: default\nservices: {web: 240.0.0.1}\n"),
        )
        .expect("meshctl");
    assert!(!out.status.success());
    assert!(
        meridian_e2e::stderr(&out).contains("can be read, not written"),
        "{}",
        meridian_e2e::stderr(&out)
    );

    eprintln!("--- every node restarts: the addresses stay");
    for i in 0..nodes.len() {
        let node = nodes.remove(i);
        nodes.insert(i, node.restart().expect("restart"));
    }
    wait_until("the cluster back", Duration::from_secs(30), || {
        nodes.iter().all(|n| vips(n) == first)
    })
    .expect("same after restarts");

    eprintln!("--- the leader dies; the next one allocates for a new service and keeps the rest");
    let leader = nodes
        .iter()
        .position(|n| {
            let (_, body, _) = meridian_e2e::http_get(&format!("{}/raft", n.api_url));
            body.contains("\"role\":\"leader\"")
        })
        .expect("a leader");
    nodes[leader].kill_9().expect("kill");
    let rest: Vec<&meridian_e2e::ZoneCp> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, n)| n)
        .collect();
    wait_until("a write through a new leader", Duration::from_secs(30), || {
        rest[0]
            .meshctl(
                &["apply", "-f", "-"],
                Some("type: Dataplane\nmesh: default\nname: db-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    tags: {kuma.io/service: db}\n"),
            )
            .is_ok_and(|o| o.status.success())
    })
    .expect("registered");
    wait_until("db's address", Duration::from_secs(30), || {
        vips(rest[0]).len() == 3
    })
    .expect("allocated");
    let after = vips(rest[0]);
    assert_eq!((&after["web"], &after["api"]), (&first["web"], &first["api"]));
    assert_ne!(after["db"], after["web"]);
    assert_ne!(after["db"], after["api"]);
}
