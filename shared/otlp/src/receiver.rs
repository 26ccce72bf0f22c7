//! A trace receiver for humans: takes OTLP/gRPC exports (from Envoy, or any SDK), keeps the
//! spans of the last traces, and prints a finished trace as a waterfall:
//!
//! ```text
//!   trace 4bf92f3577b34da6 (1.02 s, 9 spans)
//!   service      span                                   start   duration
//!   demo         ingress 127.0.0.1:10001/               0 ms    1012 ms  ████████████████████
//!   demo         egress reg-server                      3 ms     252 ms  █████
//!   reg-server   ingress reg-server                     4 ms     250 ms  █████
//! ```
//!
//! It also remembers the gRPC metadata each export came with (an API key, say).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use meridian_proto::otlp::{ExportTraceServiceRequest, ExportTraceServiceResponse, attribute};
use meridian_proto::otlp_service::trace_service_server::{TraceService, TraceServiceServer};

/// Traces kept; older ones are dropped.
const KEEP_TRACES: usize = 100;

/// One span as received.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// The resource's `service.name`.
    pub service: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: BTreeMap<String, String>,
}

impl ReceivedSpan {
    pub fn duration_ms(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e6
    }
}

#[derive(Default)]
struct State {
    /// Trace id to its spans, in arrival order of traces.
    traces: Vec<(String, Vec<ReceivedSpan>)>,
    /// gRPC metadata of every export (lowercase names).
    metadata: Vec<BTreeMap<String, String>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Default)]
struct Service {
    state: Arc<Mutex<State>>,
}

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let metadata: BTreeMap<String, String> = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned()))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        let body = request.into_inner();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.metadata.push(metadata);
        for rs in body.resource_spans {
            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
            let service = attribute(&resource, "service.name").unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                let received = ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    service: service.clone(),
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| {
                            (
                                kv.key.clone(),
                                kv.value.as_ref().map(|v| v.text()).unwrap_or_default(),
                            )
                        })
                        .collect(),
                };
                match state.traces.iter_mut().find(|(id, _)| *id == received.trace_id) {
                    Some((_, spans)) => spans.push(received),
                    None => state.traces.push((received.trace_id.clone(), vec![received])),
                }
            }
        }
        let excess = state.traces.len().saturating_sub(KEEP_TRACES);
        state.traces.drain(..excess);
        let keep = state.metadata.len().saturating_sub(KEEP_TRACES);
        state.metadata.drain(..keep);
        Ok(tonic::Response::new(ExportTraceServiceResponse {}))
    }
}

/// A running receiver; it stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Listens on `addr` (port 0 for any) on a thread of its own.
    pub fn start(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let service = Service::default();
        let state = service.state.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let _ = tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(service))
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        async {
                            let _ = stopped.await;
                        },
                    )
                    .await;
            });
        });
        Ok(Self {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Every trace kept, oldest first, each with its spans.
    pub fn traces(&self) -> Vec<(String, Vec<ReceivedSpan>)> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .traces
            .clone()
    }

    /// The gRPC metadata of every export kept, oldest first.
    pub fn metadata(&self) -> Vec<BTreeMap<String, String>> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .metadata
            .clone()
    }

    /// Forgets what was received.
    pub fn clear(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.traces.clear();
        state.metadata.clear();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A trace as a waterfall: spans in start order, indented under their parents, with start
/// offset and duration, and a bar.
pub fn waterfall(trace_id: &str, spans: &[ReceivedSpan]) -> String {
    let Some(start) = spans.iter().map(|s| s.start_ns).min() else {
        return String::new();
    };
    let end = spans.iter().map(|s| s.end_ns).max().unwrap_or(start);
    let total = end.saturating_sub(start).max(1);
    let depth = |s: &ReceivedSpan| {
        let mut d = 0;
        let mut parent = s.parent_span_id.clone();
        while let Some(p) = spans.iter().find(|x| x.span_id == parent && !parent.is_empty()) {
            d += 1;
            parent = p.parent_span_id.clone();
            if d > 32 {
                break;
            }
        }
        d
    };
    let mut sorted: Vec<&ReceivedSpan> = spans.iter().collect();
    sorted.sort_by_key(|s| (s.start_ns, std::cmp::Reverse(s.end_ns)));
    const WIDTH: u64 = 40;
    let mut out = format!(
        "trace {} ({:.0} ms, {} spans)\n{:<12} {:<46} {:>8} {:>9}\n",
        &trace_id[..trace_id.len().min(16)],
        total as f64 / 1e6,
        spans.len(),
        "service",
        "span",
        "start",
        "duration"
    );
    for s in sorted {
        let offset = s.start_ns.saturating_sub(start);
        let lead = (offset * WIDTH / total) as usize;
        let len = ((s.end_ns.saturating_sub(s.start_ns)) * WIDTH / total).max(1) as usize;
        let name = format!("{}{}", "  ".repeat(depth(s)), s.name);
        out.push_str(&format!(
            "{:<12} {:<46} {:>5.0} ms {:>6.0} ms  {}{}\n",
            s.service,
            name.chars().take(46).collect::<String>(),
            offset as f64 / 1e6,
            s.duration_ms(),
            " ".repeat(lead),
            "█".repeat(len)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: &str, service: &str, start_ms: u64, end_ms: u64) -> ReceivedSpan {
        ReceivedSpan {
            trace_id: "t".repeat(32),
            span_id: id.into(),
            parent_span_id: parent.into(),
            name: format!("span {id}"),
            service: service.into(),
            start_ns: start_ms * 1_000_000,
            end_ns: end_ms * 1_000_000,
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn a_waterfall_indents_children_and_scales_bars() {
        let spans = vec![
            span("b", "a", "reg-server", 10, 260),
            span("a", "", "demo", 0, 1000),
        ];
        let text = waterfall(&"t".repeat(32), &spans);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("trace tttttttttttttttt (1000 ms, 2 spans)"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("demo") && lines[2].contains("span a"),
            "{text}"
        );
        assert!(
            lines[3].contains("  span b") && lines[3].contains("10 ms"),
            "{text}"
        );
        assert_eq!(lines[2].matches('█').count(), 40);
        assert_eq!(lines[3].matches('█').count(), 10);
    }
}

#[cfg(test)]
mod export_tests {
    use meridian_proto::otlp::{AnyValue, KeyValue, Resource, ResourceSpans, ScopeSpans, Span, any_value};
    use meridian_proto::otlp_service::trace_service_client::TraceServiceClient;

    use super::*;

    #[test]
    fn an_export_is_kept_with_its_metadata() {
        let receiver = Receiver::start(([127, 0, 0, 1], 0).into()).expect("start");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        runtime.block_on(async {
            let mut client = TraceServiceClient::connect(format!("http://{}", receiver.addr))
                .await
                .expect("connect");
            let mut request = tonic::Request::new(ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![KeyValue {
                            key: "service.name".into(),
                            value: Some(AnyValue {
                                value: Some(any_value::Value::StringValue("demo".into())),
                            }),
                        }],
                    }),
                    scope_spans: vec![ScopeSpans {
                        spans: vec![Span {
                            trace_id: vec![1; 16],
                            span_id: vec![2; 8],
                            name: "ingress".into(),
                            start_time_unix_nano: 1,
                            end_time_unix_nano: 2,
                            ..Default::default()
                        }],
                    }],
                }],
            });
            request
                .metadata_mut()
                .insert("x-api-key", "secret".parse().expect("value"));
            client.export(request).await.expect("export");
        });
        let traces = receiver.traces();
        assert_eq!(traces.len(), 1);
        assert_eq!(traces[0].1[0].service, "demo");
        assert_eq!(
            receiver.metadata()[0].get("x-api-key").map(String::as_str),
            Some("secret")
        );
    }
}
