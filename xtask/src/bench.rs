//! `cargo xtask bench api`: REST write and read throughput with latency percentiles, on the
//! embedded SQLite store and on a durable (fsync on) throwaway Postgres. It prints figures; it
//! asserts nothing.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meridian_testing::{KillOnDrop, Postgres, PostgresOptions, free_port, wait_until};

use crate::{run, target_dir, workspace_root};

pub(crate) struct Options {
    pub(crate) writes: usize,
    pub(crate) concurrency: usize,
}

fn parse(args: &[&str]) -> Result<Options> {
    let mut o = Options {
        writes: 2000,
        concurrency: 16,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match *flag {
            "--writes" => o.writes = value.parse().context("--writes: expected a number")?,
            "--concurrency" => o.concurrency = value.parse().context("--concurrency: expected a number")?,
            other => bail!("unknown flag {other}: expected --writes N or --concurrency C"),
        }
    }
    if o.writes == 0 || o.concurrency == 0 {
        bail!("--writes and --concurrency must be at least 1");
    }
    Ok(o)
}

pub fn api(args: &[&str]) -> Result<()> {
    let options = parse(args)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(
        "cargo build --release (global-cp)",
        Command::new(cargo)
            .args([
                "build",
                "--release",
                "-p",
                "meridian-global-cp",
                "--bin",
                "global-cp",
            ])
            .current_dir(workspace_root()),
    )?;
    let bin = target_dir().join("release/global-cp");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new()?;

    println!(
        "\nREST API benchmark: {} writes (PUT MeshTrace, each a new resource), then {} reads, {} concurrent clients\n",
        options.writes, options.writes, options.concurrency
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10}",
        "store / operation", "ops/s", "p50 ms", "p99 ms", "max ms"
    );

    let dir = tempfile::tempdir()?;
    let server = start(&bin, &["--data-dir", &dir.path().join("data").to_string_lossy()])?;
    runtime.block_on(measure("sqlite (embedded)", &server.1, &options))?;
    drop(server);

    let pg = Postgres::start_with(PostgresOptions { durable: true })?;
    let server = start(&bin, &["--store", &pg.url()])?;
    runtime.block_on(measure("postgres (fsync on)", &server.1, &options))?;
    drop(server);
    println!(
        "\nmachine: {} cores; figures vary with load, compare runs on the same machine",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    Ok(())
}

fn start(bin: &std::path::Path, flags: &[&str]) -> Result<(KillOnDrop, String)> {
    let port = free_port()?;
    let child = Command::new(bin)
        .arg("run")
        .args(["--api-addr", &format!("127.0.0.1:{port}")])
        .args(["--sync-addr", &format!("127.0.0.1:{}", free_port()?)])
        .args(flags)
        .env("RUST_LOG", "warn,openraft=off")
        .stdout(Stdio::null())
        .spawn()
        .context("starting global-cp")?;
    let process = KillOnDrop::new(child);
    let url = format!("http://127.0.0.1:{port}");
    let health = format!("{url}/healthz");
    wait_until("global-cp to serve", Duration::from_secs(30), || {
        Command::new("curl")
            .args(["-sf", "-o", "/dev/null", &health])
            .status()
            .is_ok_and(|s| s.success())
    })?;
    Ok((process, url))
}

fn body(i: usize) -> serde_json::Value {
    serde_json::json!({
        "type": "MeshTrace",
        "mesh": "default",
        "name": format!("bench-{i}"),
        "spec": {"backends": [{"name": "otel", "type": "open_telemetry", "conf": {"endpoint": "collector:4317", "headers": {"x-api-key": "k"}}}]}
    })
}

/// Writes (or reads) `bench-{first}` to `bench-{first + writes - 1}` from `concurrency` clients.
pub(crate) async fn run_phase(
    url: &str,
    options: &Options,
    write: bool,
    first: usize,
) -> Result<(f64, Vec<Duration>)> {
    let client = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..options.concurrency {
        let (client, next, url) = (client.clone(), next.clone(), url.to_owned());
        let total = options.writes;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let i = first + i;
                let path = format!("{url}/meshes/default/meshtraces/bench-{i}");
                let t = Instant::now();
                let response = if write {
                    client.put(&path).json(&body(i)).send().await?
                } else {
                    client.get(&path).send().await?
                };
                let status = response.status();
                response.bytes().await?;
                if !status.is_success() {
                    bail!("request {i} answered {status}");
                }
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((options.writes as f64 / started.elapsed().as_secs_f64(), all))
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

async fn measure(store: &str, url: &str, options: &Options) -> Result<()> {
    for (op, write) in [("write", true), ("read", false)] {
        let (rate, mut latencies) = run_phase(url, options, write, 0).await?;
        latencies.sort();
        println!(
            "{:<22} {:>10.0} {:>10.2} {:>10.2} {:>10.2}",
            format!("{store} {op}"),
            rate,
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            percentile(&latencies, 1.0)
        );
    }
    Ok(())
}
