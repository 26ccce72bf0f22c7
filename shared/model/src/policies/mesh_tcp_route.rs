//! MeshTCPRoute: how a caller's connections to a service are split between backends (a
//! service, or a subset of it by tags), by weight. Where a MeshHTTPRoute routes the same
//! traffic it wins, and the MeshTCPRoute is left out (as Kuma documents); on an HTTP service
//! with no MeshHTTPRoute, its backends take every request.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::validate_top;
use super::mesh_http_route::{BackendRef, validate_backend_refs};
use crate::targetref::{TargetRef, TargetRefKind};
use crate::validate::{Validate, Validator};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshTcpRouteSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default)]
    pub to: Vec<TcpRouteTo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRouteTo {
    pub target_ref: TargetRef,
    /// Exactly one rule (Kuma's shape leaves room for matches to come).
    #[serde(default)]
    pub rules: Vec<TcpRule>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRule {
    pub default: TcpRuleConf,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRuleConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_refs: Option<Vec<BackendRef>>,
}

const TOP: &[TargetRefKind] = &[
    TargetRefKind::Mesh,
    TargetRefKind::MeshSubset,
    TargetRefKind::MeshService,
    TargetRefKind::MeshServiceSubset,
    TargetRefKind::Dataplane,
];

impl Validate for MeshTcpRouteSpec {
    fn validate(&self, v: &mut Validator) {
        validate_top(v, &self.target_ref, TOP);
        if self.to.is_empty() {
            v.error_at(
                "to",
                "must have at least one entry: the service whose traffic is routed",
            );
        }
        v.field("to", |v| {
            for (i, to) in self.to.iter().enumerate() {
                v.index(i, |v| {
                    v.field("targetRef", |v| {
                        to.target_ref.validate_in(v, &[TargetRefKind::MeshService]);
                    });
                    if to.rules.len() != 1 {
                        v.error_at(
                            "rules",
                            format!("must have exactly one rule, got {}", to.rules.len()),
                        );
                    }
                    v.field("rules", |v| {
                        for (j, rule) in to.rules.iter().enumerate() {
                            v.index(j, |v| {
                                v.field("default", |v| match &rule.default.backend_refs {
                                    None => v.error_at("backendRefs", "must be set: where connections go"),
                                    Some(refs) => v.field("backendRefs", |v| validate_backend_refs(v, refs)),
                                })
                            });
                        }
                    });
                });
            }
        });
    }
}

impl MeshTcpRouteSpec {
    /// Every backend its rules send to, with the service whose traffic it routes.
    pub fn backends(&self) -> impl Iterator<Item = (&str, &BackendRef)> {
        self.to.iter().flat_map(|to| {
            let service = to.target_ref.name.as_deref().unwrap_or_default();
            let refs = to
                .rules
                .iter()
                .flat_map(|r| r.default.backend_refs.iter().flatten());
            refs.map(move |b| (service, b))
        })
    }
}

impl crate::resolve::Targeted for MeshTcpRouteSpec {
    const KIND: crate::Kind = crate::Kind::MeshTCPRoute;
    fn target_ref(&self) -> Option<&TargetRef> {
        self.target_ref.as_ref()
    }
}

crate::merge_fields!(TcpRuleConf { backend_refs });
