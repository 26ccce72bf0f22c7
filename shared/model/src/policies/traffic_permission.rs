//! TrafficPermission: Kuma's older permission form, matching services by tags on both ends.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{Validate, Validator, validate_labels};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPermissionSpec {
    /// Who may call: each entry matches clients by tags (`kuma.io/service: demo`).
    pub sources: Vec<Selector>,
    /// Whom they may call, matched the same way.
    pub destinations: Vec<Selector>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Tags that must all match; the value `*` matches any value.
    #[serde(rename = "match")]
    pub match_tags: BTreeMap<String, String>,
}

pub(crate) fn validate_selectors(v: &mut Validator, field: &str, selectors: &[Selector]) {
    v.field(field, |v| {
        if selectors.is_empty() {
            v.error("must have at least one entry");
        }
        for (i, s) in selectors.iter().enumerate() {
            v.index(i, |v| {
                v.field("match", |v| {
                    if s.match_tags.is_empty() {
                        v.error("must have at least one tag");
                    }
                    // `*` is a wildcard, not a tag value: check the rest as labels.
                    let checked: BTreeMap<String, String> = s
                        .match_tags
                        .iter()
                        .map(|(k, val)| (k.clone(), if val == "*" { String::new() } else { val.clone() }))
                        .collect();
                    validate_labels(v, &checked);
                });
            });
        }
    });
}

impl Validate for TrafficPermissionSpec {
    fn validate(&self, v: &mut Validator) {
        validate_selectors(v, "sources", &self.sources);
        validate_selectors(v, "destinations", &self.destinations);
    }
}
