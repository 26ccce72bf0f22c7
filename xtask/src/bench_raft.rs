//! `cargo xtask bench raft`: a 3-node zone (release builds, standalone). Committed writes per
//! second through the leader and through a follower (which forwards), linearizable reads from
//! each (a read index round with the leader per GET), then the time from
//! killing the leader (SIGKILL) to the survivors agreeing on a new one, over N kills. It prints
//! figures; it asserts nothing.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meridian_testing::{KillOnDrop, free_port, wait_until};

use crate::bench::{Options, percentile, run_phase};
use crate::{run, target_dir, workspace_root};

struct Node {
    id: usize,
    process: Option<KillOnDrop>,
    api: u16,
    xds: u16,
    raft: u16,
    dir: PathBuf,
    /// The zone's peer certificates (its nodes speak Raft over mutual TLS, as deployed).
    certs: PathBuf,
}

impl Node {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api)
    }

    fn start(&mut self, peers: &str) -> Result<()> {
        let child = Command::new(target_dir().join("release/zone-cp"))
            .args([
                "run",
                "--zone",
                "bench",
                "--node-id",
                &self.id.to_string(),
                "--peers",
                peers,
            ])
            .args(["--api-addr", &format!("127.0.0.1:{}", self.api)])
            .args(["--xds-addr", &format!("127.0.0.1:{}", self.xds)])
            .args(["--raft-addr", &format!("127.0.0.1:{}", self.raft)])
            .arg("--raft-tls-cert")
            .arg(self.certs.join(format!("node-{}.crt", self.id)))
            .arg("--raft-tls-key")
            .arg(self.certs.join(format!("node-{}.key", self.id)))
            .arg("--raft-tls-ca")
            .arg(self.certs.join("ca.crt"))
            .arg("--data-dir")
            .arg(&self.dir)
            .env("RUST_LOG", "off")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting zone-cp")?;
        self.process = Some(KillOnDrop::new(child));
        Ok(())
    }
}

fn parse(args: &[&str]) -> Result<(usize, Options)> {
    let mut kills = 20;
    let mut options = Options {
        writes: 2000,
        concurrency: 16,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match *flag {
            "--kills" => kills = value.parse().context("--kills: expected a number")?,
            "--writes" => options.writes = value.parse().context("--writes: expected a number")?,
            other => bail!("unknown flag {other}: expected --kills N or --writes N"),
        }
    }
    Ok((kills, options))
}

async fn status(http: &reqwest::Client, node: &Node) -> Option<serde_json::Value> {
    let response = http
        .get(format!("{}/raft", node.url()))
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

/// The index (into `nodes`) of the leader every running node agrees on.
async fn agreed(http: &reqwest::Client, nodes: &[Node]) -> Option<usize> {
    let mut leader = None;
    for node in nodes.iter().filter(|n| n.process.is_some()) {
        let s = status(http, node).await?;
        let l = s["leader"].as_u64()?;
        if leader.is_some_and(|x| x != l) {
            return None;
        }
        leader = Some(l);
    }
    let leader = leader?;
    let i = nodes.iter().position(|n| n.id as u64 == leader)?;
    let s = status(http, &nodes[i]).await?;
    (nodes[i].process.is_some() && s["role"] == "leader").then_some(i)
}

async fn wait_agreed(http: &reqwest::Client, nodes: &[Node], limit: Duration) -> Result<usize> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(i) = agreed(http, nodes).await {
            return Ok(i);
        }
        if Instant::now() > deadline {
            bail!("no leader agreed within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn raft(args: &[&str]) -> Result<()> {
    let (kills, options) = parse(args)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(
        "cargo build --release (zone-cp)",
        Command::new(cargo)
            .args(["build", "--release", "-p", "meridian-zone-cp"])
            .current_dir(workspace_root()),
    )?;
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("peer-tls");
    run(
        "zone-cp generate peer-certs",
        Command::new(target_dir().join("release/zone-cp"))
            .args([
                "generate",
                "peer-certs",
                "--zone",
                "bench",
                "--nodes",
                "1,2,3",
                "--dir",
            ])
            .arg(&certs)
            .stdout(Stdio::null()),
    )?;
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(Node {
            id,
            process: None,
            api: free_port()?,
            xds: free_port()?,
            raft: free_port()?,
            dir: dir.path().join(format!("node-{id}")),
            certs: certs.clone(),
        });
    }
    let peers: Vec<String> = nodes
        .iter()
        .map(|n| format!("{}=127.0.0.1:{}", n.id, n.raft))
        .collect();
    let peers = peers.join(",");
    for node in &mut nodes {
        node.start(&peers)?;
    }
    for node in &nodes {
        let health = format!("{}/healthz", node.url());
        wait_until("zone-cp", Duration::from_secs(30), || {
            Command::new("curl")
                .args(["-sf", "-o", "/dev/null", &health])
                .status()
                .is_ok_and(|s| s.success())
        })?;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new()?;
    let http = reqwest::Client::new();
    runtime.block_on(async {
        let leader = wait_agreed(&http, &nodes, Duration::from_secs(30)).await?;
        // The default mesh is created through Raft once there is a leader.
        let mesh = format!("{}/meshes/default", nodes[leader].url());
        while !http
            .get(&mesh)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "\nraft benchmark: 3 zone-cp nodes (release, SQLite log and state, fsync on every commit)\n"
        );
        println!(
            "{:<44} {:>10} {:>10} {:>10} {:>10}",
            "", "ops/s", "p50 ms", "p99 ms", "max ms"
        );
        let term = |s: Option<serde_json::Value>| s.and_then(|s| s["term"].as_u64()).unwrap_or(0);
        let term_before = term(status(&http, &nodes[leader]).await);
        let follower = (leader + 1) % nodes.len();
        // Writes, then linearizable reads (each GET first confirms with the leader that this
        // node has applied everything acknowledged: a ReadIndex round).
        for (phase, (op, write, label, node)) in [
            ("writes", true, "through the leader", leader),
            ("writes", true, "through a follower (forwarded)", follower),
            ("reads", false, "from the leader", leader),
            ("reads", false, "from a follower (read index)", follower),
        ]
        .into_iter()
        .enumerate()
        {
            // Fresh names each write phase: every write creates a resource; the reads read
            // what the first phase wrote.
            let first = if write { phase * options.writes } else { 0 };
            let url = nodes[node].url();
            let (rate, mut latencies) = run_phase(&url, &options, write, first).await?;
            latencies.sort();
            println!(
                "{:<44} {:>10.0} {:>10.2} {:>10.2} {:>10.2}",
                format!("{} {op} {label}", options.writes),
                rate,
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.99),
                percentile(&latencies, 1.0)
            );
        }
        let leader = wait_agreed(&http, &nodes, Duration::from_secs(30)).await?;
        let term_after = term(status(&http, &nodes[leader]).await);
        println!(
            "elections under that load (a node starved past its election timeout): {}",
            term_after.saturating_sub(term_before)
        );
        let mut elections = Vec::new();
        for _ in 0..kills {
            let leader = wait_agreed(&http, &nodes, Duration::from_secs(30)).await?;
            if let Some(mut p) = nodes[leader].process.take() {
                p.kill_now()?;
            }
            let killed = Instant::now();
            wait_agreed(&http, &nodes, Duration::from_secs(30)).await?;
            elections.push(killed.elapsed());
            nodes[leader].start(&peers)?;
            // Back in: it follows the new leader before the next kill.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !status(&http, &nodes[leader])
                .await
                .is_some_and(|s| s["role"] == "follower" && s["leader"].is_u64())
            {
                if Instant::now() > deadline {
                    bail!("node {} did not rejoin", nodes[leader].id);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if !elections.is_empty() {
            elections.sort();
            println!(
                "\nleader killed (SIGKILL) -> survivors agree on a new leader, {} kills (heartbeat {}):",
                elections.len(),
                std::env::var("MERIDIAN_RAFT_HEARTBEAT").unwrap_or_else(|_| "zone-cp's default, 20ms".into())
            );
            println!(
                "  min {:.0} ms   p50 {:.0} ms   p90 {:.0} ms   max {:.0} ms",
                percentile(&elections, 0.0),
                percentile(&elections, 0.5),
                percentile(&elections, 0.9),
                percentile(&elections, 1.0)
            );
        }
        Ok(())
    })
}
