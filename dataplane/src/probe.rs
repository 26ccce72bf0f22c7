//! Readiness: probes each inbound's application and tells the zone when that changes, so a
//! failing instance leaves every caller's endpoints (and other zones' too, through sync)
//! while it is still running.
//!
//! By default a TCP connect (as Kuma's service probes). With `--probe-http-path PATH`, HTTP
//! services (`kuma.io/protocol: http`, `http2`, `grpc`) get `GET PATH` instead: an answer under
//! 500 within 2 s is ready. Two failures in a row make an inbound not ready (one slow answer
//! does not); one success makes it ready again.

use std::time::Duration;

use meridian_model::policies::dataplane::{Health, speaks_http};
use meridian_model::{Resource, Spec};
use tracing::{info, warn};

use super::Registration;

async fn ready(
    http: &reqwest::Client,
    address: &str,
    port: u32,
    http_path: Option<&str>,
    timeout: Duration,
) -> bool {
    let target = format!("{address}:{port}");
    if let Some(path) = http_path {
        let path = path.trim_start_matches('/');
        match http
            .get(format!("http://{target}/{path}"))
            .timeout(timeout)
            .send()
            .await
        {
            Ok(r) => r.status().as_u16() < 500,
            Err(_) => false,
        }
    } else {
        matches!(
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&target)).await,
            Ok(Ok(_))
        )
    }
}

/// How long an app may take to answer a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Failed probes in a row that make an inbound not ready.
const FAILURES_TO_UNREADY: u32 = 2;

/// Probes every `interval` until aborted; re-registers the Dataplane with each inbound's
/// `health.ready` whenever one changes.
pub(crate) async fn run(
    mut resource: Resource,
    registration: Registration,
    interval: Duration,
    http_path: Option<String>,
) {
    let http = reqwest::Client::new();
    let Spec::Dataplane(dp) = &resource.spec else {
        return;
    };
    let inbounds = dp.networking.inbound.iter().flatten().count();
    // Registration said "ready": only a change from that is worth a write.
    let mut reported = vec![true; inbounds];
    let mut failures = vec![0u32; inbounds];
    loop {
        let Spec::Dataplane(dp) = &resource.spec else {
            return;
        };
        let mut now = Vec::with_capacity(inbounds);
        for (i, inbound) in dp.networking.inbound.iter().flatten().enumerate() {
            let address = inbound.service_address.as_deref().unwrap_or("127.0.0.1");
            let port = inbound.service_port.unwrap_or(inbound.port);
            let path = http_path.as_deref().filter(|_| speaks_http(&inbound.tags));
            let ok = ready(&http, address, port, path, PROBE_TIMEOUT).await;
            failures[i] = if ok { 0 } else { failures[i] + 1 };
            now.push(ok || (reported[i] && failures[i] < FAILURES_TO_UNREADY));
        }
        if now != reported {
            if let Spec::Dataplane(dp) = &mut resource.spec {
                for (inbound, ready) in dp.networking.inbound.iter_mut().flatten().zip(&now) {
                    inbound.health = Some(Health { ready: *ready });
                }
            }
            info!(ready = ?now, "inbound readiness changed; telling the zone");
            match registration.register(&resource).await {
                Ok(()) => reported = now,
                Err(e) => warn!(error = %e, "reporting readiness failed"),
            }
        }
        tokio::time::sleep(interval).await;
    }
}
