//! MeshFaultInjection: aborts, delays and response bandwidth limits on a proxy's inbound HTTP
//! traffic (`from` with `targetRef: Mesh`, or `rules`), to see how callers cope.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{From, Rule, validate_inbound_only};
use crate::targetref::TargetRef;
use crate::validate::{Validate, Validator};
use crate::values::{GoDuration, Percentage};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshFaultInjectionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<From<FaultConf>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<Rule<FaultConf>>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultConf {
    /// Each entry is one fault filter, applied in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<HttpFault>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_bandwidth: Option<ResponseBandwidth>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Abort {
    pub http_status: u32,
    pub percentage: Percentage,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delay {
    pub value: GoDuration,
    pub percentage: Percentage,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResponseBandwidth {
    /// A rate such as `50kbps`, `10mbps` or `1gbps`.
    pub limit: String,
    pub percentage: Percentage,
}

impl ResponseBandwidth {
    /// The limit in kilobits per second, or why it cannot be read.
    pub fn kbps(&self) -> Result<u64, &'static str> {
        parse_kbps(&self.limit)
    }
}

/// `50kbps`, `10mbps`, `1gbps` (and `bps`, rounded up to 1 kbps) in kilobits per second.
pub fn parse_kbps(text: &str) -> Result<u64, &'static str> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| "expected a number and a unit (bps, kbps, mbps, gbps), as 50kbps")?;
    let kbps = match unit.trim() {
        "bps" => n.div_ceil(1000),
        "kbps" => n,
        "mbps" => n.saturating_mul(1000),
        "gbps" => n.saturating_mul(1_000_000),
        _ => return Err("expected a unit of bps, kbps, mbps or gbps, as 50kbps"),
    };
    if kbps == 0 {
        return Err("must be above 0");
    }
    Ok(kbps)
}

impl Validate for MeshFaultInjectionSpec {
    fn validate(&self, v: &mut Validator) {
        validate_inbound_only(v, &self.target_ref, &self.from, &self.rules);
    }
}

impl Validate for FaultConf {
    fn validate(&self, v: &mut Validator) {
        let Some(http) = &self.http else {
            return v.error_at("http", "must be set: the faults to inject");
        };
        v.field("http", |v| {
            for (i, f) in http.iter().enumerate() {
                v.index(i, |v| {
                    if f.abort.is_none() && f.delay.is_none() && f.response_bandwidth.is_none() {
                        v.error("at least one of abort, delay, responseBandwidth must be set");
                    }
                    if let Some(a) = &f.abort
                        && !(200..600).contains(&a.http_status)
                    {
                        v.error_at(
                            "abort.httpStatus",
                            format!("must be an HTTP status (200-599), got {}", a.http_status),
                        );
                    }
                    if let Some(d) = &f.delay
                        && d.value.as_duration().is_zero()
                    {
                        v.error_at("delay.value", "must be greater than 0");
                    }
                    if let Some(b) = &f.response_bandwidth
                        && let Err(e) = b.kbps()
                    {
                        v.error_at("responseBandwidth.limit", e);
                    }
                });
            }
        });
    }
}

impl crate::resolve::Targeted for MeshFaultInjectionSpec {
    const KIND: crate::Kind = crate::Kind::MeshFaultInjection;
    fn target_ref(&self) -> Option<&TargetRef> {
        self.target_ref.as_ref()
    }
}

impl crate::resolve::Inbound for MeshFaultInjectionSpec {
    type Conf = FaultConf;
    fn from(&self) -> &[From<FaultConf>] {
        self.from.as_deref().unwrap_or_default()
    }
    fn rules(&self) -> &[Rule<FaultConf>] {
        self.rules.as_deref().unwrap_or_default()
    }
}

crate::merge_fields!(FaultConf { http });
