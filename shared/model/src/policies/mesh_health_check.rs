//! PLACEHOLDER until the full spec lands: accepts only a targetRef.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::targetref::TargetRef;
use crate::validate::{Validate, Validator};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshHealthCheckSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
}

impl Validate for MeshHealthCheckSpec {
    fn validate(&self, _v: &mut Validator) {}
}
