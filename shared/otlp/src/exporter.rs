//! The control planes' own spans, exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set (e.g. `http://127.0.0.1:4317`); without it, spans cost next to nothing and go
//! nowhere.
//!
//! ```text
//!   meshctl ──traceparent──> REST span ──> store write (the row keeps its span's context)
//!   global sync: batch with change R ──traceparent──> zone: apply ──> raft commit (kept
//!        with the zone's row) ──> reconciler on any node: xds push (proxies)
//! ```
//!
//! A change's trace context travels with the write itself: stored beside the resource or its
//! tombstone (`Stored::trace`, `Change::trace`), in the zone's Raft log, and between
//! processes as a W3C `traceparent` (an HTTP header, a field of a sync change).

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use meridian_proto::otlp::{
    AnyValue, ExportTraceServiceRequest, KeyValue, Resource, ResourceSpans, ScopeSpans, Span as OtlpSpan,
    any_value,
};
use meridian_proto::otlp_service::trace_service_client::TraceServiceClient;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::mpsc;

pub use meridian_model::SpanContext;

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let _ = SystemRandom::new().fill(&mut out);
    out
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

struct Exporter {
    tx: mpsc::UnboundedSender<OtlpSpan>,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// Starts exporting this process's spans as `service` if `OTEL_EXPORTER_OTLP_ENDPOINT` is
/// set. Call once, inside the tokio runtime. Returns whether spans will be exported.
pub fn init(service: &str) -> bool {
    let Some(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
    else {
        return false;
    };
    let endpoint = if endpoint.contains("://") {
        endpoint
    } else {
        format!("http://{endpoint}")
    };
    let (tx, rx) = mpsc::unbounded_channel();
    if EXPORTER.set(Exporter { tx }).is_err() {
        return true;
    }
    tokio::spawn(export(endpoint, service.to_owned(), rx));
    true
}

/// Whether spans are exported (so callers can skip work for them).
pub fn enabled() -> bool {
    EXPORTER.get().is_some()
}

fn batch(service: &str, spans: Vec<OtlpSpan>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attribute("service.name", service)],
            }),
            scope_spans: vec![ScopeSpans { spans }],
        }],
    }
}

/// Sends what accumulated every 200 ms; a collector that is down costs those spans only.
async fn export(endpoint: String, service: String, mut rx: mpsc::UnboundedReceiver<OtlpSpan>) {
    let mut client: Option<TraceServiceClient<tonic::transport::Channel>> = None;
    let mut warned = false;
    loop {
        let Some(first) = rx.recv().await else { return };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut spans = vec![first];
        while let Ok(s) = rx.try_recv() {
            spans.push(s);
        }
        if client.is_none() {
            client = TraceServiceClient::connect(endpoint.clone()).await.ok();
        }
        let count = spans.len();
        let sent = match client.as_mut() {
            Some(c) => c.export(batch(&service, spans)).await.is_ok(),
            None => false,
        };
        PENDING.fetch_sub(count, std::sync::atomic::Ordering::SeqCst);
        if !sent {
            client = None;
            if !warned {
                warned = true;
                tracing::warn!(endpoint = %endpoint, "exporting spans failed; they are dropped until the collector answers");
            }
        }
    }
}

/// Spans ended but not yet sent (or given up on).
static PENDING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Waits (up to `limit`) until every span ended so far has been sent: for a short-lived
/// process (meshctl) before it exits.
pub async fn flush(limit: Duration) {
    let deadline = Instant::now() + limit;
    while PENDING.load(std::sync::atomic::Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
    }
}

/// A span in progress; it is exported when dropped (or [`Span::end`]).
pub struct Span {
    context: SpanContext,
    parent: Option<[u8; 8]>,
    name: String,
    kind: i32,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    live: bool,
}

/// Span kinds, as OTLP numbers them.
pub const INTERNAL: i32 = 1;
pub const SERVER: i32 = 2;
pub const CLIENT: i32 = 3;

impl Span {
    /// A new span under `parent` (a new trace when `None`).
    pub fn start(name: impl Into<String>, parent: Option<SpanContext>, kind: i32) -> Span {
        let live = enabled();
        Span {
            context: SpanContext {
                trace_id: parent
                    .map(|p| p.trace_id)
                    .unwrap_or_else(|| if live { random() } else { [0; 16] }),
                span_id: if live { random() } else { [0; 8] },
            },
            parent: parent.map(|p| p.span_id),
            name: name.into(),
            kind,
            start: SystemTime::now(),
            attributes: Vec::new(),
            live,
        }
    }

    pub fn context(&self) -> SpanContext {
        self.context
    }

    /// Whether this span goes anywhere (so callers can skip building attributes).
    pub fn is_live(&self) -> bool {
        self.live
    }

    pub fn set(&mut self, key: &str, value: impl ToString) {
        if self.live {
            self.attributes.push(attribute(key, &value.to_string()));
        }
    }

    pub fn end(self) {}
}

impl Drop for Span {
    fn drop(&mut self) {
        if !self.live {
            return;
        }
        let Some(e) = EXPORTER.get() else { return };
        PENDING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let sent = e.tx.send(OtlpSpan {
            trace_id: self.context.trace_id.to_vec(),
            span_id: self.context.span_id.to_vec(),
            parent_span_id: self.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: std::mem::take(&mut self.name),
            kind: self.kind,
            start_time_unix_nano: nanos(self.start),
            end_time_unix_nano: nanos(SystemTime::now()),
            attributes: std::mem::take(&mut self.attributes),
        });
        if sent.is_err() {
            PENDING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

tokio::task_local! {
    /// The span of the request or job this task is serving.
    static CURRENT: SpanContext;
}

/// Runs `f` with `context` as the current span context (see [`current`]).
pub async fn in_span<F: std::future::Future>(context: SpanContext, f: F) -> F::Output {
    CURRENT.scope(context, f).await
}

/// The span context of the request or job this task is serving, if any.
pub fn current() -> Option<SpanContext> {
    CURRENT.try_with(|c| *c).ok()
}
