//! The model half of MeshTestHeader, a policy kind that exists only in this test: request
//! headers to add to calls to a service. Types, validation and the typed merge, as a built-in
//! kind's module under `shared/model/src/policies/` has them.

use std::collections::BTreeMap;

use meridian_model::Kind;
use meridian_model::extension::{ExtensionKind, ExtensionType};
use meridian_model::policies::common::{To, require_some, validate_to, validate_top};
use meridian_model::resolve::{Merge, Outbound, Targeted};
use meridian_model::targetref::{self, TargetRef};
use meridian_model::validate::{Validate, Validator, check_header_name};
use serde::{Deserialize, Serialize};

pub static KIND: ExtensionKind =
    ExtensionKind::new::<MeshTestHeaderSpec>("MeshTestHeader", "meshtestheaders");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshTestHeaderSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<To<HeaderConf>>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderConf {
    /// Header name to value.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
}

/// Header by header: a more specific policy's value for a header wins, the rest are kept.
impl Merge for HeaderConf {
    fn merge(&mut self, other: &Self) {
        for (name, value) in &other.set {
            self.set.insert(name.clone(), value.clone());
        }
    }
}

impl Validate for HeaderConf {
    fn validate(&self, v: &mut Validator) {
        v.field("set", |v| {
            for name in self.set.keys() {
                v.field(name, |v| check_header_name(v, name));
            }
        });
    }
}

impl Validate for MeshTestHeaderSpec {
    fn validate(&self, v: &mut Validator) {
        validate_top(v, &self.target_ref, targetref::TOP_LEVEL);
        require_some(v, &[("to", self.to.is_some())]);
        validate_to(v, &self.to, targetref::TO);
    }
}

impl ExtensionType for MeshTestHeaderSpec {
    fn top_target_ref(&self) -> Option<&TargetRef> {
        self.target_ref.as_ref()
    }
}

impl Targeted for MeshTestHeaderSpec {
    const KIND: Kind = Kind::Extension(&KIND);
    fn target_ref(&self) -> Option<&TargetRef> {
        self.target_ref.as_ref()
    }
}

impl Outbound for MeshTestHeaderSpec {
    type Conf = HeaderConf;
    fn to(&self) -> &[To<HeaderConf>] {
        self.to.as_deref().unwrap_or_default()
    }
}
