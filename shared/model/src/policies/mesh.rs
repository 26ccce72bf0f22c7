//! Mesh: a tenant of the service mesh, with its mTLS settings and defaults.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::validate::{Validate, Validator};
use crate::values::GoDuration;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
    /// Kuma's older per-mesh tracing backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Backends>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<Backends>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsBackends>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networking: Option<MeshNetworking>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<MeshRouting>,
    /// Kuma's constraints on which Dataplanes may join; kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<Value>,
    /// Names of the default policies not to create with the mesh (`["*"]` for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_creating_initial_policies: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_services: Option<MeshServices>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mtls {
    /// The backend that issues certificates now; mTLS is off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled_backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<CaBackend>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_validation: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CaType {
    Builtin,
    Provided,
    Vault,
    Acmpca,
    Certmanager,
}

impl MeshSpec {
    /// Hides what a CA backend's configuration holds (a provided CA's inline key, a Vault
    /// token) from readers who are not admins; the names of Secrets it refers to stay.
    pub fn redact(&mut self) {
        fn hide(v: &mut Value) {
            match v {
                Value::String(s) => *s = crate::policies::secret::REDACTED.to_owned(),
                Value::Array(items) => items.iter_mut().for_each(hide),
                Value::Object(m) => m
                    .iter_mut()
                    .filter(|(k, _)| k.as_str() != "secret")
                    .for_each(|(_, v)| hide(v)),
                _ => {}
            }
        }
        let backends = self.mtls.iter_mut().flat_map(|m| m.backends.iter_mut().flatten());
        for backend in backends.filter(|b| b.ca_type != CaType::Builtin) {
            backend.conf.iter_mut().for_each(hide);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MtlsMode {
    #[serde(rename = "STRICT")]
    Strict,
    #[serde(rename = "PERMISSIVE")]
    Permissive,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaBackend {
    pub name: String,
    #[serde(rename = "type")]
    pub ca_type: CaType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp_cert: Option<DpCert>,
    /// Backend-specific configuration (for `builtin`: `caCert.RSAbits`, `caCert.expiration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conf: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_chain: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DpCert {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<DpCertRotation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<GoDuration>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DpCertRotation {
    /// Lifetime of a Dataplane certificate (`1d`, `12h`).
    pub expiration: GoDuration,
}

/// A list of named backends of which one may be the default (older tracing and logging).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backends {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<Backend>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsBackends {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled_backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<Backend>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    pub name: String,
    #[serde(rename = "type")]
    pub backend_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<crate::values::Percentage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conf: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshNetworking {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<OutboundNetworking>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundNetworking {
    /// Whether traffic to destinations outside the mesh is let through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passthrough: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshRouting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_aware_load_balancing: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_egress: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_forbid_mesh_external_service_access: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MeshServicesMode {
    Disabled,
    Everywhere,
    ReachableBackends,
    Exclusive,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshServices {
    pub mode: MeshServicesMode,
}

impl MeshSpec {
    /// The mTLS backend in force, if mTLS is enabled.
    pub fn enabled_ca(&self) -> Option<&CaBackend> {
        let mtls = self.mtls.as_ref()?;
        let name = mtls.enabled_backend.as_deref()?;
        mtls.backends.as_ref()?.iter().find(|b| b.name == name)
    }
}

fn unique_names<'a>(
    v: &mut Validator,
    field: &str,
    names: impl Iterator<Item = &'a str>,
) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    v.field(field, |v| {
        for (i, name) in names.enumerate() {
            if name.is_empty() {
                v.index(i, |v| v.error_at("name", "must not be empty"));
            } else if !seen.insert(name) {
                v.index(i, |v| {
                    v.error_at("name", format!("{name:?} is used by another backend"))
                });
            }
        }
    });
    seen
}

fn check_default(v: &mut Validator, field: &str, chosen: &Option<String>, names: &BTreeSet<&str>) {
    if let Some(chosen) = chosen
        && !names.contains(chosen.as_str())
    {
        v.error_at(
            field,
            format!("names backend {chosen:?}, which is not in backends"),
        );
    }
}

/// Dataplane certificates shorter-lived than this would be renewed in a storm.
const MIN_CERT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30);

impl Validate for CaBackend {
    fn validate(&self, v: &mut Validator) {
        let lifetime = self.dp_cert.as_ref().and_then(|c| c.rotation.as_ref());
        if let Some(r) = lifetime
            && r.expiration.as_duration() < MIN_CERT_LIFETIME
        {
            v.error_at(
                "dpCert.rotation.expiration",
                format!("must be at least {}s", MIN_CERT_LIFETIME.as_secs()),
            );
        }
    }
}

impl Validate for MeshSpec {
    fn validate(&self, v: &mut Validator) {
        if let Some(mtls) = &self.mtls {
            v.field("mtls", |v| {
                let backends = mtls.backends.as_deref().unwrap_or_default();
                let names = unique_names(v, "backends", backends.iter().map(|b| b.name.as_str()));
                check_default(v, "enabledBackend", &mtls.enabled_backend, &names);
                v.field("backends", |v| {
                    for (i, b) in backends.iter().enumerate() {
                        v.index(i, |v| {
                            b.validate(v);
                            let enabled = mtls.enabled_backend.as_deref() == Some(b.name.as_str());
                            if enabled && b.ca_type != CaType::Builtin {
                                v.error_at(
                                    "type",
                                    format!(
                                        "{} cannot be the enabled backend yet: only builtin is supported \
                                         (Meridian generates the mesh CA)",
                                        format!("{:?}", b.ca_type).to_lowercase()
                                    ),
                                );
                            }
                        });
                    }
                });
            });
        }
        for (field, section) in [("tracing", &self.tracing), ("logging", &self.logging)] {
            if let Some(s) = section {
                v.field(field, |v| {
                    let backends = s.backends.as_deref().unwrap_or_default();
                    let names = unique_names(v, "backends", backends.iter().map(|b| b.name.as_str()));
                    check_default(v, "defaultBackend", &s.default_backend, &names);
                });
            }
        }
        if let Some(m) = &self.metrics {
            v.field("metrics", |v| {
                let backends = m.backends.as_deref().unwrap_or_default();
                let names = unique_names(v, "backends", backends.iter().map(|b| b.name.as_str()));
                check_default(v, "enabledBackend", &m.enabled_backend, &names);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::errors;
    use crate::{Format, Spec, parse_one};

    #[test]
    fn kumas_builtin_mtls_parses() {
        let yaml = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    mode: PERMISSIVE\n    dpCert:\n      rotation:\n        expiration: 2m\n";
        let sub = parse_one(yaml, Format::Yaml).expect("valid");
        let Spec::Mesh(mesh) = &sub.resource.spec else {
            panic!()
        };
        let ca = mesh.enabled_ca().expect("enabled");
        assert_eq!(ca.mode, Some(super::MtlsMode::Permissive));
    }

    #[test]
    fn bad_mtls_settings_name_their_fields() {
        let errs = errors(
            "type: Mesh\nname: m\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: provided\n  - name: ca-2\n    type: builtin\n    dpCert: {rotation: {expiration: 5s}}\n",
        );
        assert_eq!(
            errs,
            vec![
                "mtls.backends[0].type: provided cannot be the enabled backend yet: only builtin is supported (Meridian generates the mesh CA)",
                "mtls.backends[1].dpCert.rotation.expiration: must be at least 30s",
            ]
        );
        let errs = errors("type: Mesh\nname: m\nmtls:\n  enabledBackend: nope\n  backends: []\n");
        assert_eq!(
            errs,
            vec!["mtls.enabledBackend: names backend \"nope\", which is not in backends"]
        );
    }
}
