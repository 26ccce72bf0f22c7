//! MeshTrafficPermission: which clients may reach the selected proxies.
//!
//! Two forms, as in Kuma: `from[]` entries whose `default.action` is `Allow`, `Deny` or
//! `AllowWithShadowDeny` for the clients a `targetRef` selects, and the newer `rules[]` whose
//! `default` lists client identities (SPIFFE IDs) under `allow`, `deny` and `allowWithShadowDeny`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{From, Rule, non_empty, require_some, validate_from, validate_rules, validate_top_for};
use crate::targetref::{self, TargetRef};
use crate::validate::{Validate, Validator};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshTrafficPermissionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    /// Clients selected by `targetRef`, each with the action taken on their requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<From<PermissionConf>>>,
    /// Inbound rules matching clients by identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<Rule<RuleConf>>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Action {
    Allow,
    Deny,
    /// Requests pass, but are logged as if they had been denied: a dry run of a deny.
    AllowWithShadowDeny,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PermissionConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleConf {
    /// Clients whose requests are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<Vec<Match>>,
    /// Clients whose requests pass but are logged as denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_with_shadow_deny: Option<Vec<Match>>,
    /// Clients whose requests pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<Match>>,
}

/// Selects clients by the identity they present.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(rename = "spiffeID", default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<SpiffeIdMatch>,
    /// Matches the SNI the client sent on its TLS connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<SniMatch>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SpiffeIdMatchType {
    Exact,
    Prefix,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpiffeIdMatch {
    #[serde(rename = "type")]
    pub match_type: SpiffeIdMatchType,
    /// A SPIFFE ID (`spiffe://trust-domain/ns/demo/sa/client`) or, for `Prefix`, its beginning.
    pub value: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SniMatchType {
    Exact,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SniMatch {
    #[serde(rename = "type")]
    pub match_type: SniMatchType,
    pub value: String,
}

impl Validate for MeshTrafficPermissionSpec {
    fn validate(&self, v: &mut Validator) {
        validate_top_for(v, &self.target_ref, targetref::TOP_LEVEL, true);
        require_some(
            v,
            &[("from", non_empty(&self.from)), ("rules", non_empty(&self.rules))],
        );
        if non_empty(&self.rules) && non_empty(&self.from) {
            v.error_at("rules", "must not be set together with from (as in Kuma)");
        }
        validate_from(v, &self.from, targetref::FROM);
        validate_rules(v, &self.rules);
    }
}

impl Validate for PermissionConf {
    fn validate(&self, v: &mut Validator) {
        v.required("action", &self.action);
    }
}

impl Validate for RuleConf {
    fn validate(&self, v: &mut Validator) {
        let lists = [
            ("deny", &self.deny),
            ("allowWithShadowDeny", &self.allow_with_shadow_deny),
            ("allow", &self.allow),
        ];
        require_some(v, &lists.map(|(name, list)| (name, non_empty(list))));
        for (name, list) in lists {
            if let Some(matches) = list {
                v.field(name, |v| matches.validate(v));
            }
        }
    }
}

/// A SPIFFE id is `spiffe://TRUST-DOMAIN[/PATH]`: a trust domain of lower-case letters,
/// digits, `.`, `-` and `_`, and path segments of letters, digits, `.`, `-` and `_`. A prefix
/// must at least name its trust domain.
/// What is wrong with `value` as a SPIFFE id, if anything.
fn spiffe_id_problem(value: &str, match_type: SpiffeIdMatchType) -> Option<&'static str> {
    let bad = Some;
    let Some(rest) = value.strip_prefix("spiffe://") else {
        return bad("it must start with spiffe://");
    };
    let (domain, path) = rest.split_once('/').map_or((rest, None), |(d, p)| (d, Some(p)));
    let domain_ok = !domain.is_empty()
        && domain.len() <= 255
        && domain
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'));
    if !domain_ok {
        return bad("the trust domain");
    }
    let path = path?;
    let segments: Vec<&str> = path.split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        // A prefix may end with `/`; an exact id's path has no empty segment.
        let last = i + 1 == segments.len();
        if segment.is_empty() && !(last && match_type == SpiffeIdMatchType::Prefix) {
            return bad("an empty path segment");
        }
        if matches!(*segment, "." | "..")
            || !segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return bad("a path segment");
        }
    }
    None
}

impl Validate for Match {
    fn validate(&self, v: &mut Validator) {
        match (&self.spiffe_id, &self.sni) {
            (None, None) => v.error("one of spiffeID or sni must be set"),
            (Some(_), Some(_)) => v.error("only one of spiffeID or sni may be set"),
            _ => {}
        }
        if let Some(id) = &self.spiffe_id {
            v.field("spiffeID", |v| {
                if id.value.is_empty() {
                    v.error_at("value", "must not be empty");
                } else if let Some(why) = spiffe_id_problem(&id.value, id.match_type) {
                    v.error_at(
                        "value",
                        format!(
                            "{:?} is not a SPIFFE id ({why}): expected spiffe://TRUST-DOMAIN/PATH",
                            id.value
                        ),
                    );
                }
            });
        }
        if self.sni.is_some() {
            v.error_at(
                "sni",
                "is not supported yet: match clients by spiffeID (their certificate's identity)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Format, Spec, parse_one};

    use crate::testing::errors;

    #[test]
    fn kuma_from_form_parses() {
        let yaml = "type: MeshTrafficPermission
name: allow-orders
mesh: default
spec:
  targetRef:
    kind: MeshSubset
    tags:
      kuma.io/service: payments
  from:
    - targetRef:
        kind: MeshSubset
        tags:
          kuma.io/service: orders
      default:
        action: Allow
    - targetRef:
        kind: Mesh
      default:
        action: AllowWithShadowDeny
";
        let sub = parse_one(yaml, Format::Yaml).unwrap();
        let Spec::MeshTrafficPermission(spec) = &sub.resource.spec else {
            panic!()
        };
        let from = spec.from.as_ref().unwrap();
        assert_eq!(from[1].default.action, Some(super::Action::AllowWithShadowDeny));
    }

    #[test]
    fn kuma_rules_form_parses() {
        let yaml = "type: MeshTrafficPermission
name: identities
mesh: default
spec:
  targetRef:
    kind: Dataplane
    labels:
      app: payments
  rules:
    - default:
        allow:
          - spiffeID:
              type: Exact
              value: spiffe://default.zone-1.mesh.local/ns/demo/sa/orders
        deny:
          - spiffeID:
              type: Prefix
              value: spiffe://default.zone-1.mesh.local/ns/untrusted/
";
        let sub = parse_one(yaml, Format::Yaml).unwrap();
        let Spec::MeshTrafficPermission(spec) = &sub.resource.spec else {
            panic!()
        };
        let rule = &spec.rules.as_ref().unwrap()[0].default;
        assert_eq!(rule.deny.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn invalid_examples_name_their_fields() {
        let base = "type: MeshTrafficPermission\nname: x\nmesh: default\nspec:\n";
        let errs = errors(&format!(
            "{base}  from:\n    - targetRef: {{kind: Mesh}}\n      default: {{action: Maybe}}\n"
        ));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("spec.from[0].default.action: unknown variant `Maybe`"),
            "{errs:?}"
        );

        let errs = errors(&format!(
            "{base}  from:\n    - targetRef: {{kind: Mesh}}\n      default: {{}}\n"
        ));
        assert_eq!(errs, vec!["spec.from[0].default.action: must be set"]);

        let errs = errors(&format!(
            "{base}  rules:\n    - default:\n        allow:\n          - spiffeID: {{type: Exact, value: ''}}\n"
        ));
        assert_eq!(
            errs,
            vec!["spec.rules[0].default.allow[0].spiffeID.value: must not be empty"]
        );

        let errs = errors(&format!("{base}  targetRef: {{kind: Mesh}}\n"));
        assert_eq!(errs, vec!["spec: at least one of from, rules must be set"]);

        let errs = errors(&format!(
            "{base}  from:\n    - targetRef: {{kind: MeshHTTPRoute, name: r}}\n      default: {{action: Deny}}\n"
        ));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("spec.from[0].targetRef.kind: MeshHTTPRoute is not allowed here"));

        let errs = errors(&format!(
            "{base}  from:\n    - targetRef: {{kind: Mesh}}\n      default: {{action: Allow}}\n  rules:\n    - default:\n        allow:\n          - spiffeID: {{type: Exact, value: 'spiffe://default/web'}}\n"
        ));
        assert_eq!(
            errs,
            vec!["spec.rules: must not be set together with from (as in Kuma)"]
        );
        let errs = errors(&format!(
            "{base}  rules:\n    - default:\n        deny:\n          - sni: {{type: Exact, value: 'web'}}\n"
        ));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("spec.rules[0].default.deny[0].sni: is not supported yet"),
            "{errs:?}"
        );
    }
}
