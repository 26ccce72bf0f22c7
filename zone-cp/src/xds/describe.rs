//! Readable text for generated resources: each message in Envoy's field names, with the
//! typed configs nested inside (`Any`) decoded in place. Used by `_config` and snapshot tests.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::config::trace::v3::OpenTelemetryConfig;
use envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType as TraceConfig;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, Secret, UpstreamTlsContext, secret,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use super::cache::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Snapshot};

/// A transport socket's config, decoded and put aside like a nested `Any`.
fn take_socket(socket: &mut Option<TransportSocket>, nested: &mut Vec<String>) {
    if let Some(TransportSocket {
        name,
        config_type: Some(SocketConfig::TypedConfig(a)),
    }) = socket
    {
        nested.push(format!("{name}: {}", take_any(a)));
    }
}

/// Replaces a nested `Any` by a marker, returning the text of what it held.
fn take_any(any: &mut Any) -> String {
    let taken = std::mem::take(any);
    any.type_url = taken.type_url.clone();
    let bytes = taken.value.as_slice();
    let text = if taken.type_url == HttpConnectionManager::type_url() {
        HttpConnectionManager::decode(bytes).map(|mut hcm| {
            let mut nested = Vec::new();
            for f in &mut hcm.http_filters {
                if let Some(HttpFilterConfig::TypedConfig(a)) = &mut f.config_type {
                    nested.push(format!("{}: {}", f.name, take_any(a)));
                }
            }
            if let Some(provider) = hcm.tracing.as_mut().and_then(|t| t.provider.as_mut())
                && let Some(TraceConfig::TypedConfig(a)) = &mut provider.config_type
            {
                nested.push(format!("{}: {}", provider.name, take_any(a)));
            }
            format!("{hcm:#?}\n{}", nested.join("\n"))
        })
    } else if taken.type_url == OpenTelemetryConfig::type_url() {
        // The collector's headers hold API keys: their names only.
        OpenTelemetryConfig::decode(bytes).map(|mut m| {
            for header in m
                .grpc_service
                .iter_mut()
                .flat_map(|g| g.initial_metadata.iter_mut())
            {
                header.value = meridian_model::policies::secret::REDACTED.to_owned();
                header.raw_value.clear();
            }
            format!("{m:#?}")
        })
    } else if taken.type_url == TcpProxy::type_url() {
        TcpProxy::decode(bytes).map(|m| format!("{m:#?}"))
    } else if taken.type_url == HttpProtocolOptions::type_url() {
        HttpProtocolOptions::decode(bytes).map(|m| format!("{m:#?}"))
    } else if taken.type_url == HttpRbac::type_url() {
        HttpRbac::decode(bytes).map(|m| format!("{m:#?}"))
    } else if taken.type_url == NetworkRbac::type_url() {
        NetworkRbac::decode(bytes).map(|m| format!("{m:#?}"))
    } else if taken.type_url == DownstreamTlsContext::type_url() {
        DownstreamTlsContext::decode(bytes).map(|m| format!("{m:#?}"))
    } else if taken.type_url == UpstreamTlsContext::type_url() {
        UpstreamTlsContext::decode(bytes).map(|m| format!("{m:#?}"))
    } else {
        return format!("({} bytes)", bytes.len());
    };
    text.unwrap_or_else(|e| format!("(undecodable: {e})"))
}

/// One resource as text.
pub fn describe(any: &Any) -> String {
    let bytes = any.value.as_slice();
    let text = match any.type_url.as_str() {
        CLUSTER => Cluster::decode(bytes).map(|mut c| {
            let mut nested: Vec<String> = Vec::new();
            let mut keys: Vec<String> = c.typed_extension_protocol_options.keys().cloned().collect();
            keys.sort();
            for k in keys {
                if let Some(a) = c.typed_extension_protocol_options.get_mut(&k) {
                    nested.push(format!("{k}: {}", take_any(a)));
                }
            }
            take_socket(&mut c.transport_socket, &mut nested);
            format!("{c:#?}\n{}", nested.join("\n"))
        }),
        // Only what a secret is, never its content: private keys stay out of every output.
        SECRET => Secret::decode(bytes).map(|s| match s.r#type {
            Some(secret::Type::TlsCertificate(_)) => {
                format!("Secret {:?}: certificate and private key", s.name)
            }
            Some(secret::Type::ValidationContext(_)) => format!("Secret {:?}: trusted CA", s.name),
            _ => format!("Secret {:?}", s.name),
        }),
        ENDPOINT => ClusterLoadAssignment::decode(bytes).map(|m| format!("{m:#?}")),
        LISTENER => Listener::decode(bytes).map(|mut l| {
            let mut nested = Vec::new();
            for chain in &mut l.filter_chains {
                for f in &mut chain.filters {
                    if let Some(FilterConfig::TypedConfig(a)) = &mut f.config_type {
                        nested.push(format!("{}: {}", f.name, take_any(a)));
                    }
                }
                take_socket(&mut chain.transport_socket, &mut nested);
            }
            format!("{l:#?}\n{}", nested.join("\n"))
        }),
        ROUTE => RouteConfiguration::decode(bytes).map(|m| format!("{m:#?}")),
        other => return format!("({} bytes of {other})", bytes.len()),
    };
    text.unwrap_or_else(|e| format!("(undecodable: {e})"))
}

/// A whole snapshot as text, type by type and name by name.
pub fn describe_snapshot(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    for (type_url, items) in &snapshot.resources {
        for (name, r) in items.iter() {
            out.push_str(&format!(
                "=== {} {name} (version {})\n",
                type_url.rsplit('.').next().unwrap_or(type_url),
                r.version
            ));
            out.push_str(&describe(&r.resource));
            out.push('\n');
        }
    }
    out
}
