//! `cargo xtask bench xds --transparent [--proxies N] [--services S]`: what trimming saves.
//! N transparently proxied Dataplanes serve S services (over mTLS, no allow-all); each
//! service lets in the five after it, so each proxy may call five services. Prints the
//! config each proxy received and zone-cp's memory per stream, trimmed, then after a
//! mesh-wide allow-all makes every proxy reach every service (the same mesh untrimmed).
//! It asserts nothing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::bench_xds::{Progress, change, connect, put, rss_kib, settle, wait_configured};

/// Callers each service lets in.
const CALLERS: usize = 5;

async fn registered(api: &str, proxies: usize, services: usize) -> Result<Duration> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (http, next, api) = (http.clone(), next.clone(), api.to_owned());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i > proxies {
                    return Ok::<_, anyhow::Error>(());
                }
                let name = format!("dp-{i}");
                let body = serde_json::json!({
                    "type": "Dataplane", "mesh": "default", "name": name,
                    "networking": {"address": "127.0.0.1",
                        "inbound": [{"port": 10001, "servicePort": 8080, "tags": {"kuma.io/service": format!("svc-{}", i % services), "kuma.io/protocol": "http"}}],
                        "transparentProxying": {}}
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

async fn vips(api: &str) -> usize {
    let Ok(r) = reqwest::get(format!("{api}/meshes/default/virtualips/default")).await else {
        return 0;
    };
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    v["services"].as_object().map_or(0, |m| m.len())
}

pub(crate) async fn measure(pid: u32, api: &str, xds: &str, proxies: usize, services: usize) -> Result<()> {
    println!(
        "\nxDS benchmark, transparent proxying: {proxies} proxies serving {services} services, each may call {CALLERS}\n"
    );
    put(
        api,
        "/meshes/default",
        serde_json::json!({"type": "Mesh", "name": "default",
            "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}),
    )
    .await?;
    reqwest::Client::new()
        .delete(format!(
            "{api}/meshes/default/meshtrafficpermissions/allow-all-default"
        ))
        .send()
        .await?;
    for j in 0..services {
        let from: Vec<serde_json::Value> = (1..=CALLERS)
            .map(|k| serde_json::json!({"targetRef": {"kind": "MeshService", "name": format!("svc-{}", (j + k) % services)}, "default": {"action": "Allow"}}))
            .collect();
        let mtp = serde_json::json!({"type": "MeshTrafficPermission", "mesh": "default", "name": format!("to-svc-{j}"),
            "spec": {"targetRef": {"kind": "MeshService", "name": format!("svc-{j}")}, "from": from}});
        put(
            api,
            &format!("/meshes/default/meshtrafficpermissions/to-svc-{j}"),
            mtp,
        )
        .await?;
    }
    let took = registered(api, proxies, services).await?;
    println!("registered {proxies} Dataplanes in {:.1}s", took.as_secs_f64());
    let t0 = Instant::now();
    while vips(api).await < services {
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("the zone did not allocate {services} virtual IPs");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{services} virtual IPs allocated {:.1}s after the last registration",
        t0.elapsed().as_secs_f64()
    );
    settle(api).await?;
    let rss_before = rss_kib(pid)?;
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    connect(xds, proxies, &progress).await?;
    wait_configured(&progress, proxies).await?;
    while progress.secured.load(Ordering::Relaxed) < proxies {
        if started.elapsed() > Duration::from_secs(300) {
            bail!("not every proxy got its certificate");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    settle(api).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = |what: &str, rss: u64, bytes: usize| {
        println!(
            "{what}: {:.1} KiB of config per proxy; zone-cp RSS {:.1} MiB, {:.1} KiB per stream",
            bytes as f64 / proxies as f64 / 1024.0,
            rss as f64 / 1024.0,
            rss.saturating_sub(rss_before) as f64 / proxies as f64
        );
    };
    println!(
        "all {proxies} configured and holding certificates {:.2}s after the first connect",
        started.elapsed().as_secs_f64()
    );
    let trimmed = progress.bytes.load(Ordering::Relaxed);
    report("trimmed (5 reachable services)", rss_kib(pid)?, trimmed);

    settle(api).await?;
    let allow_all = serde_json::json!({"type": "MeshTrafficPermission", "mesh": "default", "name": "allow-all",
        "spec": {"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}});
    let write = put(api, "/meshes/default/meshtrafficpermissions/allow-all", allow_all);
    change(
        (pid, api),
        &progress,
        proxies,
        "mesh-wide allow-all (every service reachable)",
        write,
    )
    .await?;
    settle(api).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Delta xDS sends what was added: the untrimmed config is what came before plus that.
    report(
        &format!("untrimmed ({services} reachable services)"),
        rss_kib(pid)?,
        progress.bytes.load(Ordering::Relaxed),
    );
    Ok(())
}
