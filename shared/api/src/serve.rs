//! Serving with bounds: how many connections each port holds, and how long a client may
//! take to say anything.
//!
//! ```text
//!   REST  accept ──cap full?──> 503 JSON, closed at once (counted, logged)
//!          │ no
//!          └─> HTTP/1.1: request headers within 10 s (also the idle limit between
//!              requests), bodies within 30 s (body.rs), each request authorized
//!   gRPC  accept ──cap full?──> closed at once
//!          └─> the first bytes (TLS handshake or HTTP/2 preface) within 10 s
//! ```
//!
//! Caps come from the process's open-file limit (see [`connection_budget`]), so running out
//! of descriptors refuses new clients with an answer rather than stalling the whole port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::{info, warn};

/// How long a client may take to send a request's headers; also how long a connection may
/// sit idle between requests.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a gRPC client may take to send its first bytes.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// The bytes that must arrive in that time: HTTP/2's connection preface is 24 (a TLS hello
/// is longer). After them, HTTP/2 keepalives (or the TLS handshake timeout) take over.
const OPENING_BYTES: usize = 24;
/// File descriptors kept back from every cap: stores, logs, outgoing connections.
const RESERVED_FDS: u64 = 128;

/// How many connections this process can hold open: its open-file limit (raised to the hard
/// limit first, as Go's runtime does), less what the rest of the process needs.
pub fn connection_budget() -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(max)) = (limit.current, limit.maximum)
        && current < max
    {
        limit.current = Some(max);
        if setrlimit(Resource::Nofile, limit).is_err() {
            limit = getrlimit(Resource::Nofile);
        }
    }
    let fds = limit.current.unwrap_or(u64::MAX).min(1 << 20);
    usize::try_from(fds.saturating_sub(RESERVED_FDS).max(16)).unwrap_or(1 << 20)
}

/// Counts connections refused because a port's cap was full (`meridian_connections_refused`
/// in `/metrics`, one per port), and logs them.
#[derive(Clone, Debug, Default)]
pub struct Refused(pub Counter);

impl Refused {
    /// A counter registered as `connections_refused` labelled with `port`.
    pub fn register(family: &Family<PortLabel, Counter>, port: &str) -> Self {
        Self(
            family
                .get_or_create(&PortLabel {
                    port: port.to_owned(),
                })
                .clone(),
        )
    }

    fn note(&self, port: &'static str, peer: SocketAddr) {
        let n = self.0.inc() + 1;
        // One line per hundred, not one per refused connection, under a flood.
        if n == 1 || n.is_multiple_of(100) {
            warn!(port, peer = %peer, refused = n, "connection refused: too many open connections");
        }
    }
}

/// The label of a port's counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabel {
    pub port: String,
}

/// Registers `meridian_connections_refused` (by port) and returns it.
pub fn refused_family(registry: &mut prometheus_client::registry::Registry) -> Family<PortLabel, Counter> {
    let family = Family::<PortLabel, Counter>::default();
    registry.register(
        "connections_refused",
        "Connections refused because the port held as many as it may",
        family.clone(),
    );
    family
}

/// Accepts connections until `stop`, backing off when the process is out of descriptors
/// (instead of spinning on EMFILE). Hands each accepted one to `handle`, or to `refuse` once
/// `cap` connections are open.
async fn accept_loop(
    listener: TcpListener,
    port: &'static str,
    cap: usize,
    mut stop: watch::Receiver<bool>,
    refused: Refused,
    mut handle: impl FnMut(TcpStream, SocketAddr, OwnedSemaphorePermit),
    refuse: impl Fn(TcpStream) + Send + Sync + 'static,
) -> Arc<Semaphore> {
    let open = Arc::new(Semaphore::new(cap));
    let mut last_error: Option<std::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return open,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => match open.clone().try_acquire_owned() {
                Ok(permit) => handle(stream, peer, permit),
                Err(_) => {
                    refused.note(port, peer);
                    refuse(stream);
                }
            },
            Err(e) => {
                if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    warn!(port, error = %e, "accepting a connection failed");
                    last_error = Some(std::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves the REST API on `listener` until `stop`, at most `cap` connections at a time;
/// then returns once the answers in flight are sent (bound it with a grace period).
pub async fn rest(
    listener: TcpListener,
    router: Router,
    cap: usize,
    stop: watch::Receiver<bool>,
    refused: Refused,
) {
    info!(addr = ?listener.local_addr().ok(), max_connections = cap, "REST API serving");
    let conn_stop = stop.clone();
    let open = accept_loop(
        listener,
        "rest",
        cap,
        stop,
        refused,
        move |stream, peer, permit| {
            let router = router.clone();
            let mut stop = conn_stop.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    let router = router.clone();
                    async move {
                        let response = tower::ServiceExt::oneshot(router, request.map(axum::body::Body::new)).await;
                        Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
                    }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT).keep_alive(true);
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = stop.changed() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        },
        |mut stream| {
            tokio::spawn(async move {
                let body = r#"{"title":"Service unavailable","details":"this control plane holds as many connections as it can: retry shortly","causes":[]}"#;
                let response = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(response.as_bytes())).await;
                let _ = stream.shutdown().await;
            });
        },
    )
    .await;
    let _ = open.acquire_many(u32::try_from(cap).unwrap_or(u32::MAX)).await;
}

/// A TCP connection for a gRPC server, which must send its first bytes in time, and which
/// holds its place under the port's cap while open.
pub struct Bounded {
    stream: TcpStream,
    /// Until the client has sent [`OPENING_BYTES`]: a TLS hello, or HTTP/2's preface.
    first_bytes: Option<Pin<Box<tokio::time::Sleep>>>,
    received: usize,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Bounded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            self.received += buf.filled().len() - before;
            if self.received >= OPENING_BYTES {
                self.first_bytes = None;
            }
        }
        if polled.is_pending()
            && let Some(deadline) = self.first_bytes.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client sent nothing in time",
            )));
        }
        polled
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Bounded {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// The connections of a gRPC port, bounded: at most `cap` open, each sending its first bytes
/// within [`FIRST_BYTES_TIMEOUT`]; for `Server::serve_with_incoming_shutdown`.
pub fn grpc_incoming(
    listener: TcpListener,
    port: &'static str,
    cap: usize,
    stop: watch::Receiver<bool>,
    refused: Refused,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Bounded>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        accept_loop(
            listener,
            port,
            cap,
            stop,
            refused,
            move |stream, _, permit| {
                let _ = stream.set_nodelay(true);
                let bounded = Bounded {
                    stream,
                    first_bytes: Some(Box::pin(tokio::time::sleep(FIRST_BYTES_TIMEOUT))),
                    received: 0,
                    _permit: permit,
                };
                // Full only if the server is not taking connections: drop this one.
                let _ = tx.try_send(Ok(bounded));
            },
            drop,
        )
        .await;
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
