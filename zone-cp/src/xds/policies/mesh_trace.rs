//! MeshTrace in Envoy's terms: tracing on every HTTP connection manager of the proxies a
//! MeshTrace selects, and a cluster to its collector.
//!
//! ```text
//!   MeshTrace (most specific targetRef wins; the older mesh-wide `backends[]` form too)
//!     └─> HCM.tracing: provider envoy.tracers.opentelemetry (gRPC, headers as metadata) or
//!         envoy.tracers.zipkin; sampling overall/client/random; tags: mesh, zone, service,
//!         and the policy's (literal or from a request header)
//!     └─> cluster `meshtrace:HOST:PORT` (DNS, HTTP/2 for gRPC)
//! ```
//!
//! Envoy propagates W3C `traceparent` (OpenTelemetry) or B3 (Zipkin) headers, so an
//! inbound's span and the outbound spans of the calls the app makes (the app passes the
//! headers on) join one trace across sidecars.

use crate::xds::cache::{CLUSTER, LISTENER, Types};
use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::{GrpcService, HeaderValue, Http2ProtocolOptions};
use envoy_types::pb::envoy::config::trace::v3::tracing::Http as TraceProvider;
use envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType as ProviderConfig;
use envoy_types::pb::envoy::config::trace::v3::zipkin_config::CollectorEndpointVersion;
use envoy_types::pb::envoy::config::trace::v3::{OpenTelemetryConfig, ZipkinConfig};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions as UpstreamHttpOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::r#type::tracing::v3::CustomTag;
use envoy_types::pb::envoy::r#type::tracing::v3::custom_tag::{Header, Literal, Type as TagType};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use meridian_model::policies::mesh_trace::{LegacyTraceBackendType, TraceBackendType, TraceTag};
use meridian_model::resolve::Resolved;
use meridian_model::resolve::trace::TraceConf;
use meridian_model::Kind;
use prost::{Message, Name};

use super::{Generated, PolicyPlugin, ProxyInput};
use crate::xds::policies::mesh_timeout::DEFAULT_CONNECT_TIMEOUT;
use crate::xds::translate::{ServiceEndpoint, duration, load_assignment};

pub struct Plugin;

impl PolicyPlugin for Plugin {
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::MeshTrace]
    }

    fn shapes(&self) -> Types {
        Types::of(&[CLUSTER, LISTENER])
    }

    /// Tracing on every HTTP connection manager of the proxy, and a cluster to the collector.
    fn apply(&self, input: &ProxyInput<'_>, generated: &mut Generated) {
        let ctx = input.ctx;
        let Some(t) = settings(ctx.policies.traced(&input.view).as_ref(), &ctx.secrets) else {
            return;
        };
        let tracing = hcm_tracing(&t, &ctx.mesh, &ctx.zones.local, &input.own_service);
        for hcm in generated.connection_managers() {
            hcm.tracing = Some(tracing.clone());
        }
        generated
            .clusters
            .push(collector_cluster(&t.collector, |name, host, port| Cluster {
                name: name.to_owned(),
                connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
                load_assignment: Some(load_assignment(
                    name,
                    &[ServiceEndpoint {
                        address: host.to_owned(),
                        port,
                        ready: true,
                        tags: BTreeMap::new(),
                    }],
                )),
                ..Default::default()
            }));
    }
}

/// Where spans go.
#[derive(Clone, Debug, PartialEq)]
pub enum Collector {
    /// OTLP over gRPC to `host:port`, with these headers as gRPC metadata.
    OpenTelemetry {
        endpoint: String,
        headers: Vec<(String, String)>,
    },
    /// Zipkin's HTTP JSON API at `url`.
    Zipkin {
        url: String,
        shared_span_context: Option<bool>,
        /// 128-bit trace ids (the default here, so traces join OpenTelemetry's).
        trace_id_128bit: Option<bool>,
        /// `httpProto` instead of the JSON API.
        proto: bool,
    },
}

/// The tracing one proxy gets.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSettings {
    pub collector: Collector,
    pub overall: Option<f64>,
    pub client: Option<f64>,
    pub random: Option<f64>,
    pub tags: Vec<TraceTag>,
}

/// The tracing of a proxy's resolved MeshTrace (see `meridian_model::resolve::trace`): its
/// first backend Envoy can use is the collector (Datadog is not supported yet and is skipped).
///
/// A header taken from a Secret gets the secret's value (a trailing newline dropped, as
/// `echo KEY | base64` leaves one); a header whose Secret is missing is left out, with a
/// warning.
pub fn settings(
    resolved: Option<&Resolved<TraceConf>>,
    secrets: &BTreeMap<String, Vec<u8>>,
) -> Option<TraceSettings> {
    let backends = match &resolved?.conf {
        TraceConf::Default(conf) => {
            let collector = conf
                .backends
                .iter()
                .flatten()
                .find_map(|b| match b.backend_type {
                    TraceBackendType::OpenTelemetry => {
                        b.open_telemetry.as_ref().map(|o| Collector::OpenTelemetry {
                            endpoint: o.endpoint.clone(),
                            headers: Vec::new(),
                        })
                    }
                    TraceBackendType::Zipkin => b.zipkin.as_ref().map(|z| Collector::Zipkin {
                        url: z.url.clone(),
                        shared_span_context: z.shared_span_context,
                        trace_id_128bit: z.trace_id_128bit,
                        proto: z.api_version.as_deref() == Some("httpProto"),
                    }),
                    TraceBackendType::Datadog => None,
                })?;
            let sampling = conf.sampling.as_ref();
            return Some(TraceSettings {
                collector,
                overall: sampling.and_then(|s| s.overall).map(|p| p.value()),
                client: sampling.and_then(|s| s.client).map(|p| p.value()),
                random: sampling.and_then(|s| s.random).map(|p| p.value()),
                tags: conf.tags.clone().unwrap_or_default(),
            });
        }
        TraceConf::Backends(backends) => backends,
    };
    // The older form: the first usable backend, its sampling as the random sampling.
    backends.iter().find_map(|b| {
        let collector = match b.backend_type {
            LegacyTraceBackendType::OpenTelemetry => Collector::OpenTelemetry {
                endpoint: b.conf.endpoint.clone()?,
                headers: b
                    .conf
                    .headers
                    .iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((k.to_ascii_lowercase(), header_value(v, secrets)?)))
                    .collect(),
            },
            LegacyTraceBackendType::Zipkin => Collector::Zipkin {
                url: b.conf.url.clone()?,
                shared_span_context: b.conf.shared_span_context,
                trace_id_128bit: b.conf.trace_id_128bit,
                proto: b.conf.api_version.as_deref() == Some("httpProto"),
            },
            LegacyTraceBackendType::Datadog => return None,
        };
        Some(TraceSettings {
            collector,
            overall: None,
            client: None,
            random: b.sampling.map(|p| p.value()),
            tags: Vec::new(),
        })
    })
}

fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// `host:port` and the path of a collector address (`host:port` or `http://host:port/path`).
fn split(address: &str) -> (String, u32, String) {
    let rest = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .unwrap_or(address);
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/api/v2/spans".to_owned()),
    };
    let default_port = if address.starts_with("https://") { 443 } else { 80 };
    match hostport.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            port.parse().unwrap_or(default_port),
            path,
        ),
        None => (hostport.to_owned(), default_port, path),
    }
}

/// The collector's cluster name.
fn header_value(
    value: &meridian_model::policies::mesh_trace::HeaderValue,
    secrets: &BTreeMap<String, Vec<u8>>,
) -> Option<String> {
    use meridian_model::policies::mesh_trace::HeaderValue as Value;
    match value {
        Value::Inline(text) => Some(text.clone()),
        Value::Secret(r) => match secrets.get(&r.secret) {
            Some(bytes) => Some(
                String::from_utf8_lossy(bytes)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            None => {
                tracing::warn!(secret = %r.secret, "a MeshTrace header names a Secret the mesh does not have: left out");
                None
            }
        },
    }
}

pub fn cluster_name(collector: &Collector) -> String {
    let address = match collector {
        Collector::OpenTelemetry { endpoint, .. } => endpoint,
        Collector::Zipkin { url, .. } => url,
    };
    let (host, port, _) = split(address);
    format!("meshtrace:{host}:{port}")
}

/// A cluster to the collector: resolved by DNS, HTTP/2 for OTLP/gRPC.
pub fn collector_cluster(
    collector: &Collector,
    endpoints: impl FnOnce(&str, &str, u32) -> Cluster,
) -> Cluster {
    let address = match collector {
        Collector::OpenTelemetry { endpoint, .. } => endpoint,
        Collector::Zipkin { url, .. } => url,
    };
    let (host, port, _) = split(address);
    let name = cluster_name(collector);
    let mut cluster = endpoints(&name, &host, port);
    cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
    if matches!(collector, Collector::OpenTelemetry { .. }) {
        let options = UpstreamHttpOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                },
            )),
            ..Default::default()
        };
        cluster.typed_extension_protocol_options =
            HashMap::from([(UpstreamHttpOptions::full_name(), pack(&options))]);
    }
    cluster
}

fn percent(value: Option<f64>) -> Option<Percent> {
    value.map(|value| Percent { value })
}

/// The HTTP connection manager's tracing for `settings`, tagging spans with the proxy's mesh,
/// zone and service.
pub fn hcm_tracing(settings: &TraceSettings, mesh: &str, zone: &str, service: &str) -> Tracing {
    let provider = match &settings.collector {
        Collector::OpenTelemetry { endpoint, headers } => TraceProvider {
            name: "envoy.tracers.opentelemetry".into(),
            config_type: Some(ProviderConfig::TypedConfig(pack(&OpenTelemetryConfig {
                grpc_service: Some(GrpcService {
                    // The collector's own address as :authority (the cluster name is no valid one).
                    target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                        cluster_name: cluster_name(&settings.collector),
                        authority: {
                            let (host, port, _) = split(endpoint);
                            format!("{host}:{port}")
                        },
                        ..Default::default()
                    })),
                    initial_metadata: headers
                        .iter()
                        .map(|(key, value)| HeaderValue {
                            key: key.clone(),
                            value: value.clone(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
                service_name: service.to_owned(),
                ..Default::default()
            }))),
        },
        Collector::Zipkin {
            url,
            shared_span_context,
            trace_id_128bit,
            proto,
        } => {
            let (host, _, path) = split(url);
            TraceProvider {
                name: "envoy.tracers.zipkin".into(),
                config_type: Some(ProviderConfig::TypedConfig(pack(&ZipkinConfig {
                    collector_cluster: cluster_name(&settings.collector),
                    collector_endpoint: path,
                    trace_id_128bit: trace_id_128bit.unwrap_or(true),
                    shared_span_context: shared_span_context.map(|value| BoolValue { value }),
                    collector_endpoint_version: if *proto {
                        CollectorEndpointVersion::HttpProto
                    } else {
                        CollectorEndpointVersion::HttpJson
                    } as i32,
                    collector_hostname: host,
                    ..Default::default()
                }))),
            }
        }
    };
    let literal = |tag: &str, value: &str| CustomTag {
        tag: tag.to_owned(),
        r#type: Some(TagType::Literal(Literal {
            value: value.to_owned(),
        })),
    };
    let mut custom_tags = vec![
        literal("mesh", mesh),
        literal("zone", zone),
        literal("service", service),
    ];
    for t in &settings.tags {
        let tag = match (&t.literal, &t.header) {
            (Some(value), _) => literal(&t.name, value),
            (None, Some(h)) => CustomTag {
                tag: t.name.clone(),
                r#type: Some(TagType::RequestHeader(Header {
                    name: h.name.clone(),
                    default_value: h.default.clone().unwrap_or_default(),
                })),
            },
            (None, None) => continue,
        };
        custom_tags.push(tag);
    }
    Tracing {
        overall_sampling: percent(settings.overall),
        client_sampling: percent(settings.client),
        random_sampling: percent(settings.random),
        custom_tags,
        provider: Some(provider),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_addresses_split() {
        assert_eq!(split("otel:4317"), ("otel".into(), 4317, "/api/v2/spans".into()));
        assert_eq!(
            split("http://zipkin:9411/api/v2/spans"),
            ("zipkin".into(), 9411, "/api/v2/spans".into())
        );
        assert_eq!(split("http://zipkin/x"), ("zipkin".into(), 80, "/x".into()));
    }
}

#[cfg(test)]
mod selection_tests {
    use std::collections::BTreeMap;

    use meridian_model::policies::dataplane::DataplaneSpec;
    use meridian_model::resolve::{MeshPolicies, ProxyView};
    use meridian_model::{Format, parse_one};

    use super::*;

    /// The tracing demo's proxy gets from these MeshTraces.
    fn resolved(yaml: &[&str]) -> Option<Resolved<TraceConf>> {
        let mut policies = MeshPolicies::default();
        for doc in yaml {
            policies.add(&parse_one(doc, Format::Yaml).expect("valid").resource);
        }
        let dp: DataplaneSpec = serde_json::from_value(serde_json::json!({
            "networking": {"address": "127.0.0.1", "inbound": [{"port": 1, "tags": {"kuma.io/service": "demo"}}]}
        }))
        .expect("dataplane");
        let labels = BTreeMap::new();
        policies.traced(&ProxyView {
            name: "demo-1",
            labels: &labels,
            dataplane: &dp,
        })
    }

    #[test]
    fn the_most_specific_meshtrace_wins_and_the_older_form_works() {
        let seed = "type: MeshTrace\nname: default\nspec:\n  backends:\n  - name: otel\n    type: open_telemetry\n    conf:\n      endpoint: otel:4317\n      headers: {X-Api-Key: k}\n";
        let zipkin_for_demo = "type: MeshTrace\nname: z\nspec:\n  targetRef: {kind: MeshService, name: demo}\n  default:\n    backends:\n    - type: Zipkin\n      zipkin: {url: 'http://zipkin:9411/api/v2/spans'}\n    sampling: {random: 10}\n";
        let no_secrets = BTreeMap::new();
        let only_seed = settings(resolved(&[seed]).as_ref(), &no_secrets).expect("applies");
        assert_eq!(
            only_seed.collector,
            Collector::OpenTelemetry {
                endpoint: "otel:4317".into(),
                headers: vec![("x-api-key".into(), "k".into())]
            }
        );
        let both = settings(resolved(&[seed, zipkin_for_demo]).as_ref(), &no_secrets).expect("applies");
        assert!(matches!(both.collector, Collector::Zipkin { .. }));
        assert_eq!(both.random, Some(10.0));
        assert_eq!(cluster_name(&both.collector), "meshtrace:zipkin:9411");
    }

    #[test]
    fn a_header_can_come_from_a_secret_of_the_mesh() {
        let doc = "type: MeshTrace\nname: default\nspec:\n  backends:\n  - name: otel\n    type: open_telemetry\n    conf:\n      endpoint: otel:4317\n      headers:\n        x-api-key: {secret: honeycomb}\n        x-team: {secret: missing}\n";
        let secrets = BTreeMap::from([("honeycomb".to_owned(), b"the-key\n".to_vec())]);
        let got = settings(resolved(&[doc]).as_ref(), &secrets).expect("applies");
        assert_eq!(
            got.collector,
            Collector::OpenTelemetry {
                endpoint: "otel:4317".into(),
                headers: vec![("x-api-key".into(), "the-key".into())]
            },
            "the key from the Secret, a missing one left out"
        );
    }
}
