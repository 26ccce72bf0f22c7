//! The demo's services in one small binary.
//!
//! `demo-app --listen ADDR --name reg-server --zone zone-1 --delay 250ms` answers `GET /` after
//! the delay with `{service, zone, instance}`; `POST /fail?status=500` makes it fail until
//! `POST /recover`.
//!
//! Any other path answers (after the delay too) with `{service, zone, instance, path,
//! headers}`: what the request looked like when it arrived (after a route rewrote it).
//!
//! `demo-app --listen ADDR --name demo --upstream URL --calls 4` answers `GET /` by calling the
//! upstream that many times in sequence (through its sidecar), passing trace headers on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

const TRACE_HEADERS: &[&str] = &[
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
];

struct App {
    name: String,
    zone: String,
    instance: String,
    delay: Duration,
    upstream: Option<String>,
    calls: u32,
    /// 0 when healthy, else the status to fail with.
    failing: AtomicU16,
    http: reqwest::Client,
}

fn arg(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn parse_delay(text: &str) -> Result<Duration, String> {
    let (n, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "ms"), |i| text.split_at(i));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("--delay {text:?}: expected e.g. 250ms or 1s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        _ => Err(format!("--delay {text:?}: expected e.g. 250ms or 1s")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let usage =
        "usage: demo-app --listen ADDR --name NAME [--zone Z] [--delay 250ms] [--upstream URL --calls N]";
    let Some(listen) = arg(&args, "--listen").and_then(|a| a.parse::<SocketAddr>().ok()) else {
        eprintln!("{usage}");
        return std::process::ExitCode::from(2);
    };
    let delay = match parse_delay(&arg(&args, "--delay").unwrap_or_else(|| "0ms".into())) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let name = arg(&args, "--name").unwrap_or_else(|| "app".into());
    let app = Arc::new(App {
        instance: arg(&args, "--instance").unwrap_or_else(|| format!("{name}-{}", listen.port())),
        name,
        zone: arg(&args, "--zone").unwrap_or_else(|| "local".into()),
        delay,
        upstream: arg(&args, "--upstream"),
        calls: arg(&args, "--calls").and_then(|c| c.parse().ok()).unwrap_or(1),
        failing: AtomicU16::new(0),
        http: reqwest::Client::new(),
    });
    let router = Router::new()
        .route("/", get(serve))
        .route("/fail", post(fail))
        .route("/recover", post(recover))
        .fallback(echo)
        .with_state(app);
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo-app: binding {listen}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match axum::serve(listener, router).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-app: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let failing = app.failing.load(Ordering::Relaxed);
    if failing != 0 {
        let status = StatusCode::from_u16(failing).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, format!("{} is failing on purpose\n", app.instance)).into_response();
    }
    tokio::time::sleep(app.delay).await;
    let mut calls = Vec::new();
    if let Some(upstream) = &app.upstream {
        for _ in 0..app.calls {
            let mut req = app.http.get(upstream);
            for h in TRACE_HEADERS {
                if let Some(v) = headers.get(*h) {
                    req = req.header(*h, v.as_bytes());
                }
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    calls.push(
                        r.json::<serde_json::Value>()
                            .await
                            .unwrap_or(serde_json::Value::Null),
                    );
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    return (
                        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                        body,
                    )
                        .into_response();
                }
                Err(e) => {
                    return (StatusCode::BAD_GATEWAY, format!("calling {upstream}: {e}\n")).into_response();
                }
            }
        }
    }
    let body = serde_json::json!({
        "service": app.name,
        "zone": app.zone,
        "instance": app.instance,
        "calls": calls,
    });
    axum::Json(body).into_response()
}

async fn echo(State(app): State<Arc<App>>, uri: axum::http::Uri, headers: HeaderMap) -> Response {
    tokio::time::sleep(app.delay).await;
    let headers: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let body = serde_json::json!({
        "service": app.name,
        "zone": app.zone,
        "instance": app.instance,
        "path": uri.path_and_query().map_or("/", |p| p.as_str()),
        "headers": headers,
    });
    axum::Json(body).into_response()
}

#[derive(serde::Deserialize)]
struct FailQuery {
    status: Option<u16>,
}

async fn fail(State(app): State<Arc<App>>, Query(q): Query<FailQuery>) -> StatusCode {
    app.failing.store(q.status.unwrap_or(500), Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

async fn recover(State(app): State<Arc<App>>) -> StatusCode {
    app.failing.store(0, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}
