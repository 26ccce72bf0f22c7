//! `--readiness-port`: where the kubelet probes a sidecar (`GET /ready`). Envoy's admin port
//! stays on 127.0.0.1, so this answers for it: 200 once Envoy says it is LIVE (it has its
//! listeners from the control plane), 503 before. Requests are bounded: 4 KiB and 2 s to
//! arrive; anything but `GET /ready` is a 404.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_REQUEST: usize = 4096;

/// Envoy's own answer to `/ready` on its admin port: `true` when it is LIVE.
pub async fn envoy_ready(http: &reqwest::Client, admin_port: u16) -> bool {
    match http
        .get(format!("http://127.0.0.1:{admin_port}/ready"))
        .send()
        .await
    {
        Ok(r) => r.status().is_success() && r.text().await.is_ok_and(|t| t.trim() == "LIVE"),
        Err(_) => false,
    }
}

/// Serves `/ready` on `addr` for ever.
pub async fn serve(addr: SocketAddr, admin_port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "readiness served at /ready");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    loop {
        let (stream, _) = listener.accept().await?;
        let http = http.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(3), answer(stream, &http, admin_port)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, http: &reqwest::Client, admin_port: u16) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let mut parts = line.split_whitespace();
    let (status, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/ready")) if envoy_ready(http, admin_port).await => ("200 OK", "LIVE\n"),
        (Some("GET"), Some("/ready")) => ("503 Service Unavailable", "envoy is not ready\n"),
        _ => ("404 Not Found", "only GET /ready is served here\n"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
