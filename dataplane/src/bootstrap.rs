//! Envoy's bootstrap: who the proxy is, where its control planes are, where its admin listens.

use serde_json::{Value, json};

/// A control-plane address from `--cp-address` (`http://host:port` or `host:port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpAddress {
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for CpAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} must be http://HOST:PORT (the zone control plane's xDS address)");
        let rest = text
            .strip_prefix("http://")
            .or_else(|| text.strip_prefix("grpc://"))
            .unwrap_or(text);
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 || host.contains('/') {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl CpAddress {
    /// The same port's HTTP base URL, where a proxy registers.
    pub fn http_base(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }
}

/// Everything the bootstrap needs.
pub struct BootstrapParams<'a> {
    pub mesh: &'a str,
    pub name: &'a str,
    /// Envoy's `node.cluster`: the proxy's first service.
    pub service: &'a str,
    pub control_planes: &'a [CpAddress],
    pub admin_port: u16,
    /// The dataplane token Envoy shows on every xDS stream, if any.
    pub token: Option<&'a str>,
}

/// The name of the static cluster that points at the control planes.
pub const XDS_CLUSTER: &str = "meridian_xds";

fn grpc_service(token: Option<&str>) -> Value {
    let mut service = json!({ "envoy_grpc": { "cluster_name": XDS_CLUSTER } });
    if let Some(token) = token {
        service["initial_metadata"] = json!([{ "key": "authorization", "value": format!("Bearer {token}") }]);
    }
    service
}

pub fn bootstrap(p: &BootstrapParams<'_>) -> Value {
    let endpoints: Vec<Value> = p
        .control_planes
        .iter()
        .map(|cp| json!({ "endpoint": { "address": { "socket_address": { "address": cp.host, "port_value": cp.port } } } }))
        .collect();
    json!({
        "node": {
            "id": format!("{}.{}", p.mesh, p.name),
            "cluster": p.service,
            "metadata": { "meridian.mesh": p.mesh, "meridian.dataplane": p.name, "meridian.version": env!("CARGO_PKG_VERSION") }
        },
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": p.admin_port } } },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [grpc_service(p.token)]
            },
            "cds_config": { "ads": {}, "resource_api_version": "V3" },
            "lds_config": { "ads": {}, "resource_api_version": "V3" }
        },
        "static_resources": {
            "clusters": [{
                "name": XDS_CLUSTER,
                "type": "STRICT_DNS",
                "connect_timeout": "1s",
                // Envoy needs HTTP/2 to speak gRPC to its control plane.
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": { "http2_protocol_options": {
                            "connection_keepalive": { "interval": "10s", "timeout": "5s" }
                        } }
                    }
                },
                "upstream_connection_options": { "tcp_keepalive": {} },
                "load_assignment": { "cluster_name": XDS_CLUSTER, "endpoints": [{ "lb_endpoints": endpoints }] }
            }]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cp_addresses() {
        assert_eq!(
            "http://127.0.0.1:5678".parse(),
            Ok(CpAddress {
                host: "127.0.0.1".into(),
                port: 5678
            })
        );
        assert_eq!(
            "zone-cp:5678".parse(),
            Ok(CpAddress {
                host: "zone-cp".into(),
                port: 5678
            })
        );
        assert!("http://nohost".parse::<CpAddress>().is_err());
        assert!("http://h:0".parse::<CpAddress>().is_err());
    }

    #[test]
    fn every_control_plane_is_an_xds_endpoint() {
        let cps: Vec<CpAddress> = ["http://127.0.0.1:5678", "http://127.0.0.2:5678"]
            .iter()
            .map(|a| a.parse().expect("valid"))
            .collect();
        let b = bootstrap(&BootstrapParams {
            mesh: "default",
            name: "demo-1",
            service: "demo",
            control_planes: &cps,
            admin_port: 9901,
            token: None,
        });
        assert_eq!(b["node"]["id"], "default.demo-1");
        let eps = &b["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"];
        assert_eq!(eps.as_array().map(Vec::len), Some(2));
        assert_eq!(b["dynamic_resources"]["ads_config"]["api_type"], "DELTA_GRPC");
        assert!(b["dynamic_resources"]["ads_config"]["grpc_services"][0]["initial_metadata"].is_null());
        let with_token = bootstrap(&BootstrapParams {
            mesh: "default",
            name: "demo-1",
            service: "demo",
            control_planes: &cps,
            admin_port: 9901,
            token: Some("t0k"),
        });
        assert_eq!(
            with_token["dynamic_resources"]["ads_config"]["grpc_services"][0]["initial_metadata"][0]["value"],
            "Bearer t0k"
        );
    }
}
