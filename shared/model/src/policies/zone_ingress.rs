//! ZoneIngress: the proxy through which other zones reach this zone's services, in Kuma's
//! universal shape. A zone reports it to global, which relays it to the other zones.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policies::dataplane::{Admin, validate_address, validate_port, validate_tags};
use crate::validate::{Validate, Validator, dns1123_label};

/// An ingress's Envoy node id is `_ingress.NAME`: this stands where a Dataplane's mesh is
/// (no mesh can be called so).
pub const INGRESS_NODE_MESH: &str = "_ingress";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneIngressSpec {
    /// The zone the ingress belongs to; control planes fill it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    pub networking: ZoneIngressNetworking,
    /// What the ingress can reach in its zone; control planes fill it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_services: Option<Vec<AvailableService>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneIngressNetworking {
    /// Where the ingress listens.
    pub address: String,
    pub port: u32,
    /// Where other zones reach it, when that differs (NAT, a load balancer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AvailableService {
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub instances: u32,
    /// The mesh of the service (`default` when not given, as Kuma).
    #[serde(default = "default_mesh")]
    pub mesh: String,
}

fn default_mesh() -> String {
    crate::DEFAULT_MESH.to_owned()
}

impl ZoneIngressSpec {
    /// `host:port` where other zones send traffic for this zone.
    pub fn advertised(&self) -> String {
        let n = &self.networking;
        let host = n.advertised_address.as_deref().unwrap_or(&n.address);
        let port = n.advertised_port.unwrap_or(n.port);
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }
}

impl Validate for ZoneIngressSpec {
    fn validate(&self, v: &mut Validator) {
        if let Some(zone) = &self.zone
            && let Err(e) = dns1123_label(zone)
        {
            v.error_at("zone", format!("{zone:?} {e}"));
        }
        let n = &self.networking;
        v.field("networking", |v| {
            validate_address(v, "address", &n.address);
            validate_port(v, "port", n.port);
            match (&n.advertised_address, n.advertised_port) {
                (Some(a), Some(p)) => {
                    validate_address(v, "advertisedAddress", a);
                    validate_port(v, "advertisedPort", p);
                }
                (None, None) => {}
                (Some(_), None) => v.error_at("advertisedPort", "must be set with advertisedAddress"),
                (None, Some(_)) => v.error_at("advertisedAddress", "must be set with advertisedPort"),
            }
            if let Some(admin) = &n.admin {
                validate_port(v, "admin.port", admin.port);
            }
        });
        v.field("availableServices", |v| {
            for (i, s) in self.available_services.iter().flatten().enumerate() {
                v.index(i, |v| {
                    validate_tags(v, &s.tags, true);
                    if let Err(e) = dns1123_label(&s.mesh) {
                        v.error_at("mesh", format!("{:?} {e}", s.mesh));
                    }
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::errors;
    use crate::{Format, Spec, parse_one};

    #[test]
    fn kumas_shape_parses() {
        let r = parse_one(
            "type: ZoneIngress\nname: ingress-1\nnetworking:\n  address: 127.0.0.1\n  port: 10001\n  advertisedAddress: 10.0.0.1\n  advertisedPort: 10000\navailableServices:\n- tags: {kuma.io/service: backend}\n  instances: 2\n  mesh: default\n",
            Format::Yaml,
        )
        .expect("valid")
        .resource;
        let Spec::ZoneIngress(zi) = &r.spec else {
            panic!("not a ZoneIngress")
        };
        assert_eq!(zi.advertised(), "10.0.0.1:10000");
        assert_eq!(r.mesh, "");
    }

    #[test]
    fn bad_networking_names_the_field() {
        assert_eq!(
            errors(
                "type: ZoneIngress\nname: i\nnetworking:\n  address: 'not an address'\n  port: 0\n  advertisedAddress: 10.0.0.1\n"
            ),
            [
                "networking.address: \"not an address\" is neither an IP address nor a host name",
                "networking.port: 0 is not a port: expected 1 to 65535",
                "networking.advertisedPort: must be set with advertisedAddress",
            ]
        );
        assert_eq!(
            errors("type: ZoneIngress\nname: i\nmesh: default\nnetworking: {address: 127.0.0.1, port: 1}\n"),
            ["mesh: must not be set: a ZoneIngress does not belong to a mesh"]
        );
    }
}
