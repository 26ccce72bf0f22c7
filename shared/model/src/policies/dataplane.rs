//! Dataplane: one proxy and the workload beside it, in Kuma's universal shape.

use std::collections::BTreeMap;
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::validate::{Validate, Validator, dns1123_subdomain};

/// The tag that names the service an inbound belongs to.
pub const SERVICE_TAG: &str = "kuma.io/service";
/// The tag that says how a service speaks (`http`, `http2`, `grpc`; anything else is TCP).
pub const PROTOCOL_TAG: &str = "kuma.io/protocol";

/// Whether an inbound with these tags speaks HTTP (HTTP/1, HTTP/2 or gRPC).
pub fn speaks_http(tags: &std::collections::BTreeMap<String, String>) -> bool {
    matches!(
        tags.get(PROTOCOL_TAG).map(String::as_str),
        Some("http" | "http2" | "grpc")
    )
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataplaneSpec {
    pub networking: DataplaneNetworking,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataplaneNetworking {
    /// Where other proxies reach this one.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<Vec<Inbound>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<Vec<Outbound>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Gateway>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparent_proxying: Option<TransparentProxying>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
}

/// The proxy's workload is transparently proxied (`meridian-dp install transparent-proxy`):
/// iptables send its connections to Envoy, which then takes every outbound it may reach at the
/// service's virtual IP, and its inbounds on the redirect port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransparentProxying {
    /// Where redirected inbound connections arrive (15006).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_port_inbound: Option<u32>,
    /// Where redirected outbound connections arrive (15001).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_port_outbound: Option<u32>,
    /// The only services this proxy calls: it gets outbounds for these alone. Unset, it gets
    /// the services its MeshTrafficPermissions let it reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable_services: Option<Vec<String>>,
    /// Which address families the redirect listeners take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_family_mode: Option<IpFamilyMode>,
}

/// Kuma's `ipFamilyMode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum IpFamilyMode {
    DualStack,
    #[serde(rename = "IPv4")]
    Ipv4,
    #[serde(rename = "IPv6")]
    Ipv6,
}

/// Default redirect ports, as kumactl and `meridian-dp install transparent-proxy` set them.
pub const REDIRECT_PORT_INBOUND: u32 = 15006;
pub const REDIRECT_PORT_OUTBOUND: u32 = 15001;

impl TransparentProxying {
    pub fn inbound_port(&self) -> u32 {
        self.redirect_port_inbound.unwrap_or(REDIRECT_PORT_INBOUND)
    }

    pub fn outbound_port(&self) -> u32 {
        self.redirect_port_outbound.unwrap_or(REDIRECT_PORT_OUTBOUND)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Inbound {
    /// The port the proxy listens on for this service.
    pub port: u32,
    /// The port the local application listens on (defaults to `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_port: Option<u32>,
    /// The address of the local application (defaults to 127.0.0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_probe: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<InboundState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum InboundState {
    Ready,
    NotReady,
    Ignored,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Health {
    pub ready: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Outbound {
    /// The local port the application connects to.
    pub port: u32,
    /// The local address to listen on (defaults to 127.0.0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// Kuma's deprecated way of naming the destination service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl Outbound {
    /// The destination service, from `tags` or the deprecated `service`.
    pub fn service(&self) -> Option<&str> {
        self.tags
            .as_ref()
            .and_then(|t| t.get(SERVICE_TAG))
            .or(self.service.as_ref())
            .map(String::as_str)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    pub tags: BTreeMap<String, String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub gateway_type: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Admin {
    pub port: u32,
}

pub(crate) fn validate_address(v: &mut Validator, field: &str, address: &str) {
    if address.parse::<IpAddr>().is_err() && dns1123_subdomain(&address.to_ascii_lowercase()).is_err() {
        v.error_at(
            field,
            format!("{address:?} is neither an IP address nor a host name"),
        );
    }
}

pub(crate) fn validate_port(v: &mut Validator, field: &str, port: u32) {
    if !(1..=65535).contains(&port) {
        v.error_at(field, format!("{port} is not a port: expected 1 to 65535"));
    }
}

/// The protocols `kuma.io/protocol` may name (Kuma's).
const PROTOCOLS: &[&str] = &["tcp", "http", "http2", "grpc", "kafka"];

pub(crate) fn validate_tags(v: &mut Validator, tags: &BTreeMap<String, String>, need_service: bool) {
    v.field("tags", |v| {
        crate::validate::validate_tag_map(v, tags);
        if need_service && tags.get(SERVICE_TAG).is_none_or(String::is_empty) {
            v.error_at(SERVICE_TAG, "must be set: it names the service");
        }
        if let Some(p) = tags.get(PROTOCOL_TAG)
            && !PROTOCOLS.contains(&p.as_str())
        {
            v.error_at(
                PROTOCOL_TAG,
                format!(
                    "{p:?} is not a protocol: expected one of {}",
                    PROTOCOLS.join(", ")
                ),
            );
        }
    });
}

/// A Dataplane's own address must be one others can reach it at.
fn validate_own_address(v: &mut Validator, field: &str, address: &str) {
    validate_address(v, field, address);
    if address.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
        v.error_at(
            field,
            format!("{address} is not an address others can reach: give the Dataplane's own"),
        );
    }
}

impl DataplaneSpec {
    /// Every value the Dataplane gives tag `key`, on its inbounds or its gateway.
    pub fn tag_values(&self, key: &str) -> std::collections::BTreeSet<&str> {
        let n = &self.networking;
        let inbound = n.inbound.iter().flatten().map(|i| &i.tags);
        inbound
            .chain(n.gateway.as_ref().map(|g| &g.tags))
            .filter_map(|tags| tags.get(key).map(String::as_str))
            .collect()
    }

    /// Whether the Dataplane claims only what `allowed` lets it (a dataplane token's tags, as
    /// in Kuma): each tag named there must be on the Dataplane, with only the values listed.
    pub fn claims_only(&self, allowed: &BTreeMap<String, Vec<String>>) -> Result<(), String> {
        for (key, values) in allowed {
            let has = self.tag_values(key);
            if has.is_empty() {
                return Err(format!(
                    "the Dataplane has no tag {key:?}, which the token requires"
                ));
            }
            if let Some(other) = has.iter().find(|v| !values.iter().any(|a| a == *v)) {
                return Err(format!(
                    "the Dataplane claims {key}={other}, and the token allows only {key}={}",
                    values.join(",")
                ));
            }
        }
        Ok(())
    }
}

impl Validate for DataplaneSpec {
    fn validate(&self, v: &mut Validator) {
        let n = &self.networking;
        v.field("networking", |v| {
            validate_own_address(v, "address", &n.address);
            if let Some(a) = &n.advertised_address {
                validate_own_address(v, "advertisedAddress", a);
            }
            // No inbounds is fine (a proxy that only calls out, as Kuma allows).
            let inbound = n.inbound.as_deref().unwrap_or_default();
            if !inbound.is_empty() && n.gateway.is_some() {
                v.error_at("gateway", "must not be set together with inbound");
            }
            let mut seen_ports = std::collections::BTreeSet::new();
            v.field("inbound", |v| {
                for (i, ib) in inbound.iter().enumerate() {
                    v.index(i, |v| {
                        validate_port(v, "port", ib.port);
                        let address = ib.address.as_deref().unwrap_or(&n.address);
                        if !seen_ports.insert((address.to_owned(), ib.port)) {
                            v.error_at("port", format!("{} is already used by another inbound", ib.port));
                        }
                        if let Some(p) = ib.service_port {
                            validate_port(v, "servicePort", p);
                        }
                        if let Some(a) = &ib.service_address {
                            validate_address(v, "serviceAddress", a);
                        }
                        if let Some(a) = &ib.address {
                            validate_address(v, "address", a);
                        }
                        validate_tags(v, &ib.tags, true);
                    });
                }
            });
            v.field("outbound", |v| {
                let mut seen_outbound = std::collections::BTreeSet::new();
                for (i, ob) in n.outbound.iter().flatten().enumerate() {
                    v.index(i, |v| {
                        validate_port(v, "port", ob.port);
                        let address = ob.address.as_deref().unwrap_or("127.0.0.1");
                        if !seen_outbound.insert((address.to_owned(), ob.port)) {
                            v.error_at("port", format!("{} is already used by another outbound", ob.port));
                        }
                        if let Some(a) = &ob.address {
                            validate_address(v, "address", a);
                        }
                        if let Some(tags) = &ob.tags {
                            validate_tags(v, tags, false);
                        }
                        if ob.service().is_none_or(str::is_empty) {
                            v.error_at("tags", format!("must name the destination with {SERVICE_TAG}"));
                        }
                    });
                }
            });
            if let Some(gw) = &n.gateway {
                v.field("gateway", |v| validate_tags(v, &gw.tags, true));
            }
            if let Some(tp) = &n.transparent_proxying {
                v.field("transparentProxying", |v| {
                    for (field, port) in [
                        ("redirectPortInbound", tp.redirect_port_inbound),
                        ("redirectPortOutbound", tp.redirect_port_outbound),
                    ] {
                        if let Some(port) = port {
                            validate_port(v, field, port);
                        }
                    }
                    if tp.redirect_port_inbound.is_some() && tp.inbound_port() == tp.outbound_port() {
                        v.error_at("redirectPortOutbound", "must differ from redirectPortInbound");
                    }
                    let redirect = [tp.inbound_port(), tp.outbound_port()];
                    v.field("reachableServices", |v| {
                        for (i, service) in tp.reachable_services.iter().flatten().enumerate() {
                            if service.is_empty() || service.len() > 253 {
                                v.index(i, |v| v.error("must be a service name (kuma.io/service)"));
                            }
                        }
                    });
                    if let Some(ib) = inbound.iter().position(|ib| redirect.contains(&ib.port)) {
                        v.error_at(
                            "redirectPortInbound",
                            format!("{} is also inbound[{ib}]'s port", inbound[ib].port),
                        );
                    }
                });
            }
            if let Some(admin) = &n.admin {
                v.field("admin", |v| {
                    validate_port(v, "port", admin.port);
                    if inbound
                        .iter()
                        .any(|ib| ib.port == admin.port || ib.service_port == Some(admin.port))
                    {
                        v.error_at(
                            "port",
                            format!("{} is also an inbound's port or servicePort", admin.port),
                        );
                    }
                });
            }
        });
    }
}
