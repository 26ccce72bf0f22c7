//! The registry of resource kinds: one table from which the `Kind` and `Spec` enums, REST
//! paths and schemas are all derived, so adding a kind is one line here plus its spec type.

use schemars::{Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::FieldError;
use crate::extension::{Extension, ExtensionKind};
use crate::policies::*;
use crate::validate::{Validate, Validator, join_path};

/// Where a kind lives: in a mesh, or beside meshes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Global,
    Mesh,
}

macro_rules! kinds {
    ($( $kind:ident { spec: $spec:ident, plural: $plural:literal, scope: $scope:ident, inline: $inline:literal } ),+ $(,)?) => {
        /// Every kind of resource Meridian stores: the built-in ones, and policy kinds
        /// registered from outside this crate ([`crate::extension`]).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind { $($kind,)+ Extension(&'static ExtensionKind) }

        impl Kind {
            /// The built-in kinds ([`Kind::all`] adds the registered ones).
            pub const ALL: &'static [Kind] = &[$(Kind::$kind),+];

            /// The name used in `type:` and `kind:` (`MeshTrace`).
            pub fn name(self) -> &'static str {
                match self { $(Kind::$kind => stringify!($kind),)+ Kind::Extension(k) => k.name }
            }

            /// The path segment of the REST API (`meshtraces`).
            pub fn plural(self) -> &'static str {
                match self { $(Kind::$kind => $plural,)+ Kind::Extension(k) => k.plural }
            }

            pub fn scope(self) -> Scope {
                match self { $(Kind::$kind => Scope::$scope,)+ Kind::Extension(_) => Scope::Mesh }
            }

            /// Kuma's older kinds write their spec inline beside `type`/`name`/`mesh` in the
            /// universal form; the newer policies nest it under `spec`.
            pub fn spec_inline(self) -> bool {
                match self { $(Kind::$kind => $inline,)+ Kind::Extension(_) => false }
            }

            /// The JSON schema of this kind's spec (any object, for a registered kind).
            pub fn spec_schema(self, generator: &mut SchemaGenerator) -> Schema {
                match self {
                    $(Kind::$kind => generator.subschema_for::<$spec>(),)+
                    Kind::Extension(_) => generator.subschema_for::<serde_json::Map<String, Value>>(),
                }
            }
        }

        impl serde::Serialize for Kind {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        /// A resource's spec, typed by kind.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Spec { $($kind($spec),)+ Extension(Extension) }

        impl Spec {
            pub fn kind(&self) -> Kind {
                match self { $(Spec::$kind(_) => Kind::$kind,)+ Spec::Extension(e) => Kind::Extension(e.kind) }
            }

            /// Decodes a spec of `kind`; the error names the field under `root`.
            pub fn from_value(kind: Kind, root: &str, value: Value) -> Result<Spec, FieldError> {
                match kind {
                    $(Kind::$kind => decode::<$spec>(root, value).map(Spec::$kind),)+
                    Kind::Extension(k) => k.decode(root, value).map(Spec::Extension),
                }
            }

            pub fn to_value(&self) -> Value {
                let encoded = match self {
                    $(Spec::$kind(s) => serde_json::to_value(s),)+
                    Spec::Extension(e) => Ok(e.spec.to_value()),
                };
                // Spec types are plain data with string keys: encoding cannot fail.
                encoded.unwrap_or(Value::Null)
            }
        }

        impl Validate for Spec {
            fn validate(&self, v: &mut Validator) {
                match self { $(Spec::$kind(s) => s.validate(v),)+ Spec::Extension(e) => e.spec.validate(v) }
            }
        }
    };
}

kinds! {
    Mesh { spec: MeshSpec, plural: "meshes", scope: Global, inline: true },
    Dataplane { spec: DataplaneSpec, plural: "dataplanes", scope: Mesh, inline: true },
    TrafficPermission { spec: TrafficPermissionSpec, plural: "traffic-permissions", scope: Mesh, inline: true },
    MeshTrafficPermission { spec: MeshTrafficPermissionSpec, plural: "meshtrafficpermissions", scope: Mesh, inline: false },
    MeshTrace { spec: MeshTraceSpec, plural: "meshtraces", scope: Mesh, inline: false },
    MeshLoadBalancingStrategy { spec: MeshLoadBalancingStrategySpec, plural: "meshloadbalancingstrategies", scope: Mesh, inline: false },
    MeshHealthCheck { spec: MeshHealthCheckSpec, plural: "meshhealthchecks", scope: Mesh, inline: false },
    MeshCircuitBreaker { spec: MeshCircuitBreakerSpec, plural: "meshcircuitbreakers", scope: Mesh, inline: false },
    MeshRetry { spec: MeshRetrySpec, plural: "meshretries", scope: Mesh, inline: false },
    MeshTimeout { spec: MeshTimeoutSpec, plural: "meshtimeouts", scope: Mesh, inline: false },
    MeshHTTPRoute { spec: MeshHttpRouteSpec, plural: "meshhttproutes", scope: Mesh, inline: false },
    MeshTCPRoute { spec: MeshTcpRouteSpec, plural: "meshtcproutes", scope: Mesh, inline: false },
    MeshFaultInjection { spec: MeshFaultInjectionSpec, plural: "meshfaultinjections", scope: Mesh, inline: false },
    MeshRateLimit { spec: MeshRateLimitSpec, plural: "meshratelimits", scope: Mesh, inline: false },
    MeshTLS { spec: MeshTlsSpec, plural: "meshtlses", scope: Mesh, inline: false },
    TrafficRoute { spec: TrafficRouteSpec, plural: "traffic-routes", scope: Mesh, inline: true },
    FaultInjection { spec: FaultInjectionSpec, plural: "fault-injections", scope: Mesh, inline: true },
    RateLimit { spec: RateLimitSpec, plural: "rate-limits", scope: Mesh, inline: true },
    Timeout { spec: TimeoutSpec, plural: "timeouts", scope: Mesh, inline: true },
    Retry { spec: RetrySpec, plural: "retries", scope: Mesh, inline: true },
    CircuitBreaker { spec: CircuitBreakerSpec, plural: "circuit-breakers", scope: Mesh, inline: true },
    HealthCheck { spec: HealthCheckSpec, plural: "health-checks", scope: Mesh, inline: true },
    ZoneIngress { spec: ZoneIngressSpec, plural: "zoneingresses", scope: Global, inline: true },
    Secret { spec: SecretSpec, plural: "secrets", scope: Mesh, inline: true },
    GlobalSecret { spec: SecretSpec, plural: "global-secrets", scope: Global, inline: true },
    VirtualIPs { spec: VirtualIpsSpec, plural: "virtualips", scope: Mesh, inline: true },
}

impl Kind {
    /// Kinds that a zone owns and reports to global (its inventory), rather than policy that
    /// flows from global to zones.
    pub fn zone_owned(self) -> bool {
        matches!(self, Kind::Dataplane | Kind::ZoneIngress)
    }

    /// Kinds a zone control plane makes for itself: never written by users, never sent to
    /// global nor taken from it (a full resync from global keeps them).
    pub fn zone_local(self) -> bool {
        matches!(self, Kind::VirtualIPs)
    }

    /// Kinds whose content only admins may read (Kuma's Secret and GlobalSecret).
    pub fn is_secret(self) -> bool {
        matches!(self, Kind::Secret | Kind::GlobalSecret)
    }

    /// The exact name, as written in `type:` or `kind:`.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::all().into_iter().find(|k| k.name() == name)
    }

    /// The kind whose REST path segment is `plural`.
    pub fn from_plural(plural: &str) -> Option<Kind> {
        Kind::all().into_iter().find(|k| k.plural() == plural)
    }

    /// The kind a person meant on a command line: `MeshTrace`, `meshtrace`, `meshtraces`,
    /// `traffic-permission` and `trafficpermissions` all work.
    pub fn from_cli(text: &str) -> Option<Kind> {
        let norm = |s: &str| s.to_ascii_lowercase().replace(['-', '_'], "");
        let wanted = norm(text);
        Kind::all()
            .into_iter()
            .find(|k| norm(k.name()) == wanted || norm(k.plural()) == wanted)
    }

    /// The built-in kinds, then the registered ones.
    pub fn all() -> Vec<Kind> {
        let mut all = Kind::ALL.to_vec();
        all.extend(crate::extension::registered());
        all
    }

    pub fn names() -> Vec<&'static str> {
        Kind::all().into_iter().map(|k| k.name()).collect()
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

pub(crate) fn decode<T: DeserializeOwned>(root: &str, value: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = join_path(root, &err.path().to_string());
        let message = err.into_inner().to_string();
        // The path already ends with the unknown field's name; say what was expected instead.
        if let Some((_, expected)) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
        {
            return FieldError::new(
                path,
                format!("unknown field; {}", expected.trim_start_matches(", ")),
            );
        }
        FieldError::new(path, message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_names() {
        for text in ["MeshTrace", "meshtrace", "meshtraces", "MESHTRACES"] {
            assert_eq!(Kind::from_cli(text), Some(Kind::MeshTrace), "{text}");
        }
        assert_eq!(
            Kind::from_cli("traffic-permission"),
            Some(Kind::TrafficPermission)
        );
        assert_eq!(
            Kind::from_cli("trafficpermissions"),
            Some(Kind::TrafficPermission)
        );
        assert_eq!(Kind::from_cli("meshretries"), Some(Kind::MeshRetry));
        assert_eq!(Kind::from_cli("nope"), None);
    }

    #[test]
    fn plurals_are_unique() {
        for a in Kind::ALL {
            assert_eq!(Kind::from_plural(a.plural()), Some(*a));
        }
    }
}
