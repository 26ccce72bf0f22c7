//! The zone side of the harness: `zone-cp` processes, standalone, federated or in Raft
//! clusters, and their peer certificates.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use meridian_testing::{KillOnDrop, free_port, wait_until};

use super::{GlobalCp, ZONE_LOG, bin, http_get, meshctl, stderr, with_spans_env};

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
        self.process.terminate(Duration::from_secs(30))
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
