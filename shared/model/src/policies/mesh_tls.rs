//! MeshTLS: for mesh mTLS into the selected proxies' inbounds (`from` with `targetRef: Mesh`,
//! or `rules`), the TLS versions and cipher suites accepted, and the mode: `Strict` (mTLS
//! only) or `Permissive` (plaintext too). The Mesh's own mode is the default.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{From, Rule, validate_inbound_only};
use crate::targetref::TargetRef;
use crate::validate::{Validate, Validator};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshTlsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<From<TlsConf>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<Rule<TlsConf>>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<TlsVersionRange>,
    /// Cipher suites for TLS 1.2 (TLS 1.3's are fixed), in order of preference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ciphers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TlsMode>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsVersionRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<TlsVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<TlsVersion>,
}

/// Kuma's names; `TLSAuto` leaves the choice to Envoy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum TlsVersion {
    #[serde(rename = "TLSAuto")]
    Auto,
    #[serde(rename = "TLS10")]
    Tls10,
    #[serde(rename = "TLS11")]
    Tls11,
    #[serde(rename = "TLS12")]
    Tls12,
    #[serde(rename = "TLS13")]
    Tls13,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TlsMode {
    Strict,
    Permissive,
}

/// The cipher suites Kuma accepts (Envoy's names).
pub const CIPHERS: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305",
];

impl Validate for MeshTlsSpec {
    fn validate(&self, v: &mut Validator) {
        validate_inbound_only(v, &self.target_ref, &self.from, &self.rules);
    }
}

impl Validate for TlsConf {
    fn validate(&self, v: &mut Validator) {
        if self.tls_version.is_none() && self.tls_ciphers.is_none() && self.mode.is_none() {
            v.error("at least one of tlsVersion, tlsCiphers, mode must be set");
        }
        if let Some(TlsVersionRange {
            min: Some(min),
            max: Some(max),
        }) = &self.tls_version
            && *min != TlsVersion::Auto
            && *max != TlsVersion::Auto
            && min > max
        {
            v.error_at(
                "tlsVersion",
                format!("min ({min:?}) must not be above max ({max:?})"),
            );
        }
        for (i, c) in self.tls_ciphers.iter().flatten().enumerate() {
            if !CIPHERS.contains(&c.as_str()) {
                v.field("tlsCiphers", |v| {
                    v.index(i, |v| {
                        v.error(format!("{c:?} is not one of {}", CIPHERS.join(", ")))
                    })
                });
            }
        }
    }
}

impl crate::resolve::Targeted for MeshTlsSpec {
    const KIND: crate::Kind = crate::Kind::MeshTLS;
    fn target_ref(&self) -> Option<&TargetRef> {
        self.target_ref.as_ref()
    }
}

impl crate::resolve::Inbound for MeshTlsSpec {
    type Conf = TlsConf;
    fn from(&self) -> &[From<TlsConf>] {
        self.from.as_deref().unwrap_or_default()
    }
    fn rules(&self) -> &[Rule<TlsConf>] {
        self.rules.as_deref().unwrap_or_default()
    }
}

crate::merge_fields!(TlsConf {
    tls_version,
    tls_ciphers,
    mode
});
crate::merge_fields!(TlsVersionRange { min, max });
crate::merge_by_replacing!(TlsVersion, TlsMode);
