//! `targetRef`: how a policy says which proxies it configures and which traffic it is about.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{Validator, validate_labels, validate_tag_map};

/// What a `targetRef` points at. The names are Kuma's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TargetRefKind {
    Mesh,
    MeshSubset,
    MeshService,
    MeshServiceSubset,
    MeshExternalService,
    MeshMultiZoneService,
    MeshGateway,
    MeshHTTPRoute,
    Dataplane,
}

/// The kind of proxy a top-level `targetRef` may be narrowed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ProxyType {
    Sidecar,
    Gateway,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    pub kind: TargetRefKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// Matches proxies by their inbound tags (`kuma.io/service`, `version`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// Matches resources by their labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_types: Option<Vec<ProxyType>>,
}

impl TargetRef {
    /// A `targetRef` of kind `Mesh`: every proxy of the mesh.
    pub fn mesh() -> Self {
        Self {
            kind: TargetRefKind::Mesh,
            name: None,
            namespace: None,
            mesh: None,
            section_name: None,
            tags: None,
            labels: None,
            proxy_types: None,
        }
    }

    /// Validates this reference where only the `allowed` kinds make sense.
    pub fn validate_in(&self, v: &mut Validator, allowed: &[TargetRefKind]) {
        self.validate_with(v, allowed, false);
    }

    /// Validates a top-level reference of a policy that configures inbounds (`from`,
    /// `rules`), where a Dataplane's `sectionName` names one inbound, by name or port.
    pub fn validate_inbound_top(&self, v: &mut Validator, allowed: &[TargetRefKind]) {
        self.validate_with(v, allowed, true);
    }

    fn validate_with(&self, v: &mut Validator, allowed: &[TargetRefKind], inbound_section: bool) {
        use TargetRefKind::*;
        if !allowed.contains(&self.kind) {
            let names: Vec<String> = allowed.iter().map(|k| format!("{k:?}")).collect();
            let why = if UNSUPPORTED.contains(&self.kind) {
                format!(
                    "{:?} is not supported yet: Meridian has no {:?} resources to refer to",
                    self.kind, self.kind
                )
            } else {
                format!("{:?} is not allowed here", self.kind)
            };
            v.error_at("kind", format!("{why}; expected one of {}", names.join(", ")));
        }
        match &self.section_name {
            Some(_) if !(inbound_section && self.kind == Dataplane) => v.error_at(
                "sectionName",
                "is only supported on a top-level Dataplane targetRef of a policy with from or rules, where it names an inbound (by name or port)",
            ),
            Some(s) if s.is_empty() => v.error_at("sectionName", "must not be empty"),
            _ => {}
        }
        match self.kind {
            Mesh | MeshSubset => {
                if self.name.is_some() {
                    v.error_at("name", format!("must not be set for kind {:?}", self.kind));
                }
            }
            MeshService | MeshServiceSubset | MeshExternalService | MeshMultiZoneService | MeshGateway
            | MeshHTTPRoute => {
                if self.name.as_deref().is_none_or(str::is_empty) && self.labels.is_none() {
                    v.error_at("name", format!("must be set for kind {:?}", self.kind));
                }
            }
            Dataplane => {
                // Bare, it selects every Dataplane (as Kuma); a name and labels do not mix.
                if self.name.is_some() && self.labels.is_some() {
                    v.error_at("labels", "must not be set together with name");
                }
            }
        }
        match (self.kind, &self.tags) {
            (MeshSubset | MeshServiceSubset | MeshGateway, _) => {}
            (_, Some(_)) => v.error_at("tags", format!("must not be set for kind {:?}", self.kind)),
            (_, None) => {}
        }
        if let Some(tags) = &self.tags {
            v.field("tags", |v| validate_tag_map(v, tags));
        }
        if let Some(labels) = &self.labels {
            v.field("labels", |v| validate_labels(v, labels));
        }
        if self.proxy_types.is_some() && !matches!(self.kind, Mesh | MeshSubset | Dataplane) {
            v.error_at("proxyTypes", format!("must not be set for kind {:?}", self.kind));
        }
    }
}

/// Kinds Kuma's policies may name that Meridian has no resources of yet: refused with a
/// message that says so, rather than stored and then ignored.
const UNSUPPORTED: &[TargetRefKind] = &[
    TargetRefKind::MeshExternalService,
    TargetRefKind::MeshMultiZoneService,
    TargetRefKind::MeshGateway,
];

/// Kinds a policy's top-level `targetRef` may name (what translation applies).
pub const TOP_LEVEL: &[TargetRefKind] = &[
    TargetRefKind::Mesh,
    TargetRefKind::MeshSubset,
    TargetRefKind::MeshService,
    TargetRefKind::MeshServiceSubset,
    TargetRefKind::Dataplane,
];

/// Kinds a `to[].targetRef` (outbound traffic) may name.
pub const TO: &[TargetRefKind] = &[TargetRefKind::Mesh, TargetRefKind::MeshService];

/// What the top-level `targetRef` of a policy that may shape one route's rules (MeshTimeout,
/// MeshRetry) names: [`TOP_LEVEL`], or a MeshHTTPRoute (the proxies it selects, its rules).
pub const TOP_LEVEL_OR_ROUTE: &[TargetRefKind] = &[
    TargetRefKind::Mesh,
    TargetRefKind::MeshSubset,
    TargetRefKind::MeshService,
    TargetRefKind::MeshServiceSubset,
    TargetRefKind::Dataplane,
    TargetRefKind::MeshHTTPRoute,
];

/// What their `to[].targetRef` names: [`TO`], or a MeshHTTPRoute (its rules).
pub const TO_OR_ROUTE: &[TargetRefKind] = &[
    TargetRefKind::Mesh,
    TargetRefKind::MeshService,
    TargetRefKind::MeshHTTPRoute,
];

/// Checks a policy whose `to` entries may shape one route's rules: under a top-level
/// MeshHTTPRoute they name `Mesh` (the route's traffic), and there is no inbound section.
pub fn validate_route_target(
    v: &mut Validator,
    top: Option<&TargetRef>,
    to_kinds: impl Iterator<Item = TargetRefKind>,
    inbound: bool,
) {
    if top.is_none_or(|t| t.kind != TargetRefKind::MeshHTTPRoute) {
        return;
    }
    if inbound {
        v.error_at(
            "targetRef.kind",
            "MeshHTTPRoute shapes outbound traffic only: from and rules must not be set with it",
        );
    }
    for (i, kind) in to_kinds.enumerate() {
        if kind != TargetRefKind::Mesh {
            v.error_at(
                &format!("to[{i}].targetRef.kind"),
                format!("must be Mesh under a top-level MeshHTTPRoute (its own traffic), got {kind:?}"),
            );
        }
    }
}

/// What a `from[].targetRef` may name where a conf applies to every client (MeshTimeout,
/// MeshCircuitBreaker: Kuma takes only `Mesh` there).
pub const FROM_ALL: &[TargetRefKind] = &[TargetRefKind::Mesh];

/// Kinds a `from[].targetRef` (inbound traffic) may name.
pub const FROM: &[TargetRefKind] = &[
    TargetRefKind::Mesh,
    TargetRefKind::MeshSubset,
    TargetRefKind::MeshService,
    TargetRefKind::MeshServiceSubset,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(tr: &TargetRef, allowed: &[TargetRefKind]) -> Vec<String> {
        let mut v = Validator::new("targetRef");
        tr.validate_in(&mut v, allowed);
        v.finish().into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn mesh_takes_no_name() {
        let mut tr = TargetRef::mesh();
        assert!(errors(&tr, TOP_LEVEL).is_empty());
        tr.name = Some("x".into());
        assert_eq!(
            errors(&tr, TOP_LEVEL),
            vec!["targetRef.name: must not be set for kind Mesh"]
        );
    }

    #[test]
    fn service_needs_a_name_and_kind_must_fit_the_place() {
        let tr = TargetRef {
            kind: TargetRefKind::MeshHTTPRoute,
            ..TargetRef::mesh()
        };
        let errs = errors(&tr, FROM);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("targetRef.kind: MeshHTTPRoute is not allowed here"),
            "{errs:?}"
        );
        assert_eq!(errs[1], "targetRef.name: must be set for kind MeshHTTPRoute");
        let service = TargetRef {
            kind: TargetRefKind::MeshServiceSubset,
            name: Some("web".into()),
            ..TargetRef::mesh()
        };
        assert_eq!(
            errors(&service, TO),
            vec!["targetRef.kind: MeshServiceSubset is not allowed here; expected one of Mesh, MeshService"]
        );
        let mut dataplane = TargetRef {
            kind: TargetRefKind::Dataplane,
            ..TargetRef::mesh()
        };
        assert!(
            errors(&dataplane, TOP_LEVEL).is_empty(),
            "a bare Dataplane selects them all"
        );
        dataplane.section_name = Some("http".into());
        assert_eq!(
            errors(&dataplane, TOP_LEVEL),
            vec![
                "targetRef.sectionName: is only supported on a top-level Dataplane targetRef of a policy with from or rules, where it names an inbound (by name or port)"
            ]
        );
        let mut v = Validator::new("targetRef");
        dataplane.validate_inbound_top(&mut v, TOP_LEVEL);
        assert!(v.finish().is_empty());
    }
}
