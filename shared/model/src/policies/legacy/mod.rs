//! Kuma's older policy kinds (Kuma 2.x; 3.0 drops them): `sources` and `destinations` that
//! match services by tags, and one `conf`. They are stored as written and converted, when read,
//! to their targetRef equivalents, which is what translation applies and what
//! `meshctl convert` prints:
//!
//! | older kind     | becomes                        | sources           | destinations         |
//! |----------------|--------------------------------|-------------------|----------------------|
//! | Timeout        | MeshTimeout `to`               | top-level targetRef | `to[].targetRef`   |
//! | Retry          | MeshRetry `to`                 | top-level         | `to`                 |
//! | CircuitBreaker | MeshCircuitBreaker `to`        | top-level         | `to`                 |
//! | HealthCheck    | MeshHealthCheck `to`           | top-level         | `to`                 |
//! | TrafficRoute   | MeshHTTPRoute and MeshTCPRoute | top-level         | `to`                 |
//! | FaultInjection | MeshFaultInjection `from`      | `from` (all: `*`) | top-level targetRef  |
//! | RateLimit      | MeshRateLimit `from`           | `from` (all: `*`) | top-level            |
//!
//! A selector becomes `Mesh` (`kuma.io/service: '*'`), `MeshService` (a service),
//! `MeshServiceSubset` (a service and other tags) or `MeshSubset` (other tags alone). One
//! policy is made per top-level selector. What has no equivalent is refused when the policy
//! is written, naming the field, rather than dropped.

mod inbound;
mod outbound;
mod traffic_route;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use inbound::{FaultInjectionConf, RateLimitConf};
pub use outbound::{CircuitBreakerConf, HealthCheckConf, RetryConf, TimeoutConf};
pub use traffic_route::TrafficRouteConf;

use super::dataplane::{PROTOCOL_TAG, SERVICE_TAG};
use super::traffic_permission::{Selector, validate_selectors};
use crate::targetref::{TargetRef, TargetRefKind};
use crate::validate::{Validate, Validator};
use crate::{FieldError, Kind, Spec};

/// An older policy: whom it is about on both ends, and its conf.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Legacy<C> {
    pub sources: Vec<Selector>,
    pub destinations: Vec<Selector>,
    pub conf: C,
}

pub type TimeoutSpec = Legacy<TimeoutConf>;
pub type RetrySpec = Legacy<RetryConf>;
pub type CircuitBreakerSpec = Legacy<CircuitBreakerConf>;
pub type HealthCheckSpec = Legacy<HealthCheckConf>;
pub type TrafficRouteSpec = Legacy<TrafficRouteConf>;
pub type FaultInjectionSpec = Legacy<FaultInjectionConf>;
pub type RateLimitSpec = Legacy<RateLimitConf>;

/// A policy of a targetRef kind made from an older one.
#[derive(Clone, Debug, PartialEq)]
pub struct Converted {
    pub kind: Kind,
    pub spec: Spec,
}

/// An older kind's conf, and what it becomes.
pub trait LegacyConf {
    /// The kinds it becomes, in order.
    const BECOMES: &'static [Kind];
    /// Whether the selectors that choose the proxies are `destinations` (inbound kinds).
    const INBOUND: bool;
    /// The targetRef kinds' specs (as JSON) for one top-level targetRef and the other side's
    /// selectors: one per kind in [`LegacyConf::BECOMES`], `None` where it has nothing to
    /// say. Errors name the field under the spec.
    fn convert(&self, top: &TargetRef, others: &[Selector]) -> Result<Vec<Option<Value>>, FieldError>;
}

/// A selector as a targetRef: `Mesh`, `MeshService`, `MeshServiceSubset` or `MeshSubset`.
pub fn target_of(selector: &Selector) -> TargetRef {
    let service = selector
        .match_tags
        .get(SERVICE_TAG)
        .filter(|s| s.as_str() != "*")
        .cloned();
    let tags: BTreeMap<String, String> = selector
        .match_tags
        .iter()
        // `kuma.io/protocol` says what the kind is for (HTTP), not whom: it selects nothing.
        .filter(|(k, v)| k.as_str() != SERVICE_TAG && k.as_str() != PROTOCOL_TAG && v.as_str() != "*")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let kind = match (&service, tags.is_empty()) {
        (None, true) => TargetRefKind::Mesh,
        (Some(_), true) => TargetRefKind::MeshService,
        (Some(_), false) => TargetRefKind::MeshServiceSubset,
        (None, false) => TargetRefKind::MeshSubset,
    };
    TargetRef {
        kind,
        name: service,
        tags: (!tags.is_empty()).then_some(tags),
        ..TargetRef::mesh()
    }
}

/// `to` entries for `destinations`: whole services or every service (`to` takes no subsets).
pub(crate) fn to_targets(field: &str, destinations: &[Selector]) -> Result<Vec<TargetRef>, FieldError> {
    destinations
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let t = target_of(d);
            match t.kind {
                TargetRefKind::Mesh | TargetRefKind::MeshService => Ok(t),
                _ => Err(FieldError::new(
                    format!("{field}[{i}].match"),
                    "only kuma.io/service can be converted here: the targetRef policy's to names whole services",
                )),
            }
        })
        .collect()
}

/// `from` entries for `sources`: every client alone (what the inbound kinds here take).
pub(crate) fn from_all(sources: &[Selector]) -> Result<(), FieldError> {
    for (i, s) in sources.iter().enumerate() {
        if target_of(s).kind != TargetRefKind::Mesh {
            return Err(FieldError::new(
                format!("sources[{i}].match"),
                "only kuma.io/service: '*' can be converted: the targetRef policy applies to every client",
            ));
        }
    }
    Ok(())
}

/// A conf's field as JSON (`None` when unset).
pub(crate) fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

impl<C: LegacyConf + Clone + DeserializeOwned> Legacy<C> {
    /// The targetRef policies this one comes to, in order: for each top-level selector, one of
    /// each kind it becomes (where it says something for that kind).
    pub fn convert(&self) -> Result<Vec<Converted>, FieldError> {
        let (tops, others) = match C::INBOUND {
            true => (&self.destinations, &self.sources),
            false => (&self.sources, &self.destinations),
        };
        let mut out = Vec::new();
        for selector in tops {
            let top = target_of(selector);
            let specs = self.conf.convert(&top, others)?;
            for (kind, spec) in C::BECOMES.iter().zip(specs) {
                let Some(mut value) = spec else { continue };
                if top.kind != TargetRefKind::Mesh
                    && let Some(obj) = value.as_object_mut()
                {
                    obj.insert("targetRef".into(), json(&top));
                }
                let spec = Spec::from_value(*kind, "", value).map_err(|e| {
                    FieldError::new(
                        "conf",
                        format!("does not convert to a valid {kind}: {}: {}", e.field, e.message),
                    )
                })?;
                out.push(Converted { kind: *kind, spec });
            }
        }
        Ok(out)
    }
}

impl<C: LegacyConf + Clone + DeserializeOwned> Validate for Legacy<C> {
    fn validate(&self, v: &mut Validator) {
        validate_selectors(v, "sources", &self.sources);
        validate_selectors(v, "destinations", &self.destinations);
        if !v.is_ok() {
            return;
        }
        match self.convert() {
            Err(e) => v.error_at(&e.field, e.message),
            Ok(converted) => {
                for c in converted {
                    let mut check = Validator::new("");
                    c.spec.validate(&mut check);
                    for e in check.finish() {
                        v.error_at(
                            "conf",
                            format!(
                                "does not convert to a valid {}: {}: {}",
                                c.kind, e.field, e.message
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// What an older policy's spec converts to; `None` for specs of other kinds.
pub fn converted(spec: &Spec) -> Option<Result<Vec<Converted>, FieldError>> {
    Some(match spec {
        Spec::Timeout(s) => s.convert(),
        Spec::Retry(s) => s.convert(),
        Spec::CircuitBreaker(s) => s.convert(),
        Spec::HealthCheck(s) => s.convert(),
        Spec::TrafficRoute(s) => s.convert(),
        Spec::FaultInjection(s) => s.convert(),
        Spec::RateLimit(s) => s.convert(),
        _ => return None,
    })
}

/// What an older policy converts to, as resources a user could apply in its place: named as
/// it was, with `-1`, `-2` ... where one kind comes out more than once (several top-level
/// selectors); `None` for a resource of another kind.
pub fn convert_resource(r: &crate::Resource) -> Option<Result<Vec<crate::Resource>, FieldError>> {
    let converted = match converted(&r.spec)? {
        Ok(c) => c,
        Err(e) => return Some(Err(e)),
    };
    let count = |kind: Kind| converted.iter().filter(|c| c.kind == kind).count();
    let mut seen: BTreeMap<Kind, usize> = BTreeMap::new();
    let resources = converted
        .iter()
        .map(|c| {
            let n = seen.entry(c.kind).or_default();
            *n += 1;
            let name = match count(c.kind) {
                1 => r.name.clone(),
                _ => format!("{}-{n}", r.name),
            };
            crate::Resource {
                mesh: r.mesh.clone(),
                name,
                labels: r.labels.clone(),
                spec: c.spec.clone(),
            }
        })
        .collect();
    Some(Ok(resources))
}
