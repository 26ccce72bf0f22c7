//! Secret (in a mesh) and GlobalSecret (beside meshes), in Kuma's shape: `data` is the value,
//! base64. Only admins may read or write them; policies refer to them by name (a MeshTrace
//! header `{secret: NAME}`), so an API key need not be written into a policy.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{Validate, Validator};

/// The largest value a secret holds (decoded).
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// What a redacted value reads as.
pub const REDACTED: &str = "<redacted>";

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretSpec {
    /// The value, base64 (standard alphabet, padded).
    pub data: String,
}

impl std::fmt::Debug for SecretSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretSpec { data: <secret> }")
    }
}

impl SecretSpec {
    /// The value, decoded.
    pub fn value(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(&self.data).ok()
    }
}

impl Validate for SecretSpec {
    fn validate(&self, v: &mut Validator) {
        match self.value() {
            None => v.error_at("data", "must be base64 (e.g. the output of `base64 -w0 FILE`)"),
            Some(value) if value.len() > MAX_SECRET_BYTES => v.error_at(
                "data",
                format!("holds {} bytes; at most {MAX_SECRET_BYTES}", value.len()),
            ),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Format, parse_one};

    #[test]
    fn secrets_parse_in_the_universal_form_and_data_must_be_base64() {
        let s = parse_one(
            "type: Secret\nname: api.key\nmesh: default\ndata: c2VjcmV0\n",
            Format::Yaml,
        )
        .expect("valid");
        let crate::Spec::Secret(spec) = &s.resource.spec else {
            panic!("not a secret")
        };
        assert_eq!(spec.value().as_deref(), Some(&b"secret"[..]));
        assert!(!format!("{s:?}").contains("c2VjcmV0"), "never in Debug output");
        parse_one("type: GlobalSecret\nname: g\ndata: c2VjcmV0\n", Format::Yaml).expect("global");
        let err = parse_one("type: Secret\nname: k\ndata: '***'\n", Format::Yaml).expect_err("not base64");
        assert!(err.to_string().contains("data"), "{err}");
        let err = parse_one(
            "type: GlobalSecret\nname: g\nmesh: default\ndata: c2VjcmV0\n",
            Format::Yaml,
        )
        .expect_err("a global secret has no mesh");
        assert!(err.to_string().contains("mesh"), "{err}");
    }

    #[test]
    fn a_provided_cas_inline_key_is_hidden_from_readers() {
        let mesh = parse_one(
            "type: Mesh\nname: m\nmtls:\n  backends:\n  - name: p\n    type: provided\n    conf:\n      cert: {secret: ca-cert}\n      key: {inlineString: THE-KEY}\n",
            Format::Yaml,
        )
        .expect("valid")
        .resource
        .redacted();
        let shown = mesh.to_universal().to_string();
        assert!(!shown.contains("THE-KEY") && shown.contains("ca-cert"), "{shown}");
    }
}
