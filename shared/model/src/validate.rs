//! Semantic validation with field paths.
//!
//! Serde rejects unknown fields and wrong types while decoding; what is left (ranges, required
//! combinations, references) is checked here by walking the spec with a [`Validator`], which
//! keeps the path so that every error names its field.

use std::collections::BTreeMap;

use crate::FieldError;

/// Implemented by every spec type and the pieces it is made of.
pub trait Validate {
    fn validate(&self, v: &mut Validator);
}

impl<T: Validate> Validate for Option<T> {
    fn validate(&self, v: &mut Validator) {
        if let Some(inner) = self {
            inner.validate(v);
        }
    }
}

impl<T: Validate> Validate for Vec<T> {
    fn validate(&self, v: &mut Validator) {
        for (i, item) in self.iter().enumerate() {
            v.index(i, |v| item.validate(v));
        }
    }
}

#[derive(Clone, Debug)]
enum Segment {
    Field(String),
    Index(usize),
}

/// Collects every error together with the path of the field it belongs to.
#[derive(Debug, Default)]
pub struct Validator {
    path: Vec<Segment>,
    errors: Vec<FieldError>,
}

impl Validator {
    /// A validator whose paths start at `root` (`"spec"`, or `""` for the top level).
    pub fn new(root: &str) -> Self {
        let mut v = Self::default();
        if !root.is_empty() {
            v.path.push(Segment::Field(root.to_owned()));
        }
        v
    }

    /// Runs `f` with `field` appended to the path.
    pub fn field<R>(&mut self, field: &str, f: impl FnOnce(&mut Self) -> R) -> R {
        self.path.push(Segment::Field(field.to_owned()));
        let r = f(self);
        self.path.pop();
        r
    }

    /// Runs `f` with `[index]` appended to the path.
    pub fn index<R>(&mut self, index: usize, f: impl FnOnce(&mut Self) -> R) -> R {
        self.path.push(Segment::Index(index));
        let r = f(self);
        self.path.pop();
        r
    }

    /// Validates a nested value under `field`.
    pub fn nested(&mut self, field: &str, value: &impl Validate) {
        self.field(field, |v| value.validate(v));
    }

    /// Records an error for the current path.
    pub fn error(&mut self, message: impl Into<String>) {
        let field = self.path_string();
        self.errors.push(FieldError::new(field, message));
    }

    /// Records an error for `field` under the current path.
    pub fn error_at(&mut self, field: &str, message: impl Into<String>) {
        self.field(field, |v| v.error(message));
    }

    /// Records an error for a required field that is missing.
    pub fn required<T>(&mut self, field: &str, value: &Option<T>) {
        if value.is_none() {
            self.error_at(field, "must be set");
        }
    }

    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn finish(self) -> Vec<FieldError> {
        self.errors
    }

    pub fn path_string(&self) -> String {
        render_path(&self.path)
    }
}

fn render_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Field(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            Segment::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// Joins a root and a relative path as produced by serde_path_to_error (`to[0].default`).
pub(crate) fn join_path(root: &str, rest: &str) -> String {
    match (root.is_empty(), rest.is_empty() || rest == ".") {
        (_, true) => root.to_owned(),
        (true, false) => rest.to_owned(),
        (false, false) if rest.starts_with('[') => format!("{root}{rest}"),
        (false, false) => format!("{root}.{rest}"),
    }
}

/// Checks a name against RFC 1123's label rule, as Kubernetes does for most names.
pub fn dns1123_label(name: &str) -> Result<(), String> {
    const HINT: &str = "must be a DNS-1123 label: at most 63 lowercase letters, digits or '-', starting and ending with a letter or digit";
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok { Ok(()) } else { Err(HINT.to_owned()) }
}

/// Checks a DNS-1123 subdomain (dot-separated labels, at most 253 characters).
pub fn dns1123_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 || name.split('.').any(|l| dns1123_label(l).is_err()) {
        Err("must be a DNS-1123 subdomain: dot-separated lowercase labels, at most 253 characters".to_owned())
    } else {
        Ok(())
    }
}

/// Validates a label or tag map the way Kubernetes validates labels: keys are an optional
/// DNS subdomain prefix and `/`, then a name of at most 63 characters; values are at most 63
/// characters of letters, digits, `-`, `_` and `.`.
pub fn validate_labels(v: &mut Validator, labels: &BTreeMap<String, String>) {
    for (key, value) in labels {
        v.field(key, |v| {
            if let Err(e) = label_key(key) {
                v.error(format!("invalid key: {e}"));
            }
            if let Err(e) = label_value(value) {
                v.error(format!("invalid value {value:?}: {e}"));
            }
        });
    }
}

fn label_name(name: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    !name.is_empty()
        && name.len() <= 63
        && alnum(name.chars().next())
        && alnum(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        dns1123_subdomain(prefix).map_err(|e| format!("prefix {e}"))?;
    }
    if label_name(name) {
        Ok(())
    } else {
        Err("name part must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit".to_owned())
    }
}

fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || label_name(value) {
        Ok(())
    } else {
        Err(
            "must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
                .to_owned(),
        )
    }
}

/// Validates tags (a Dataplane's, a selector's): keys as label keys, values as Kuma takes
/// them (letters, digits, `.`, `-`, `_`, `:` and `/`, not empty).
pub fn validate_tag_map(v: &mut Validator, tags: &BTreeMap<String, String>) {
    for (key, value) in tags {
        v.field(key, |v| {
            if let Err(e) = label_key(key) {
                v.error(format!("invalid key: {e}"));
            }
            let ok = !value.is_empty()
                && value.len() <= 253
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '/'));
            if !ok {
                v.error(format!(
                    "invalid value {value:?}: must be letters, digits, '.', '-', '_', ':' or '/' (at most 253)"
                ));
            }
        });
    }
}

/// Header names are HTTP tokens.
pub fn check_header_name(v: &mut Validator, name: &str) {
    let token = !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        v.error(format!("{name:?} is not a valid header name"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_like_the_user_wrote_them() {
        let mut v = Validator::new("spec");
        v.field("to", |v| {
            v.index(0, |v| v.error_at("default", "bad"));
        });
        assert_eq!(v.finish(), vec![FieldError::new("spec.to[0].default", "bad")]);
    }

    #[test]
    fn dns1123_labels() {
        assert!(dns1123_label("reg-server-1").is_ok());
        for bad in ["", "Upper", "-lead", "trail-", "has.dot", &"a".repeat(64)] {
            assert!(dns1123_label(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn label_keys_and_values() {
        assert!(label_key("kuma.io/service").is_ok());
        assert!(label_key("app").is_ok());
        assert!(label_key("Bad Key").is_err());
        assert!(label_value("reg-server_v1.2").is_ok());
        assert!(label_value("").is_ok());
        assert!(label_value("a b").is_err());
    }

    #[test]
    fn join_paths() {
        assert_eq!(join_path("spec", "."), "spec");
        assert_eq!(join_path("spec", "to[0].x"), "spec.to[0].x");
        assert_eq!(join_path("", "networking.address"), "networking.address");
        assert_eq!(join_path("spec", "[1]"), "spec[1]");
    }
}
