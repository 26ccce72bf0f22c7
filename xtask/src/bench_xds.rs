//! `cargo xtask bench xds`: N simulated delta-xDS clients on one zone-cp node (release build).
//! Prints streams held, zone-cp memory per stream, and the time from one mesh-wide policy
//! change (a REST write) to the last client's receipt of it, with the CPU zone-cp spent on it:
//! a MeshTimeout (clusters, listeners and routes), then a MeshCircuitBreaker (clusters alone),
//! then a MeshHTTPRoute splitting traffic to backend with a subset of it (routes, and a cluster
//! and endpoints more per proxy).
//! With `--churn`, the one instance every proxy calls then turns unready and ready again (an
//! endpoints-only change), measured the same way. With `--mtls`, it then turns on the
//! mesh's mTLS and prints how long until every proxy has its certificate (issued and pushed
//! over SDS), and the memory per stream with certificates. It asserts nothing.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use meridian_testing::{KillOnDrop, free_port, wait_until};
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::{run, target_dir};

const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const TYPES: [(&str, &str); 5] = [
    (SECRET, "identity_cert"),
    ("type.googleapis.com/envoy.config.cluster.v3.Cluster", ""),
    (
        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "*",
    ),
    ("type.googleapis.com/envoy.config.listener.v3.Listener", ""),
    (
        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        "*",
    ),
];
/// Streams multiplexed on one HTTP/2 connection, as many proxies behind one NAT would be.
const STREAMS_PER_CONNECTION: usize = 100;

pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("reading VmRSS")
}

/// In a debug build, runs `cargo xtask bench NAME ARGS` again from a release build and says
/// so. Simulated proxies share the two cores with the control planes; as a debug build they
/// took a quarter of the CPU.
pub(crate) fn ran_in_release(name: &str, args: &[&str]) -> Result<bool> {
    if !cfg!(debug_assertions) {
        return Ok(false);
    }
    run(
        "cargo build --release (xtask, the simulated proxies)",
        crate::cargo().args(["build", "--release", "-p", "xtask"]),
    )?;
    let status = Command::new(target_dir().join("release/xtask"))
        .args(["bench", name])
        .args(args)
        .status()
        .context("starting the release build of xtask")?;
    if !status.success() {
        bail!("bench {name}: {status}");
    }
    Ok(true)
}

pub fn xds(args: &[&str]) -> Result<()> {
    if ran_in_release("xds", args)? {
        return Ok(());
    }
    let mut proxies = 1000;
    let mut mtls = false;
    let mut churn = false;
    let mut transparent = false;
    let mut services = 100;
    let mut rest = args;
    loop {
        match rest {
            [] => break,
            ["--proxies", n, tail @ ..] => {
                proxies = n.parse().context("--proxies: expected a number")?;
                rest = tail;
            }
            ["--mtls", tail @ ..] => {
                mtls = true;
                rest = tail;
            }
            ["--churn", tail @ ..] => {
                churn = true;
                rest = tail;
            }
            ["--transparent", tail @ ..] => {
                transparent = true;
                rest = tail;
            }
            ["--services", n, tail @ ..] => {
                services = n.parse().context("--services: expected a number")?;
                rest = tail;
            }
            _ => bail!(
                "usage: cargo xtask bench xds [--proxies N] [--mtls] [--churn] | [--proxies N] --transparent [--services N]"
            ),
        }
    }
    if !(1..=50_000).contains(&proxies) {
        bail!("--proxies must be from 1 to 50000");
    }
    run(
        "cargo build --release (zone-cp)",
        crate::cargo().args(["build", "--release", "-p", "meridian-zone-cp"]),
    )?;
    let dir = tempfile::tempdir()?;
    let (api_port, xds_port) = (free_port()?, free_port()?);
    let cp = KillOnDrop::new(
        Command::new(target_dir().join("release/zone-cp"))
            .args(["run", "--zone", "bench"])
            .args([
                "--api-addr",
                &format!("127.0.0.1:{api_port}"),
                "--xds-addr",
                &format!("127.0.0.1:{xds_port}"),
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_LOG", "warn,openraft=off")
            .stdout(Stdio::null())
            .spawn()
            .context("starting zone-cp")?,
    );
    let api = format!("http://127.0.0.1:{api_port}");
    // Up once the default mesh is there (it is created just after the API answers).
    let health = format!("{api}/meshes/default");
    wait_until("zone-cp", Duration::from_secs(30), || {
        Command::new("curl")
            .args(["-sf", "-o", "/dev/null", &health])
            .status()
            .is_ok_and(|s| s.success())
    })?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new()?;
    let xds = format!("http://127.0.0.1:{xds_port}");
    if transparent {
        if !(1..=proxies).contains(&services) {
            bail!("--services must be from 1 to --proxies");
        }
        return runtime.block_on(crate::bench_transparent::measure(
            cp.id(),
            &api,
            &xds,
            proxies,
            services,
        ));
    }
    runtime.block_on(measure(cp.id(), &api, &xds, proxies, mtls, churn))
}

/// Registers `backend-0`, and `dp-1` to `dp-N` that all call it, on the zone at `api`.
pub(crate) async fn register(api: &str, proxies: usize) -> Result<Duration> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (http, next, api) = (http.clone(), next.clone(), api.to_owned());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i > proxies {
                    return Ok::<_, anyhow::Error>(());
                }
                // proxy 0 is the backend everyone calls; the others serve 100 services.
                let (name, service, outbound) = if i == 0 {
                    ("backend-0".to_owned(), "backend".to_owned(), serde_json::json!([]))
                } else {
                    (format!("dp-{i}"), format!("svc-{}", i % 100), serde_json::json!([{"port": 20001, "tags": {"kuma.io/service": "backend"}}]))
                };
                let body = serde_json::json!({
                    "type": "Dataplane", "mesh": "default", "name": name,
                    "networking": {"address": "127.0.0.1", "inbound": [{"port": 10001, "servicePort": 8080, "tags": {"kuma.io/service": service, "kuma.io/protocol": "http"}}], "outbound": outbound}
                });
                let r = http.put(format!("{api}/meshes/default/dataplanes/{name}")).json(&body).send().await?;
                if !r.status().is_success() {
                    bail!("registering {name}: {}", r.status());
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

/// A counter from zone-cp's Prometheus metrics.
async fn metric(http: &reqwest::Client, api: &str, name: &str) -> Result<u64> {
    let text = http.get(format!("{api}/metrics")).send().await?.text().await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("metric {name} not found"))
}

/// Snapshots zone-cp has made: translated in full, in some types, or with endpoints patched in.
async fn generated(http: &reqwest::Client, api: &str) -> Result<u64> {
    let (full, partial, patched) = generations(http, api).await?;
    Ok(full + partial + patched)
}

/// Snapshots translated in full, in the types a policy change can alter, and with endpoints
/// patched in.
async fn generations(http: &reqwest::Client, api: &str) -> Result<(u64, u64, u64)> {
    Ok((
        metric(http, api, "meridian_xds_generations_total").await?,
        metric(http, api, "meridian_xds_partial_generations_total").await?,
        metric(http, api, "meridian_xds_endpoint_patches_total").await?,
    ))
}

/// Waits until zone-cp stops regenerating snapshots (what [`generated`] counts holds for
/// 300 ms), so that what follows measures one change, not the tail of the registrations.
pub(crate) async fn settle(api: &str) -> Result<Duration> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut last = generated(&http, api).await?;
    let mut still = Instant::now();
    while still.elapsed() < Duration::from_millis(300) {
        if started.elapsed() > Duration::from_secs(300) {
            bail!("zone-cp still regenerating snapshots after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = generated(&http, api).await?;
        if now != last {
            (last, still) = (now, Instant::now());
        }
    }
    Ok(still.duration_since(started))
}

/// Shared progress of every simulated proxy.
#[derive(Default)]
pub(crate) struct Progress {
    pub(crate) initialized: AtomicUsize,
    /// Bumped for each change measured: a stream counts its first response after a bump as
    /// its arrival.
    pub(crate) epoch: AtomicUsize,
    /// When each proxy received the change being measured.
    received: std::sync::Mutex<Vec<Instant>>,
    /// Proxies that received their certificate.
    pub(crate) secured: AtomicUsize,
    last_secured: Mutex<Option<Instant>>,
    /// Streams turned away while too many were starting, and tried again.
    pub(crate) retries: AtomicUsize,
    /// Bytes of every resource received, by every stream.
    pub(crate) bytes: AtomicUsize,
}

impl Progress {
    pub(crate) fn arrivals(&self) -> std::sync::MutexGuard<'_, Vec<Instant>> {
        self.received.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (up to 120 s) until `expected` proxies have received the change `what` made at
    /// `t0`; returns when each did, after `t0`, in order.
    pub(crate) async fn wait_arrivals(
        &self,
        expected: usize,
        t0: Instant,
        what: &str,
    ) -> Result<Vec<Duration>> {
        while self.arrivals().len() < expected {
            if t0.elapsed() > Duration::from_secs(120) {
                bail!(
                    "{what}: only {} of {expected} proxies received it",
                    self.arrivals().len()
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut arrivals: Vec<Duration> = self
            .arrivals()
            .iter()
            .map(|t| t.saturating_duration_since(t0))
            .collect();
        arrivals.sort();
        Ok(arrivals)
    }
}

/// CPU time zone-cp has used, all threads (those ended too), in ms; 10 ms resolution.
fn cpu_ms(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("reading /proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks =
        |i: usize| -> Result<u64> { fields.get(i).context("stat field")?.parse().context("stat field") };
    // utime and stime, in clock ticks of 10 ms.
    Ok((ticks(11)? + ticks(12)?) * 10)
}

/// Makes one change with `write`, waits until `expected` proxies have received a response
/// after it, and prints when they did and the CPU zone-cp spent meanwhile.
pub(crate) async fn change<F: std::future::Future<Output = Result<()>>>(
    (pid, api): (u32, &str),
    progress: &Progress,
    expected: usize,
    what: &str,
    write: F,
) -> Result<()> {
    progress.arrivals().clear();
    let http = reqwest::Client::new();
    let (full0, partial0, patched0) = generations(&http, api).await?;
    let cpu0 = cpu_ms(pid)?;
    let t0 = Instant::now();
    progress.epoch.fetch_add(1, Ordering::SeqCst);
    write.await?;
    let written = t0.elapsed();
    let arrivals = progress.wait_arrivals(expected, t0, what).await?;
    let cpu = cpu_ms(pid)? - cpu0;
    // Counted once generation is over: what the proxies received may not be all it did.
    settle(api).await?;
    let (full, partial, patched) = generations(&http, api).await?;
    let at = |q: f64| arrivals[((arrivals.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    println!(
        "{what}: REST write {:.1} ms; last of {expected} proxies received it {:.1} ms after the write began; zone-cp CPU {cpu} ms",
        written.as_secs_f64() * 1000.0,
        at(1.0),
    );
    println!(
        "  received by the proxies after the write began: p10 {:.1} ms, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms",
        at(0.1),
        at(0.5),
        at(0.9),
        at(0.99)
    );
    println!(
        "  snapshots: {} translated in full, {} in the types the change can alter, {} with endpoints patched in",
        full - full0,
        partial - partial0,
        patched - patched0
    );
    Ok(())
}

/// Writes `body` to the REST API at `path`.
pub(crate) async fn put(api: &str, path: &str, body: serde_json::Value) -> Result<()> {
    let r = reqwest::Client::new()
        .put(format!("{api}{path}"))
        .json(&body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("PUT {path}: {}", r.status());
    }
    Ok(())
}

async fn simulate(
    mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    id: usize,
    progress: Arc<Progress>,
) -> Result<()> {
    // Turned away while too many streams start at once, it tries again later, as Envoy does.
    let mut attempt = 0u64;
    let (tx, mut responses) = loop {
        let (tx, rx) = mpsc::channel(8);
        for (i, (type_url, names)) in TYPES.iter().enumerate() {
            tx.send(DeltaDiscoveryRequest {
                node: (i == 0).then(|| Node {
                    id: format!("default.dp-{id}"),
                    ..Default::default()
                }),
                type_url: (*type_url).into(),
                resource_names_subscribe: if names.is_empty() {
                    vec![]
                } else {
                    vec![(*names).into()]
                },
                ..Default::default()
            })
            .await?;
        }
        match client.delta_aggregated_resources(ReceiverStream::new(rx)).await {
            Ok(r) => break (tx, r.into_inner()),
            Err(status) if status.code() == tonic::Code::Unavailable && attempt < 20 => {
                attempt += 1;
                progress.retries.fetch_add(1, Ordering::Relaxed);
                // 0.5 s to 1.5 s, spread by the proxy's id.
                tokio::time::sleep(Duration::from_millis(
                    500 + (id as u64 * 7919 + attempt * 104_729) % 1000,
                ))
                .await;
            }
            Err(status) => return Err(status.into()),
        }
    };
    let mut seen_types = 0;
    let mut seen_epoch = 0;
    while let Some(r) = responses.message().await? {
        tx.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await?;
        let bytes: usize = r
            .resources
            .iter()
            .filter_map(|x| x.resource.as_ref())
            .map(|a| a.value.len())
            .sum();
        progress.bytes.fetch_add(bytes, Ordering::Relaxed);
        seen_types += 1;
        if seen_types == TYPES.len() {
            progress.initialized.fetch_add(1, Ordering::Relaxed);
        }
        if r.type_url == SECRET && r.resources.iter().any(|s| s.name == "identity_cert") {
            progress.secured.fetch_add(1, Ordering::Relaxed);
            *progress.last_secured.lock().await = Some(Instant::now());
        }
        let epoch = progress.epoch.load(Ordering::SeqCst);
        if epoch > seen_epoch {
            seen_epoch = epoch;
            progress.arrivals().push(Instant::now());
        }
    }
    Ok(())
}

/// Opens the streams of `dp-1` to `dp-N` to the xDS server at `xds`, each reporting to
/// `progress`.
pub(crate) async fn connect(xds: &str, proxies: usize, progress: &Arc<Progress>) -> Result<()> {
    let mut client = None;
    for id in 1..=proxies {
        if (id - 1) % STREAMS_PER_CONNECTION == 0 {
            client = Some(
                AggregatedDiscoveryServiceClient::connect(xds.to_owned())
                    .await?
                    .max_decoding_message_size(16 << 20),
            );
        }
        let c = client.clone().context("client")?;
        let p = progress.clone();
        tokio::spawn(async move {
            if let Err(e) = simulate(c, id, p).await {
                eprintln!("proxy {id}: {e}");
            }
        });
    }
    Ok(())
}

/// Waits (up to 300 s) until `expected` streams have their whole config.
pub(crate) async fn wait_configured(progress: &Progress, expected: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while progress.initialized.load(Ordering::Relaxed) < expected {
        if Instant::now() > deadline {
            bail!(
                "only {} of {expected} proxies got their config",
                progress.initialized.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn measure(pid: u32, api: &str, xds: &str, proxies: usize, mtls: bool, churn: bool) -> Result<()> {
    println!("\nxDS benchmark: {proxies} simulated delta-xDS proxies on one zone-cp node\n");
    let took = register(api, proxies).await?;
    println!(
        "registered {} Dataplanes in {:.1}s",
        proxies + 1,
        took.as_secs_f64()
    );
    let settled = settle(api).await?;
    println!(
        "zone-cp finished generating their snapshots {:.1}s after the last registration",
        settled.as_secs_f64()
    );
    let rss_before = rss_kib(pid)?;
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    connect(xds, proxies, &progress).await?;
    wait_configured(&progress, proxies).await?;
    let connect_time = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_kib(pid)?;
    println!(
        "streams held: {proxies}, all configured {:.2}s after the first connect ({} turned away while too many were starting, and retried)",
        connect_time.as_secs_f64(),
        progress.retries.load(Ordering::Relaxed)
    );
    println!(
        "zone-cp RSS: {:.1} MiB before streams, {:.1} MiB with them: {:.1} KiB per stream",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        rss_after.saturating_sub(rss_before) as f64 / proxies as f64
    );

    // One mesh-wide policy change: every proxy's cluster to `backend` changes.
    let policy = serde_json::json!({
        "type": "MeshTimeout", "mesh": "default", "name": "bench",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "3s"}}]}
    });
    let write = put(api, "/meshes/default/meshtimeouts/bench", policy);
    change((pid, api), &progress, proxies, "mesh-wide MeshTimeout", write).await?;
    // One that can alter clusters alone: the rest of every snapshot is kept.
    settle(api).await?;
    let breaker = serde_json::json!({
        "type": "MeshCircuitBreaker", "mesh": "default", "name": "bench",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionLimits": {"maxConnections": 512}}}]}
    });
    let write = put(api, "/meshes/default/meshcircuitbreakers/bench", breaker);
    change(
        (pid, api),
        &progress,
        proxies,
        "mesh-wide MeshCircuitBreaker",
        write,
    )
    .await?;
    // A route for every caller: a 90/10 split between backend and a subset of it.
    settle(api).await?;
    let route = serde_json::json!({
        "type": "MeshHTTPRoute", "mesh": "default", "name": "bench",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "default": {"backendRefs": [
                {"kind": "MeshService", "name": "backend", "weight": 90},
                {"kind": "MeshServiceSubset", "name": "backend", "tags": {"kuma.io/protocol": "http"}, "weight": 10}
            ]}
        }]}]}
    });
    let write = put(api, "/meshes/default/meshhttproutes/bench", route);
    change(
        (pid, api),
        &progress,
        proxies,
        "mesh-wide MeshHTTPRoute (a split to a subset)",
        write,
    )
    .await?;
    if churn {
        // The one backend instance every proxy calls turns unready, then ready again.
        for ready in [false, true] {
            settle(api).await?;
            let backend = serde_json::json!({
                "type": "Dataplane", "mesh": "default", "name": "backend-0",
                "networking": {"address": "127.0.0.1", "inbound": [{"port": 10001, "servicePort": 8080, "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http"}, "health": {"ready": ready}}]}
            });
            let write = put(api, "/meshes/default/dataplanes/backend-0", backend);
            let what = format!("readiness flip (backend-0 ready: {ready})");
            change((pid, api), &progress, proxies, &what, write).await?;
        }
    }
    if mtls {
        let mesh = serde_json::json!({
            "type": "Mesh", "name": "default",
            "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}
        });
        let t0 = Instant::now();
        put(api, "/meshes/default", mesh).await?;
        while progress.secured.load(Ordering::Relaxed) < proxies {
            if t0.elapsed() > Duration::from_secs(300) {
                bail!(
                    "only {} of {proxies} proxies received a certificate",
                    progress.secured.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let last = progress
            .last_secured
            .lock()
            .await
            .map(|t| t.duration_since(t0))
            .unwrap_or_default();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = rss_kib(pid)?;
        println!(
            "mTLS on: every one of {proxies} proxies had its own certificate {:.2}s after the Mesh write ({:.0} certificates/s, issued and pushed)",
            last.as_secs_f64(),
            proxies as f64 / last.as_secs_f64().max(1e-9)
        );
        println!(
            "zone-cp RSS with certificates: {:.1} MiB: {:.1} KiB per stream",
            rss as f64 / 1024.0,
            rss.saturating_sub(rss_before) as f64 / proxies as f64
        );
    }
    Ok(())
}
