//! Readiness: probes each inbound's application and tells the zone when that changes, so a
//! failing instance leaves every caller's endpoints (and other zones' too, through sync)
//! while it is still running.
//!
//! HTTP services (`kuma.io/protocol: http`, `http2`, `grpc`) are probed with `GET /`: any answer
//! under 500 is ready. Others with a TCP connect.

use std::time::Duration;

use meridian_model::policies::dataplane::Health;
use meridian_model::{Resource, Spec};
use tracing::{info, warn};

use super::Registration;

fn is_http(tags: &std::collections::BTreeMap<String, String>) -> bool {
    matches!(
        tags.get("kuma.io/protocol").map(String::as_str),
        Some("http" | "http2" | "grpc")
    )
}

async fn ready(
    http: &reqwest::Client,
    address: &str,
    port: u32,
    speaks_http: bool,
    timeout: Duration,
) -> bool {
    let target = format!("{address}:{port}");
    if speaks_http {
        match http
            .get(format!("http://{target}/"))
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

/// Probes every `interval` until aborted; re-registers the Dataplane with each inbound's
/// `health.ready` whenever one changes.
pub(crate) async fn run(mut resource: Resource, registration: Registration, interval: Duration) {
    let http = reqwest::Client::new();
    let timeout = interval.max(Duration::from_millis(500));
    let mut reported: Option<Vec<bool>> = None;
    loop {
        let Spec::Dataplane(dp) = &resource.spec else {
            return;
        };
        let mut now = Vec::new();
        for inbound in dp.networking.inbound.iter().flatten() {
            let address = inbound.service_address.as_deref().unwrap_or("127.0.0.1");
            let port = inbound.service_port.unwrap_or(inbound.port);
            now.push(ready(&http, address, port, is_http(&inbound.tags), timeout).await);
        }
        // Registration said "ready": only a change from that (or since) is worth a write.
        let before = reported.clone().unwrap_or_else(|| vec![true; now.len()]);
        if now != before {
            if let Spec::Dataplane(dp) = &mut resource.spec {
                for (inbound, ready) in dp.networking.inbound.iter_mut().flatten().zip(&now) {
                    inbound.health = Some(Health { ready: *ready });
                }
            }
            info!(ready = ?now, "inbound readiness changed; telling the zone");
            match registration.register(&resource).await {
                Ok(()) => reported = Some(now),
                Err(e) => warn!(error = %e, "reporting readiness failed"),
            }
        }
        tokio::time::sleep(interval).await;
    }
}
