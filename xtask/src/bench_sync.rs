//! `cargo xtask bench sync`: latency from a REST write on global to the policy being applied
//! in every zone (release builds, embedded store, 2 zones). A zone ACKs a batch only once it
//! is applied to its store, so the write's revision showing as ACKed by both zones on
//! `/zones` is the end of the measurement. It prints figures; it asserts nothing.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meridian_testing::{KillOnDrop, free_port, wait_until};

use crate::{run, target_dir};

pub fn sync(args: &[&str]) -> Result<()> {
    let (existing, writes) = match args {
        [] => (1000, 1000),
        ["--writes", n] => (1000, n.parse().context("--writes: expected a number")?),
        _ => bail!("usage: cargo xtask bench sync [--writes N]"),
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new()?;
    let federation = runtime.block_on(Federation::start())?;
    let http = reqwest::Client::new();
    runtime.block_on(measure(&http, &federation.global, existing, writes))
}

/// A running global-cp and two zone-cps federated to it (release builds, embedded stores),
/// stopped when dropped.
pub(crate) struct Federation {
    /// Global's REST API.
    pub global: String,
    /// Each zone's REST API and xDS address (`http://...`).
    pub zones: Vec<(String, String)>,
    /// Global first, then the zones: stopped in the reverse order, so no zone sees global go
    /// and logs a broken sync on the bench's terminal.
    processes: Vec<KillOnDrop>,
    _dir: tempfile::TempDir,
}

impl Drop for Federation {
    fn drop(&mut self) {
        while self.processes.pop().is_some() {}
    }
}

fn healthy(url: String) -> impl FnMut() -> bool {
    move || {
        Command::new("curl")
            .args(["-sf", "-o", "/dev/null", &url])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Federation {
    /// Builds them in release first.
    pub(crate) async fn start() -> Result<Self> {
        run(
            "cargo build --release (global-cp, zone-cp)",
            crate::cargo().args([
                "build",
                "--release",
                "-p",
                "meridian-global-cp",
                "-p",
                "meridian-zone-cp",
            ]),
        )?;
        let dir = tempfile::tempdir()?;
        let (api, sync) = (free_port()?, free_port()?);
        let mut processes = vec![KillOnDrop::new(
            Command::new(target_dir().join("release/global-cp"))
                .args([
                    "run",
                    "--api-addr",
                    &format!("127.0.0.1:{api}"),
                    "--sync-addr",
                    &format!("127.0.0.1:{sync}"),
                ])
                .arg("--data-dir")
                .arg(dir.path().join("global"))
                .env("RUST_LOG", "warn,openraft=off")
                .stdout(Stdio::null())
                .spawn()
                .context("starting global-cp")?,
        )];
        let global = format!("http://127.0.0.1:{api}");
        wait_until(
            "global-cp",
            Duration::from_secs(30),
            healthy(format!("{global}/healthz")),
        )?;
        let http = reqwest::Client::new();
        let mut zones = Vec::new();
        for zone in ["zone-1", "zone-2"] {
            let token = http
                .post(format!("{global}/tokens/zone"))
                .json(&serde_json::json!({"zone": zone}))
                .send()
                .await?
                .text()
                .await?;
            let token_file = dir.path().join(format!("{zone}.token"));
            std::fs::write(&token_file, token)?;
            let (zone_api, xds) = (free_port()?, free_port()?);
            processes.push(KillOnDrop::new(
                Command::new(target_dir().join("release/zone-cp"))
                    .args([
                        "run",
                        "--zone",
                        zone,
                        "--global-address",
                        &format!("grpc://127.0.0.1:{sync}"),
                    ])
                    .args([
                        "--api-addr",
                        &format!("127.0.0.1:{zone_api}"),
                        "--xds-addr",
                        &format!("127.0.0.1:{xds}"),
                    ])
                    .arg("--zone-token-file")
                    .arg(&token_file)
                    .arg("--data-dir")
                    .arg(dir.path().join(zone))
                    .env("RUST_LOG", "warn,openraft=off")
                    .stdout(Stdio::null())
                    .spawn()
                    .context("starting zone-cp")?,
            ));
            let zone_api = format!("http://127.0.0.1:{zone_api}");
            // Up once global's default mesh has arrived.
            wait_until(
                "zone-cp",
                Duration::from_secs(30),
                healthy(format!("{zone_api}/meshes/default")),
            )?;
            zones.push((zone_api, format!("http://127.0.0.1:{xds}")));
        }
        Ok(Self {
            global,
            zones,
            processes,
            _dir: dir,
        })
    }
}

fn trace(name: &str, endpoint: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "MeshTrace", "mesh": "default", "name": name,
        "spec": {"backends": [{"name": "otel", "type": "open_telemetry", "conf": {"endpoint": endpoint}}]}
    })
}

/// The lowest revision both zones have ACKed.
async fn acked(http: &reqwest::Client, global: &str) -> Result<i64> {
    let zones: serde_json::Value = http.get(format!("{global}/zones")).send().await?.json().await?;
    let items = zones["items"].as_array().cloned().unwrap_or_default();
    if items.len() < 2 {
        return Ok(0);
    }
    Ok(items
        .iter()
        .map(|z| z["ackedRevision"].as_i64().unwrap_or(0))
        .min()
        .unwrap_or(0))
}

async fn put(http: &reqwest::Client, global: &str, name: &str, endpoint: &str) -> Result<i64> {
    let r = http
        .put(format!("{global}/meshes/default/meshtraces/{name}"))
        .json(&trace(name, endpoint))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("PUT {name}: {}", r.status());
    }
    let body: serde_json::Value = r.json().await?;
    body["revision"].as_i64().context("no revision in the answer")
}

async fn wait_acked(http: &reqwest::Client, global: &str, revision: i64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked(http, global).await? < revision {
        if Instant::now() > deadline {
            bail!("zones did not ACK revision {revision} within 60 s");
        }
        tokio::task::yield_now().await;
    }
    Ok(())
}

async fn measure(http: &reqwest::Client, global: &str, existing: usize, writes: usize) -> Result<()> {
    println!(
        "\nsync benchmark: global-cp and 2 zone-cps (embedded stores), {existing} existing policies, {writes} writes\n"
    );
    let mut last = 0;
    for i in 0..existing {
        last = put(http, global, &format!("existing-{i}"), "collector:4317").await?;
    }
    wait_acked(http, global, last).await?;
    let mut latencies = Vec::with_capacity(writes);
    for i in 0..writes {
        let started = Instant::now();
        let revision = put(
            http,
            global,
            &format!("existing-{}", i % existing.max(1)),
            &format!("c{i}:4317"),
        )
        .await?;
        wait_acked(http, global, revision).await?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0;
    println!("REST write on global -> applied and ACKed by both zones:");
    println!(
        "  p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}
