//! MeshTimeout: connection and HTTP timeouts, inbound (`from`, `rules`) and outbound (`to`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    From, Rule, To, non_empty, require_some, validate_from, validate_rules, validate_to, validate_top_for,
};
use crate::targetref::{self, TargetRef};
use crate::validate::{Validate, Validator};
use crate::values::GoDuration;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshTimeoutSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<From<TimeoutConf>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<To<TimeoutConf>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<Rule<TimeoutConf>>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutConf {
    /// Time to establish a connection upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_timeout: Option<GoDuration>,
    /// A connection with no traffic for this long is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpTimeouts>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpTimeouts {
    /// The whole request, from the first byte sent to the last byte received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_idle_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stream_duration: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers_timeout: Option<GoDuration>,
}

impl Validate for MeshTimeoutSpec {
    fn validate(&self, v: &mut Validator) {
        let inbound = non_empty(&self.from) || non_empty(&self.rules);
        validate_top_for(v, &self.target_ref, targetref::TOP_LEVEL_OR_ROUTE, inbound);
        let to_kinds = self.to.iter().flatten().map(|t| t.target_ref.kind);
        targetref::validate_route_target(v, self.target_ref.as_ref(), to_kinds, inbound);
        if non_empty(&self.to) && self.target_ref.as_ref().is_some_and(|t| t.section_name.is_some()) {
            v.error_at(
                "to",
                "must not be set when targetRef.sectionName names an inbound: put the outbound conf in a policy of its own",
            );
        }
        require_some(
            v,
            &[
                ("from", non_empty(&self.from)),
                ("to", non_empty(&self.to)),
                ("rules", non_empty(&self.rules)),
            ],
        );
        if non_empty(&self.rules) && (non_empty(&self.to) || non_empty(&self.from)) {
            v.error_at(
                "rules",
                "must not be set together with to or from (as in Kuma): move their confs into rules, or drop rules",
            );
        }
        validate_from(v, &self.from, targetref::FROM_ALL);
        validate_to(v, &self.to, targetref::TO_OR_ROUTE);
        validate_rules(v, &self.rules);
    }
}

impl Validate for TimeoutConf {
    fn validate(&self, v: &mut Validator) {
        if self.connection_timeout.is_none() && self.idle_timeout.is_none() && self.http.is_none() {
            v.error("at least one of connectionTimeout, idleTimeout, http must be set");
        }
        if self
            .connection_timeout
            .as_ref()
            .is_some_and(|d| d.as_duration().is_zero())
        {
            v.error_at("connectionTimeout", "must be greater than 0");
        }
        if let Some(http) = &self.http {
            let none = [
                &http.request_timeout,
                &http.stream_idle_timeout,
                &http.max_stream_duration,
                &http.max_connection_duration,
                &http.request_headers_timeout,
            ]
            .iter()
            .all(|d| d.is_none());
            if none {
                v.error_at("http", "at least one timeout must be set");
            }
        }
    }
}

impl crate::resolve::Targeted for MeshTimeoutSpec {
    const KIND: crate::Kind = crate::Kind::MeshTimeout;
    fn target_ref(&self) -> Option<&TargetRef> {
        self.target_ref.as_ref()
    }
}

impl crate::resolve::Inbound for MeshTimeoutSpec {
    type Conf = TimeoutConf;
    fn from(&self) -> &[From<TimeoutConf>] {
        self.from.as_deref().unwrap_or_default()
    }
    fn rules(&self) -> &[Rule<TimeoutConf>] {
        self.rules.as_deref().unwrap_or_default()
    }
}

impl crate::resolve::Outbound for MeshTimeoutSpec {
    type Conf = TimeoutConf;
    fn to(&self) -> &[To<TimeoutConf>] {
        self.to.as_deref().unwrap_or_default()
    }
}

crate::merge_fields!(TimeoutConf {
    connection_timeout,
    idle_timeout,
    http
});
crate::merge_fields!(HttpTimeouts {
    request_timeout,
    stream_idle_timeout,
    max_stream_duration,
    max_connection_duration,
    request_headers_timeout
});
