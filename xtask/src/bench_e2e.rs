//! `cargo xtask bench e2e`: a REST write on global, to the delta-xDS response that carries it
//! in every proxy of two zones (release builds, embedded stores, N simulated proxies per zone,
//! each a stream to its zone-cp). Each write is a mesh-wide MeshTimeout change, so every proxy
//! gets a new cluster. Prints p50/p99/max over the writes; asserts nothing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench_sync::Federation;
use crate::bench_xds::{Progress, connect, put, ran_in_release, register, settle, wait_configured};

pub fn e2e(args: &[&str]) -> Result<()> {
    if ran_in_release("e2e", args)? {
        return Ok(());
    }
    let (mut proxies, mut writes) = (1000, 200);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let n: usize = value
            .parse()
            .with_context(|| format!("{flag}: expected a number"))?;
        match *flag {
            "--proxies" => proxies = n,
            "--writes" => writes = n,
            other => bail!("unknown flag {other}: expected --proxies N (per zone) or --writes N"),
        }
    }
    if !(1..=10_000).contains(&proxies) || writes == 0 {
        bail!("--proxies must be from 1 to 10000 and --writes at least 1");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let federation = Federation::start().await?;
        measure(&federation, proxies, writes).await
    })
}

async fn measure(federation: &Federation, proxies: usize, writes: usize) -> Result<()> {
    println!(
        "\nend-to-end benchmark: global-cp, 2 zone-cps, {proxies} simulated delta-xDS proxies per zone, {writes} writes on global\n"
    );
    let progress = Arc::new(Progress::default());
    for (api, xds) in &federation.zones {
        register(api, proxies).await?;
        settle(api).await?;
        connect(xds, proxies, &progress).await?;
    }
    let expected = 2 * proxies;
    wait_configured(&progress, expected).await?;
    let (mut last, mut p50s) = (Vec::with_capacity(writes), Vec::with_capacity(writes));
    for i in 0..writes {
        for (api, _) in &federation.zones {
            settle(api).await?;
        }
        progress.arrivals().clear();
        let t0 = Instant::now();
        progress.epoch.fetch_add(1, Ordering::SeqCst);
        // Every write changes every proxy's cluster to `backend`.
        let policy = serde_json::json!({
            "type": "MeshTimeout", "mesh": "default", "name": "bench",
            "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": format!("{}ms", 1000 + i)}}]}
        });
        put(&federation.global, "/meshes/default/meshtimeouts/bench", policy).await?;
        let arrivals = progress
            .wait_arrivals(expected, t0, &format!("write {i}"))
            .await?;
        p50s.push(arrivals[arrivals.len() / 2]);
        last.push(arrivals[arrivals.len() - 1]);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        ms(v[((v.len() - 1) as f64 * p).round() as usize])
    };
    println!("REST write on global -> received by the last of {expected} proxies in 2 zones:");
    println!(
        "  p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
        pct(&mut last, 0.5),
        pct(&mut last, 0.99),
        pct(&mut last, 1.0)
    );
    println!(
        "  (the median proxy of each write: p50 {:.1} ms, p99 {:.1} ms)",
        pct(&mut p50s, 0.5),
        pct(&mut p50s, 0.99)
    );
    Ok(())
}
