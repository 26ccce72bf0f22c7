//! A harness that runs Meridian's real binaries, as a user would, and kills them when a test
//! ends. The binaries come from the same target directory as the test (`cargo nextest run
//! --workspace` or `cargo build --bins` builds them).

#![forbid(unsafe_code)]

mod dataplane;

pub use dataplane::{DemoApp, DemoPair, Sidecar};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use meridian_testing::{KillOnDrop, free_port, wait_until};

/// The path of one of the workspace's binaries.
pub fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test binary> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("locating the target directory")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the binaries first (cargo build --bins)",
            path.display()
        );
    }
    Ok(path)
}

static SPANS_TO: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes every control plane and meshctl this test starts from now on export its own spans to
/// `endpoint` (`OTEL_EXPORTER_OTLP_ENDPOINT`). nextest runs each test in its own process, so
/// this stays within the test.
pub fn export_spans_to(endpoint: &str) {
    let _ = SPANS_TO.set(endpoint.to_owned());
}

fn with_spans_env(cmd: &mut Command) -> &mut Command {
    match SPANS_TO.get() {
        Some(endpoint) => cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        None => cmd.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT"),
    }
}

static ZONE_LOG: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes every zone-cp this test starts from now on log (text, at info) to `file`.
pub fn zone_logs_to(file: &Path) {
    let _ = ZONE_LOG.set(file.to_owned());
}

static OPEN_FILES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Makes every global-cp this test starts from now on run with at most `n` open files
/// (`prlimit --nofile=n:n`); like [`export_spans_to`], it stays within the test's process.
pub fn limit_open_files(n: u64) {
    let _ = OPEN_FILES.set(n);
}

/// The team's example YAML, beside the repository.
pub fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/examples")
        .join(name)
}

/// A running `global-cp run`.
pub struct GlobalCp {
    process: KillOnDrop,
    pub api_url: String,
    /// Where zones connect (`grpc://127.0.0.1:PORT`).
    pub sync_url: String,
    port: u16,
    sync_port: u16,
    workdir: PathBuf,
    store: Option<String>,
    env: Vec<(String, String)>,
}

impl GlobalCp {
    /// Starts `global-cp run` with no flags in `workdir` (so its data lands in
    /// `workdir/.meridian/global`), its address given by environment on a free port.
    pub fn start(workdir: &Path, store: Option<&str>) -> Result<Self> {
        Self::start_on(workdir, store, free_port()?, free_port()?, Vec::new())
    }

    /// Requiring a token for every change, even from this host (`--trust-localhost false`).
    pub fn start_untrusting(workdir: &Path) -> Result<Self> {
        let env = vec![("MERIDIAN_TRUST_LOCALHOST".to_owned(), "false".to_owned())];
        Self::start_on(workdir, None, free_port()?, free_port()?, env)
    }

    /// The admin token global-cp wrote on its first start.
    pub fn admin_token(&self) -> Result<String> {
        let file = self.workdir.join(".meridian/global/admin-token");
        Ok(std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?
            .trim()
            .to_owned())
    }

    /// With TLS on the sync port (zones dial `grpcs://`).
    pub fn start_tls(workdir: &Path, cert: &Path, key: &Path) -> Result<Self> {
        let env = vec![
            ("MERIDIAN_SYNC_TLS_CERT".to_owned(), cert.display().to_string()),
            ("MERIDIAN_SYNC_TLS_KEY".to_owned(), key.display().to_string()),
        ];
        Self::start_on(workdir, None, free_port()?, free_port()?, env)
    }

    fn start_on(
        workdir: &Path,
        store: Option<&str>,
        port: u16,
        sync_port: u16,
        env: Vec<(String, String)>,
    ) -> Result<Self> {
        let tls = env.iter().any(|(k, _)| k == "MERIDIAN_SYNC_TLS_CERT");
        let mut cmd = match OPEN_FILES.get() {
            // prlimit execs the command: the child we hold is global-cp itself.
            Some(n) => {
                let mut cmd = Command::new("prlimit");
                cmd.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(bin("global-cp")?);
                cmd
            }
            None => Command::new(bin("global-cp")?),
        };
        with_spans_env(&mut cmd);
        cmd.arg("run")
            .current_dir(workdir)
            .env("MERIDIAN_API_ADDR", format!("127.0.0.1:{port}"))
            .env("MERIDIAN_SYNC_ADDR", format!("127.0.0.1:{sync_port}"))
            .env_remove("MERIDIAN_DATA_DIR")
            .env_remove("MERIDIAN_STORE")
            .env("RUST_LOG", "warn,openraft=off")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .envs(env.iter().map(|(k, v)| (k, v)));
        if let Some(url) = store {
            cmd.env("MERIDIAN_STORE", url);
        }
        let mut cp = Self {
            process: KillOnDrop::new(cmd.spawn().context("starting global-cp")?),
            api_url: format!("http://127.0.0.1:{port}"),
            sync_url: format!("{}://127.0.0.1:{sync_port}", if tls { "grpcs" } else { "grpc" }),
            port,
            sync_port,
            workdir: workdir.to_owned(),
            store: store.map(str::to_owned),
            env,
        };
        cp.wait_healthy()?;
        Ok(cp)
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let url = format!("{}/healthz", self.api_url);
        let mut exited = false;
        wait_until("global-cp /healthz", Duration::from_secs(30), || {
            if !self.process.is_running() {
                exited = true;
                return true;
            }
            Command::new("curl")
                .args(["-sf", "-o", "/dev/null", "--max-time", "1", &url])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })?;
        if exited {
            bail!("global-cp exited during start");
        }
        Ok(())
    }

    /// `kill -9`, as a crash would.
    /// Sends SIGTERM and waits (up to 30 s) for the exit: how long it took, and the status.
    pub fn terminate(&mut self) -> Result<(Duration, std::process::ExitStatus)> {
        let started = std::time::Instant::now();
        self.process.signal("TERM")?;
        let status = self.process.wait_exit(Duration::from_secs(30))?;
        Ok((started.elapsed(), status))
    }

    pub fn kill_9(&mut self) -> Result<()> {
        self.process.kill_now()
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Starts again on the same port, workdir and store.
    pub fn restart(self) -> Result<Self> {
        let Self {
            mut process,
            port,
            sync_port,
            workdir,
            store,
            env,
            ..
        } = self;
        process.kill_now()?;
        drop(process);
        Self::start_on(&workdir, store.as_deref(), port, sync_port, env)
    }

    pub fn meshctl(&self, args: &[&str]) -> Result<Output> {
        meshctl(&self.api_url, args, None)
    }

    /// A zone token, as `meshctl generate zone-token` prints it.
    pub fn zone_token(&self, zone: &str) -> Result<String> {
        let out = self.meshctl(&["generate", "zone-token", "--zone", zone])?;
        if !out.status.success() {
            bail!("generating a zone token: {}", stderr(&out));
        }
        Ok(stdout(&out).trim().to_owned())
    }
}

/// Runs meshctl against `api_url`, optionally feeding `stdin`.
pub fn meshctl(api_url: &str, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let mut child = with_spans_env(&mut Command::new(bin("meshctl")?))
        .args(args)
        .env("MESHCTL_API_URL", api_url)
        // No token from the environment or a config file of whoever runs the tests.
        .env_remove("MESHCTL_TOKEN")
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(text) = stdin {
        child.stdin.take().context("stdin")?.write_all(text.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

/// Output as text, for assertions and messages.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a command succeeded and returns its stdout.
pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "command failed ({}):\n{}{}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// The Envoy the project's setup installs (`cargo xtask setup`).
pub fn envoy() -> Result<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/envoy");
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo xtask setup` (cargo xtask test does it)",
            path.display()
        );
    }
    Ok(path)
}

/// `GET url` with curl: the status (0 when nothing answered), the body and how long it took.
pub fn http_get(url: &str) -> (u16, String, Duration) {
    let started = std::time::Instant::now();
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}", url])
        .output();
    let elapsed = started.elapsed();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned(), elapsed)
}

/// `POST url` with curl; true on a 2xx answer.
pub fn http_post(url: &str) -> bool {
    Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "--max-time", "5", "-X", "POST", url])
        .status()
        .is_ok_and(|s| s.success())
}

/// A running `zone-cp run` (standalone).
pub struct ZoneCp {
    process: KillOnDrop,
    pub zone: String,
    pub api_url: String,
    pub xds_url: String,
    api_port: u16,
    xds_port: u16,
    /// None for a zone of one node, which serves no Raft port.
    raft_port: Option<u16>,
    data_dir: PathBuf,
    /// Flags beyond the ports and data dir (federation, cluster), kept for restarts.
    global: Vec<String>,
}

impl ZoneCp {
    /// A standalone zone.
    pub fn start(zone: &str, data_dir: &Path) -> Result<Self> {
        Self::start_on(zone, data_dir, [free_port()?, free_port()?], None, Vec::new())
    }

    /// A zone that syncs from `global`, with a token global issued for it.
    pub fn start_federated(zone: &str, data_dir: &Path, global: &GlobalCp) -> Result<Self> {
        let token = global.zone_token(zone)?;
        Self::start_with_token(zone, data_dir, &global.sync_url, &token)
    }

    /// A zone that syncs from `global_sync_url` presenting `token` (right or wrong).
    pub fn start_with_token(zone: &str, data_dir: &Path, global_sync_url: &str, token: &str) -> Result<Self> {
        Self::start_federated_with(zone, data_dir, global_sync_url, token, None)
    }

    /// Like [`ZoneCp::start_with_token`], trusting `ca_file` for a `grpcs://` global.
    pub fn start_federated_with(
        zone: &str,
        data_dir: &Path,
        global_sync_url: &str,
        token: &str,
        ca_file: Option<&Path>,
    ) -> Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let token_file = data_dir.join("zone-token");
        std::fs::write(&token_file, token)?;
        let mut args = vec![
            "--global-address".to_owned(),
            global_sync_url.to_owned(),
            "--zone-token-file".to_owned(),
            token_file.display().to_string(),
        ];
        if let Some(ca) = ca_file {
            args.extend(["--global-ca-file".to_owned(), ca.display().to_string()]);
        }
        Self::start_on(zone, data_dir, [free_port()?, free_port()?], None, args)
    }

    /// `nodes` nodes of one standalone zone, forming a Raft cluster, in `dir/node-N`.
    pub fn start_cluster(zone: &str, dir: &Path, nodes: usize) -> Result<Vec<Self>> {
        Self::start_cluster_with(zone, dir, nodes, Vec::new())
    }

    /// A cluster of a zone federated with `global`.
    pub fn start_cluster_federated(
        zone: &str,
        dir: &Path,
        nodes: usize,
        global: &GlobalCp,
    ) -> Result<Vec<Self>> {
        let token_file = dir.join("zone-token");
        std::fs::create_dir_all(dir)?;
        std::fs::write(&token_file, global.zone_token(zone)?)?;
        let flags = vec![
            "--global-address".to_owned(),
            global.sync_url.clone(),
            "--zone-token-file".to_owned(),
            token_file.display().to_string(),
        ];
        Self::start_cluster_with(zone, dir, nodes, flags)
    }

    /// A cluster whose nodes all get `flags` too. The nodes speak Raft over mutual TLS, with
    /// certificates from `zone-cp generate peer-certs` (see [`peer_tls_flags`]).
    pub fn start_cluster_with(zone: &str, dir: &Path, nodes: usize, flags: Vec<String>) -> Result<Vec<Self>> {
        let raft_ports = (0..nodes).map(|_| free_port()).collect::<Result<Vec<u16>>>()?;
        let peers: Vec<String> = raft_ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("{}=127.0.0.1:{port}", i + 1))
            .collect();
        let peers = peers.join(",");
        // Started together, so that a majority is up before any node gives up waiting.
        let mut children = Vec::new();
        for (i, raft_port) in raft_ports.iter().enumerate() {
            let mut args = vec![
                "--node-id".to_owned(),
                (i + 1).to_string(),
                "--peers".to_owned(),
                peers.clone(),
            ];
            args.extend(flags.iter().cloned());
            args.extend(peer_tls_flags(zone, dir, i as u64 + 1)?);
            children.push(Self::spawn(
                zone,
                &dir.join(format!("node-{}", i + 1)),
                [free_port()?, free_port()?],
                Some(*raft_port),
                args,
            )?);
        }
        children.into_iter().map(Self::healthy).collect()
    }

    /// One node serving Raft on `raft_port`, with `flags` (`--node-id`, `--peers`, peer TLS...).
    pub fn start_node(zone: &str, data_dir: &Path, raft_port: u16, flags: Vec<String>) -> Result<Self> {
        Self::start_on(
            zone,
            data_dir,
            [free_port()?, free_port()?],
            Some(raft_port),
            flags,
        )
    }

    /// A standalone zone that requires a token for every change (`--trust-localhost false`).
    pub fn start_untrusting(zone: &str, data_dir: &Path) -> Result<Self> {
        let flags = vec!["--trust-localhost".to_owned(), "false".to_owned()];
        Self::start_on(zone, data_dir, [free_port()?, free_port()?], None, flags)
    }

    /// The admin token this zone wrote once its Raft had a leader.
    pub fn admin_token(&self) -> Result<String> {
        let file = self.data_dir.join("admin-token");
        wait_until("the zone's admin token", Duration::from_secs(20), || {
            file.exists()
        })?;
        Ok(std::fs::read_to_string(&file)?.trim().to_owned())
    }

    /// A node that joins the cluster of `zone` started in `cluster_dir` once added (`meshctl
    /// zone members add`), with a peer certificate from that cluster's CA.
    pub fn start_joining(zone: &str, cluster_dir: &Path, node_id: u64) -> Result<Self> {
        let mut args = vec!["--node-id".to_owned(), node_id.to_string(), "--join".to_owned()];
        args.extend(peer_tls_flags(zone, cluster_dir, node_id)?);
        let data_dir = cluster_dir.join(format!("node-{node_id}"));
        Self::start_on(
            zone,
            &data_dir,
            [free_port()?, free_port()?],
            Some(free_port()?),
            args,
        )
    }

    /// Where this node serves Raft.
    pub fn raft_address(&self) -> String {
        format!("127.0.0.1:{}", self.raft_port.unwrap_or_default())
    }

    /// `ports`: the REST API's and xDS's; Raft's if it serves Raft.
    fn start_on(
        zone: &str,
        data_dir: &Path,
        ports: [u16; 2],
        raft_port: Option<u16>,
        global: Vec<String>,
    ) -> Result<Self> {
        Self::healthy(Self::spawn(zone, data_dir, ports, raft_port, global)?)
    }

    fn healthy(self) -> Result<Self> {
        let health = format!("{}/healthz", self.api_url);
        wait_until("zone-cp /healthz", Duration::from_secs(30), || {
            http_get(&health).0 == 200
        })?;
        Ok(self)
    }

    fn spawn(
        zone: &str,
        data_dir: &Path,
        ports: [u16; 2],
        raft_port: Option<u16>,
        global: Vec<String>,
    ) -> Result<Self> {
        let [api_port, xds_port] = ports;
        let mut cmd = Command::new(bin("zone-cp")?);
        with_spans_env(&mut cmd);
        cmd.args(["run", "--zone", zone]).args(&global);
        if let Some(port) = raft_port {
            cmd.args(["--raft-addr", &format!("127.0.0.1:{port}")]);
        }
        let process = KillOnDrop::new(
            cmd.args(["--api-addr", &format!("127.0.0.1:{api_port}")])
                .args(["--xds-addr", &format!("127.0.0.1:{xds_port}")])
                .arg("--data-dir")
                .arg(data_dir)
                .env(
                    "RUST_LOG",
                    if ZONE_LOG.get().is_some() {
                        "info,openraft=off"
                    } else {
                        "warn,openraft=off"
                    },
                )
                .stdout(Stdio::null())
                .stderr(match ZONE_LOG.get() {
                    Some(file) => std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(file)
                        .context("opening the zone log")?
                        .into(),
                    None => Stdio::inherit(),
                })
                .spawn()
                .context("starting zone-cp")?,
        );
        let cp = Self {
            process,
            zone: zone.to_owned(),
            api_url: format!("http://127.0.0.1:{api_port}"),
            xds_url: format!("http://127.0.0.1:{xds_port}"),
            api_port,
            xds_port,
            raft_port,
            data_dir: data_dir.to_owned(),
            global,
        };
        Ok(cp)
    }

    /// Sends SIGTERM and waits (up to 30 s) for the exit: how long it took, and the status.
    pub fn terminate(&mut self) -> Result<(Duration, std::process::ExitStatus)> {
        let started = std::time::Instant::now();
        self.process.signal("TERM")?;
        let status = self.process.wait_exit(Duration::from_secs(30))?;
        Ok((started.elapsed(), status))
    }

    pub fn kill_9(&mut self) -> Result<()> {
        self.process.kill_now()
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// SIGSTOP: the process stays, silent, its connections open.
    pub fn freeze(&self) -> Result<()> {
        self.process.signal("STOP")
    }

    pub fn thaw(&self) -> Result<()> {
        self.process.signal("CONT")
    }

    /// Starts again on the same ports and data dir.
    pub fn restart(self) -> Result<Self> {
        let Self {
            mut process,
            zone,
            api_port,
            xds_port,
            raft_port,
            data_dir,
            global,
            ..
        } = self;
        process.kill_now()?;
        drop(process);
        Self::start_on(&zone, &data_dir, [api_port, xds_port], raft_port, global)
    }

    pub fn meshctl(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        meshctl(&self.api_url, args, stdin)
    }

    /// The proxy's state as `GET .../_config` reports it.
    pub fn proxy_config(&self, mesh: &str, name: &str) -> Option<serde_json::Value> {
        let (code, body, _) = http_get(&format!(
            "{}/meshes/{mesh}/dataplanes/{name}/_config",
            self.api_url
        ));
        (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    }
}

/// Raft peer certificates for node `id` of `zone`, in `dir/peer-tls` (the zone's CA is made
/// there on first use), from `zone-cp generate peer-certs`: the node's `--raft-tls-*` flags.
pub fn peer_tls_flags(zone: &str, dir: &Path, id: u64) -> Result<Vec<String>> {
    let certs = dir.join("peer-tls");
    let out = Command::new(bin("zone-cp")?)
        .args([
            "generate",
            "peer-certs",
            "--zone",
            zone,
            "--nodes",
            &id.to_string(),
            "--dir",
        ])
        .arg(&certs)
        .output()
        .context("zone-cp generate peer-certs")?;
    if !out.status.success() {
        bail!("zone-cp generate peer-certs: {}", stderr(&out));
    }
    let file = |name: String| certs.join(name).display().to_string();
    Ok(vec![
        "--raft-tls-cert".to_owned(),
        file(format!("node-{id}.crt")),
        "--raft-tls-key".to_owned(),
        file(format!("node-{id}.key")),
        "--raft-tls-ca".to_owned(),
        file("ca.crt".to_owned()),
    ])
}
