//! Pieces shared by the targetRef policies: `to`, `from` and `rules` entries.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::targetref::{TargetRef, TargetRefKind};
use crate::validate::{Validate, Validator};

/// An outbound entry: configuration (`default`) for traffic to `targetRef`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct To<T> {
    pub target_ref: TargetRef,
    pub default: T,
}

/// An inbound entry: configuration (`default`) for traffic from `targetRef`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct From<T> {
    pub target_ref: TargetRef,
    pub default: T,
}

/// An inbound rule that applies to all traffic reaching the selected proxies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule<T> {
    pub default: T,
}

/// Validates the top-level `targetRef` (when present) against `allowed`.
/// Validates the top-level `targetRef` of a policy that configures inbounds when `inbound`
/// (its `from` or `rules` are set): a Dataplane's `sectionName` may then name one inbound.
pub fn validate_top_for(
    v: &mut Validator,
    target_ref: &Option<TargetRef>,
    allowed: &[TargetRefKind],
    inbound: bool,
) {
    match target_ref {
        Some(tr) if inbound => v.field("targetRef", |v| tr.validate_inbound_top(v, allowed)),
        _ => validate_top(v, target_ref, allowed),
    }
}

pub fn validate_top(v: &mut Validator, target_ref: &Option<TargetRef>, allowed: &[TargetRefKind]) {
    if let Some(tr) = target_ref {
        v.field("targetRef", |v| tr.validate_in(v, allowed));
    }
}

/// Validates `to` entries: each target must be one of `allowed`, and each `default` must be valid.
pub fn validate_to<T: Validate>(v: &mut Validator, to: &Option<Vec<To<T>>>, allowed: &[TargetRefKind]) {
    if let Some(entries) = to {
        v.field("to", |v| {
            for (i, e) in entries.iter().enumerate() {
                v.index(i, |v| {
                    v.field("targetRef", |v| e.target_ref.validate_in(v, allowed));
                    v.nested("default", &e.default);
                });
            }
        });
    }
}

/// Validates `from` entries like [`validate_to`].
pub fn validate_from<T: Validate>(v: &mut Validator, from: &Option<Vec<From<T>>>, allowed: &[TargetRefKind]) {
    if let Some(entries) = from {
        v.field("from", |v| {
            for (i, e) in entries.iter().enumerate() {
                v.index(i, |v| {
                    v.field("targetRef", |v| e.target_ref.validate_in(v, allowed));
                    v.nested("default", &e.default);
                });
            }
        });
    }
}

/// Validates `rules` entries.
pub fn validate_rules<T: Validate>(v: &mut Validator, rules: &Option<Vec<Rule<T>>>) {
    if let Some(entries) = rules {
        v.field("rules", |v| {
            for (i, e) in entries.iter().enumerate() {
                v.index(i, |v| v.nested("default", &e.default));
            }
        });
    }
}

/// A policy of a kind that shapes inbounds alone, for every client (MeshFaultInjection,
/// MeshRateLimit, MeshTLS): a top-level targetRef that may name an inbound, and `from` entries
/// with `targetRef: Mesh` or `rules`, at least one of them.
pub fn validate_inbound_only<T: Validate>(
    v: &mut Validator,
    target_ref: &Option<TargetRef>,
    from: &Option<Vec<From<T>>>,
    rules: &Option<Vec<Rule<T>>>,
) {
    validate_top_for(v, target_ref, crate::targetref::TOP_LEVEL, true);
    require_some(v, &[("from", non_empty(from)), ("rules", non_empty(rules))]);
    validate_from(v, from, crate::targetref::FROM_ALL);
    validate_rules(v, rules);
}

/// A policy must say what it configures: at least one of the listed sections must be non-empty.
pub fn require_some(v: &mut Validator, sections: &[(&str, bool)]) {
    if sections.iter().all(|(_, present)| !present) {
        let names: Vec<&str> = sections.iter().map(|(n, _)| *n).collect();
        v.error(format!("at least one of {} must be set", names.join(", ")));
    }
}

/// True when an optional list is present and non-empty.
pub fn non_empty<T>(list: &Option<Vec<T>>) -> bool {
    list.as_ref().is_some_and(|l| !l.is_empty())
}
