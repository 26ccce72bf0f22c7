//! `cargo xtask demo`: the whole local multi-zone mesh, from the embedded store up.
//!
//! ```text
//!   global-cp (REST :5681, sync :5685, embedded SQLite)
//!     ├── zone-1: 3 zone-cp nodes (REST :5711-5713)   ingress :10010
//!     │     demo (:8080) ──sidecar :10001 / outbound :20001──> reg-server
//!     │     reg-server (:8081, sidecar :10002)
//!     └── zone-2: 3 zone-cp nodes (REST :5811-5813)   ingress :10020
//!           reg-server (:8082, sidecar :10003)
//!   As root with iptables, zone-1's demo and reg-server run transparently proxied, each in a
//!   network namespace (`demo_transparent`): demo calls http://reg-server.mesh/, no outbound.
//!   mesh default: mTLS (PERMISSIVE, so curl can reach demo), the seed's TrafficPermission,
//!   a MeshRetry, the seed's MeshTrace pointed at a trace receiver on :4317 that prints
//!   every finished trace as a waterfall.
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meridian_testing::{KillOnDrop, wait_until};

use crate::{cargo, run, setup, target_dir, workspace_root};

const MESH: &str = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    mode: PERMISSIVE\n";
const RETRY: &str = "type: MeshRetry\nname: reg-server\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: MeshService, name: reg-server}\n    default:\n      http:\n        numRetries: 5\n        retryOn: [5xx, ConnectFailure, Reset]\n";

/// The seed's MeshTrace, for a checkout without `../shared/examples`.
const SEED_MESHTRACE: &str = "apiVersion: kuma.io/v1alpha1\nkind: MeshTrace\nmetadata:\n  name: default\nspec:\n  backends:\n  - name: otel-collector\n    type: open_telemetry\n    conf:\n      endpoint: otel-collector.kuma-system.svc:4317\n      headers:\n        x-api-key: <HONEYCOMB_API_KEY>\n";
const SEED_PERMISSION: &str = "apiVersion: kuma.io/v1alpha1\nkind: TrafficPermission\nmetadata:\n  name: allow-demo-to-reg\nspec:\n  sources:\n  - match:\n      kuma.io/service: demo\n  destinations:\n  - match:\n      kuma.io/service: reg-server\n";

fn seed(name: &str, fallback: &str) -> String {
    std::fs::read_to_string(workspace_root().join("../shared/examples").join(name))
        .unwrap_or_else(|_| fallback.to_owned())
}

fn get(url: &str) -> u16 {
    Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            url,
        ])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).parse().ok())
        .unwrap_or(0)
}

fn bin(name: &str) -> PathBuf {
    target_dir().join("debug").join(name)
}

fn spawn(what: &str, cmd: &mut Command) -> Result<KillOnDrop> {
    Ok(KillOnDrop::new(
        cmd.current_dir(workspace_root())
            .spawn()
            .with_context(|| format!("starting {what}"))?,
    ))
}

/// `meshctl [args] apply -f -` with `yaml` on stdin, or any meshctl command.
fn meshctl(args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new(bin("meshctl"))
        .args(args)
        .env("MESHCTL_API_URL", "http://127.0.0.1:5681")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting meshctl")?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .context("meshctl's stdin")?
            .write_all(text.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("meshctl {} failed ({})", args.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct ZonePorts {
    name: &'static str,
    /// The first of three REST, xDS and Raft ports.
    api: u16,
    xds: u16,
    raft: u16,
    ingress: u16,
}

impl ZonePorts {
    fn list(&self, first: u16) -> String {
        (0..3)
            .map(|i| format!("http://127.0.0.1:{}", first + i))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn start_zone(z: &ZonePorts, dir: &Path, envoy: &Path, processes: &mut Vec<KillOnDrop>) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let token = meshctl(&["generate", "zone-token", "--zone", z.name], None)?;
    let token_file = dir.join("zone-token");
    std::fs::write(&token_file, token.trim())?;
    let peers: Vec<String> = (1..=3)
        .map(|n| format!("{n}=127.0.0.1:{}", z.raft + n - 1))
        .collect();
    // The zone's nodes speak Raft over mutual TLS, as deployed (deploy/README.md).
    let certs = dir.join("peer-tls");
    let made = Command::new(bin("zone-cp"))
        .args([
            "generate",
            "peer-certs",
            "--zone",
            z.name,
            "--nodes",
            "1,2,3",
            "--dir",
        ])
        .arg(&certs)
        .output()
        .context("zone-cp generate peer-certs")?;
    if !made.status.success() {
        bail!(
            "zone-cp generate peer-certs: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    for n in 1..=3u16 {
        processes.push(spawn(
            &format!("{} node {n}", z.name),
            Command::new(bin("zone-cp"))
                .args(["run", "--zone", z.name, "--node-id", &n.to_string()])
                .args(["--api-addr", &format!("127.0.0.1:{}", z.api + n - 1)])
                .args(["--xds-addr", &format!("127.0.0.1:{}", z.xds + n - 1)])
                .args(["--raft-addr", &format!("127.0.0.1:{}", z.raft + n - 1)])
                .args(["--peers", &peers.join(",")])
                .arg("--raft-tls-cert")
                .arg(certs.join(format!("node-{n}.crt")))
                .arg("--raft-tls-key")
                .arg(certs.join(format!("node-{n}.key")))
                .arg("--raft-tls-ca")
                .arg(certs.join("ca.crt"))
                // Fifteen processes share this machine: a calmer heartbeat avoids needless
                // elections (`cargo xtask bench raft`).
                .args(["--raft-heartbeat", "50ms"])
                .arg("--data-dir")
                .arg(dir.join(format!("node-{n}")))
                .args(["--global-address", "grpc://127.0.0.1:5685", "--zone-token-file"])
                .arg(&token_file)
                .env("RUST_LOG", "warn,openraft=off"),
        )?);
    }
    for n in 0..3 {
        wait_until(
            &format!("{} node {}", z.name, n + 1),
            Duration::from_secs(60),
            || get(&format!("http://127.0.0.1:{}/healthz", z.api + n)) == 200,
        )?;
    }
    let ingress_file = dir.join("zone-ingress.yaml");
    std::fs::write(
        &ingress_file,
        format!(
            "type: ZoneIngress\nname: ingress-1\nnetworking:\n  address: 127.0.0.1\n  port: {}\n",
            z.ingress
        ),
    )?;
    eprintln!(
        "==> {}: 3 zone-cp nodes (REST :{}-{}), ingress :{}",
        z.name,
        z.api,
        z.api + 2,
        z.ingress
    );
    processes.push(spawn(
        &format!("{} ingress", z.name),
        sidecar(z, envoy)
            .args(["--proxy-type", "ingress", "--dataplane-file"])
            .arg(&ingress_file),
    )?);
    Ok(())
}

/// `meridian-dp run` against every node of zone `z`.
fn sidecar(z: &ZonePorts, envoy: &Path) -> Command {
    let mut cmd = Command::new(bin("meridian-dp"));
    cmd.args(["run", "--cp-address", &z.list(z.xds)])
        .arg("--envoy-binary")
        .arg(envoy)
        .env("RUST_LOG", "warn,openraft=off");
    cmd
}

fn app(name: &str, zone: &str, port: u16, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin("demo-app"));
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--name",
        name,
        "--zone",
        zone,
    ])
    .args(extra);
    cmd
}

pub fn demo(flags: &[&str]) -> Result<()> {
    if !flags.is_empty() {
        bail!("demo takes no flags");
    }
    setup()?;
    run(
        "cargo build --bins",
        cargo().args(["build", "--workspace", "--bins"]),
    )?;
    let envoy = workspace_root().join(".venv/bin/envoy");
    let state = workspace_root().join(".meridian/demo");
    // A fresh mesh each time: the demo's state is throwaway.
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state)?;
    let receiver = meridian_otlp::Receiver::start(([127, 0, 0, 1], 4317).into())
        .context("starting the trace receiver on 127.0.0.1:4317 (is something else using it?)")?;
    eprintln!("==> trace receiver (OTLP/gRPC) on 127.0.0.1:4317");

    eprintln!(
        "==> global-cp: REST http://127.0.0.1:5681, sync :5685, embedded store in {}",
        state.display()
    );
    let mut processes = vec![spawn(
        "global-cp",
        Command::new(bin("global-cp"))
            .args(["run", "--data-dir"])
            .arg(state.join("global"))
            .env("RUST_LOG", "warn,openraft=off"),
    )?];
    wait_until("global-cp", Duration::from_secs(30), || {
        get("http://127.0.0.1:5681/healthz") == 200
    })?;
    // Policy first, on global: every zone gets it.
    let trace = seed("seed-meshtrace.yaml", SEED_MESHTRACE)
        .replace("otel-collector.kuma-system.svc:4317", "127.0.0.1:4317");
    for doc in [
        MESH.to_owned(),
        RETRY.to_owned(),
        seed("seed-traffic-permission.yaml", SEED_PERMISSION),
        trace,
    ] {
        meshctl(&["apply", "-f", "-"], Some(&doc))?;
    }
    meshctl(&["delete", "meshtrafficpermission", "allow-all-default"], None)?;
    eprintln!(
        "==> applied on global: mTLS (PERMISSIVE), the seed's TrafficPermission (demo -> reg-server only), a MeshRetry, the seed's MeshTrace"
    );

    let zones = [
        ZonePorts {
            name: "zone-1",
            api: 5711,
            xds: 5721,
            raft: 5731,
            ingress: 10010,
        },
        ZonePorts {
            name: "zone-2",
            api: 5811,
            xds: 5821,
            raft: 5831,
            ingress: 10020,
        },
    ];
    for z in &zones {
        start_zone(z, &state.join(z.name), &envoy, &mut processes)?;
    }
    let [z1, z2] = &zones;
    // demo and zone-1's reg-server transparently proxied, in namespaces, where root and
    // iptables allow; declared outbounds otherwise.
    let venv = workspace_root().join(".venv");
    let why_not = crate::demo_transparent::unavailable().or_else(|| {
        crate::demo_transparent::envoy_binary(&venv)
            .is_none()
            .then(|| "no Envoy binary in .venv".to_owned())
    });
    let mut _transparent = None;
    match &why_not {
        None => {
            eprintln!(
                "==> zone-1: demo and reg-server transparently proxied, each in a network namespace (iptables, \
                 virtual IPs, DNS): demo calls http://reg-server.mesh/ and declares no outbound"
            );
            let bin_of = |name: &str| bin(name);
            _transparent = Some(crate::demo_transparent::start(crate::demo_transparent::Host {
                xds_ports: (0..3).map(|i| z1.xds + i).collect(),
                shared_ports: vec![z2.ingress, 4317],
                state: &state,
                bin: &bin_of,
                envoy: crate::demo_transparent::envoy_binary(&venv).unwrap_or_default(),
            })?);
        }
        Some(why) => {
            eprintln!(
                "==> transparent proxying is not available here ({why}): demo declares its outbound to reg-server"
            );
            processes.push(spawn(
                "reg-server (zone-1)",
                &mut app("reg-server", "zone-1", 8081, &["--delay", "250ms"]),
            )?);
            processes.push(spawn(
                "demo",
                &mut app(
                    "demo",
                    "zone-1",
                    8080,
                    &["--upstream", "http://127.0.0.1:20001/", "--calls", "4"],
                ),
            )?);
            for (name, args) in [
                (
                    "reg-server-1",
                    vec!["--inbound", "10002:8081:reg-server:http", "--admin-port", "9902"],
                ),
                (
                    "demo-1",
                    vec![
                        "--inbound",
                        "10001:8080:demo:http",
                        "--outbound",
                        "20001:reg-server",
                        "--admin-port",
                        "9901",
                    ],
                ),
            ] {
                eprintln!("==> zone-1: meridian-dp + Envoy for {name}");
                processes.push(spawn(
                    name,
                    sidecar(z1, &envoy).args(["--name", name]).args(args),
                )?);
            }
        }
    }
    processes.push(spawn(
        "reg-server (zone-2)",
        &mut app("reg-server", "zone-2", 8082, &["--delay", "250ms"]),
    )?);
    eprintln!("==> zone-2: meridian-dp + Envoy for reg-server-2");
    processes.push(spawn(
        "reg-server-2",
        sidecar(z2, &envoy).args([
            "--name",
            "reg-server-2",
            "--inbound",
            "10003:8082:reg-server:http",
            "--admin-port",
            "9903",
        ]),
    )?);
    wait_until(
        "demo to answer through its sidecar",
        Duration::from_secs(90),
        || get("http://127.0.0.1:10001/") == 200,
    )?;
    // Connections opened before the mesh settled drain for up to meridian-dp's drain time.
    std::thread::sleep(Duration::from_secs(6));
    receiver.clear();
    get("http://127.0.0.1:10001/");
    eprintln!(
        "\n==> the mesh is up. demo (zone-1) calls reg-server 4 times (250 ms each) over mTLS; reg-server runs in zone-1 and zone-2.\
         \n    The seed's trace follows as a waterfall; every request to demo prints one.\
         \n\
         \n    curl -s http://127.0.0.1:10001/                           # demo: ~1 s; each call says which zone served it\
         \n    cargo meshctl get meshes; curl -s http://127.0.0.1:5681/zones # global's view\
         \n    cargo meshctl --api-url http://127.0.0.1:5711 inspect dataplane demo-1 --endpoints\
         \n    cargo meshctl --api-url http://127.0.0.1:5711 zone members  # zone-1's Raft\
         \n\
         \n    failover drill: make zone-1's reg-server fail, and watch the calls move to zone-2 with no errors:\
         \n    curl -X POST 'http://127.0.0.1:8081/fail?status=500'       # (or kill it); then curl demo again\
         \n    while true; do curl -s http://127.0.0.1:10001/ | grep -o '\"zone\":\"zone-[12]\"' | sort | uniq -c; sleep 1; done\
         \n    curl -X POST http://127.0.0.1:8081/recover                 # traffic comes home within seconds\
         \n\
         \n    Ctrl-C stops everything.\n"
    );
    // Until global goes (Ctrl-C reaches the whole process group), print each trace once no
    // new span came for it for two seconds.
    let mut seen: std::collections::BTreeMap<String, (usize, Instant, bool)> = Default::default();
    while processes[0].is_running() {
        for (id, spans) in receiver.traces() {
            let entry = seen.entry(id.clone()).or_insert((0, Instant::now(), false));
            if entry.0 != spans.len() {
                *entry = (spans.len(), Instant::now(), false);
            } else if !entry.2 && entry.1.elapsed() >= Duration::from_secs(2) {
                entry.2 = true;
                println!("\n{}", meridian_otlp::waterfall(&id, &spans));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
