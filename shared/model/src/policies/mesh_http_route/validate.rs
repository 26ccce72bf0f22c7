//! MeshHTTPRoute's validation: what Envoy would refuse, or what could never work, refused
//! when written, naming the field.

use super::*;
use crate::policies::common::validate_top;
use crate::policies::mesh_retry::HeaderMatchType;
use crate::validate::{Validate, Validator, check_header_name, validate_tag_map};

/// What a top-level targetRef of a route may select (sidecars, as in Kuma).
const TOP: &[TargetRefKind] = &[
    TargetRefKind::Mesh,
    TargetRefKind::MeshSubset,
    TargetRefKind::MeshService,
    TargetRefKind::MeshServiceSubset,
    TargetRefKind::Dataplane,
];

impl Validate for MeshHttpRouteSpec {
    fn validate(&self, v: &mut Validator) {
        validate_top(v, &self.target_ref, TOP);
        if self.to.is_empty() {
            v.error_at(
                "to",
                "must have at least one entry: the service whose traffic is routed",
            );
        }
        v.field("to", |v| {
            for (i, to) in self.to.iter().enumerate() {
                v.index(i, |v| {
                    v.field("targetRef", |v| {
                        to.target_ref.validate_in(v, &[TargetRefKind::MeshService]);
                    });
                    if to.rules.is_empty() {
                        v.error_at("rules", "must have at least one rule");
                    }
                    v.nested("rules", &to.rules);
                });
            }
        });
    }
}

impl Validate for HttpRule {
    fn validate(&self, v: &mut Validator) {
        if self.matches.is_empty() {
            v.error_at(
                "matches",
                "must have at least one match (a rule for every request matches path PathPrefix /)",
            );
        }
        v.nested("matches", &self.matches);
        let prefix_only = self.matches.iter().all(|m| {
            m.path
                .as_ref()
                .is_some_and(|p| p.match_type == PathMatchType::PathPrefix)
        });
        v.field("default", |v| validate_conf(v, &self.default, prefix_only));
    }
}

impl Validate for HttpMatch {
    fn validate(&self, v: &mut Validator) {
        if let Some(path) = &self.path {
            v.field("path", |v| {
                v.field("value", |v| match path.match_type {
                    PathMatchType::Exact | PathMatchType::PathPrefix if !path.value.starts_with('/') => {
                        v.error("must start with /")
                    }
                    PathMatchType::Exact | PathMatchType::PathPrefix if path.value.contains(['?', '#']) => {
                        v.error("must not hold ? or #: a path match is on the path alone, not its query or fragment")
                    }
                    PathMatchType::PathPrefix if path.value.len() > 1 && path.value.ends_with('/') => {
                        v.error("must not end with / (a prefix matches whole segments: /api matches /api and /api/x)")
                    }
                    PathMatchType::RegularExpression => check_regex(v, &path.value),
                    _ => {}
                })
            });
        }
        if let Some(headers) = &self.headers {
            v.field("headers", |v| {
                for (i, h) in headers.iter().enumerate() {
                    v.index(i, |v| {
                        v.field("name", |v| check_header_name(v, &h.name));
                        let kind = h.match_type.unwrap_or(HeaderMatchType::Exact);
                        match (&h.value, kind) {
                            (
                                None,
                                HeaderMatchType::Exact
                                | HeaderMatchType::Prefix
                                | HeaderMatchType::RegularExpression,
                            ) => v.error_at("value", format!("must be set for type {kind:?}")),
                            (Some(_), HeaderMatchType::Present | HeaderMatchType::Absent) => {
                                v.error_at("value", format!("must not be set for type {kind:?}"))
                            }
                            (Some(value), HeaderMatchType::RegularExpression) => {
                                v.field("value", |v| check_regex(v, value))
                            }
                            (Some(value), HeaderMatchType::Prefix) if value.is_empty() => {
                                v.error_at("value", "must not be empty for type Prefix (use Present)")
                            }
                            _ => {}
                        }
                    });
                }
            });
        }
        if let Some(params) = &self.query_params {
            v.field("queryParams", |v| {
                for (i, q) in params.iter().enumerate() {
                    v.index(i, |v| {
                        if q.name.is_empty() {
                            v.error_at("name", "must not be empty");
                        }
                        if q.match_type == QueryMatchType::RegularExpression {
                            v.field("value", |v| check_regex(v, &q.value));
                        }
                    });
                }
            });
        }
    }
}

/// Envoy takes RE2 regexes; what RE2 refuses (look-around, back-references) is refused here
/// too, rather than by every proxy.
pub fn check_regex(v: &mut Validator, pattern: &str) {
    if pattern.is_empty() {
        return v.error("must not be empty");
    }
    if let Err(e) = regex_syntax::Parser::new().parse(pattern) {
        let why = e.to_string();
        let last = why
            .lines()
            .last()
            .unwrap_or("invalid")
            .trim()
            .trim_start_matches("error: ");
        return v.error(format!("is not a valid regular expression: {last}"));
    }
    // RE2's classes are ASCII (as `\w`, `\d` are there): size it as RE2 compiles it.
    let ascii = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern);
    if let Ok(hir) = ascii
        && program_size(&hir) > MAX_PROGRAM_SIZE
    {
        v.error(format!(
            "is too large for Envoy's regex engine (about {} steps, Envoy takes {MAX_PROGRAM_SIZE}): use fewer or smaller counted repeats",
            program_size(&hir)
        ));
    }
}

/// The RE2 program size above which Envoy refuses a regex (its default).
pub const MAX_PROGRAM_SIZE: usize = 100;

/// About how many instructions RE2 compiles `h` to: literals a byte each, classes a range
/// each, a counted repeat its body that many times.
fn program_size(h: &regex_syntax::hir::Hir) -> usize {
    use regex_syntax::hir::{Class, HirKind};
    match h.kind() {
        HirKind::Empty => 0,
        HirKind::Literal(l) => l.0.len(),
        HirKind::Class(Class::Unicode(c)) => c.ranges().len().max(1),
        HirKind::Class(Class::Bytes(c)) => c.ranges().len().max(1),
        HirKind::Look(_) => 1,
        HirKind::Repetition(r) => {
            let body = program_size(&r.sub);
            match r.max {
                Some(max) => body * max as usize + (max - r.min) as usize,
                None => body * (r.min.max(1) as usize) + 1,
            }
        }
        HirKind::Capture(c) => program_size(&c.sub) + 2,
        HirKind::Concat(parts) => parts.iter().map(program_size).sum(),
        HirKind::Alternation(parts) => parts.iter().map(program_size).sum::<usize>() + parts.len() - 1,
    }
}

fn validate_conf(v: &mut Validator, conf: &RuleConf, prefix_only: bool) {
    let filters = conf.filters.as_deref().unwrap_or_default();
    let redirect = filters
        .iter()
        .position(|f| f.filter_type == FilterType::RequestRedirect);
    let rewrite = filters
        .iter()
        .position(|f| f.filter_type == FilterType::UrlRewrite);
    if let (Some(_), Some(i)) = (redirect, rewrite) {
        v.error_at(
            &format!("filters[{i}]"),
            "a rule may not both redirect and rewrite: a redirected request is answered, not forwarded",
        );
    }
    v.field("filters", |v| {
        for (i, f) in filters.iter().enumerate() {
            v.index(i, |v| validate_filter(v, f, prefix_only));
        }
    });
    if let Some(refs) = &conf.backend_refs {
        v.field("backendRefs", |v| validate_backend_refs(v, refs));
    }
}

/// A rule's backends: at least one, and some weight to share out.
pub fn validate_backend_refs(v: &mut Validator, refs: &[BackendRef]) {
    if refs.is_empty() {
        v.error("must not be empty when set: leave it out to send to the to service");
    } else if refs.iter().all(|b| b.weight() == 0) {
        v.error("weights sum to 0: at least one backend needs a weight above 0");
    }
    for (i, b) in refs.iter().enumerate() {
        v.index(i, |v| b.validate(v));
    }
}

fn validate_filter(v: &mut Validator, f: &Filter, prefix_only: bool) {
    use FilterType::*;
    let set = [
        (
            RequestHeaderModifier,
            "requestHeaderModifier",
            f.request_header_modifier.is_some(),
        ),
        (
            ResponseHeaderModifier,
            "responseHeaderModifier",
            f.response_header_modifier.is_some(),
        ),
        (RequestRedirect, "requestRedirect", f.request_redirect.is_some()),
        (UrlRewrite, "urlRewrite", f.url_rewrite.is_some()),
        (RequestMirror, "requestMirror", f.request_mirror.is_some()),
    ];
    for (kind, field, present) in set {
        if kind == f.filter_type && !present {
            v.error_at(field, format!("must be set for type {}", filter_name(kind)));
        }
        if kind != f.filter_type && present {
            v.error_at(
                field,
                format!("must not be set for type {}", filter_name(f.filter_type)),
            );
        }
    }
    for (field, m) in [
        ("requestHeaderModifier", &f.request_header_modifier),
        ("responseHeaderModifier", &f.response_header_modifier),
    ] {
        if let Some(m) = m {
            v.field(field, |v| validate_modifier(v, m));
        }
    }
    if let Some(r) = &f.request_redirect {
        v.field("requestRedirect", |v| {
            if let Some(s) = r.scheme.as_deref().filter(|s| !matches!(*s, "http" | "https")) {
                v.error_at("scheme", format!("must be http or https, got {s:?}"));
            }
            if let Some(code) = r.status_code.filter(|c| ![301, 302, 303, 307, 308].contains(c)) {
                v.error_at(
                    "statusCode",
                    format!("must be one of 301, 302, 303, 307, 308, got {code}"),
                );
            }
            if r.port.is_some_and(|p| p == 0 || p > 65535) {
                v.error_at("port", "must be between 1 and 65535");
            }
            if let Some(h) = &r.hostname {
                v.field("hostname", |v| check_hostname(v, h));
            }
            if let Some(p) = &r.path {
                v.field("path", |v| validate_rewrite(v, p, prefix_only));
            }
        });
    }
    if let Some(r) = &f.url_rewrite {
        v.field("urlRewrite", |v| {
            if r.hostname.is_none() && r.path.is_none() {
                v.error("at least one of hostname, path must be set");
            }
            if let Some(h) = &r.hostname {
                v.field("hostname", |v| check_hostname(v, h));
            }
            if let Some(p) = &r.path {
                v.field("path", |v| validate_rewrite(v, p, prefix_only));
            }
        });
    }
    if let Some(m) = &f.request_mirror {
        v.field("requestMirror", |v| v.nested("backendRef", &m.backend_ref));
    }
}

fn filter_name(t: FilterType) -> &'static str {
    match t {
        FilterType::RequestHeaderModifier => "RequestHeaderModifier",
        FilterType::ResponseHeaderModifier => "ResponseHeaderModifier",
        FilterType::RequestRedirect => "RequestRedirect",
        FilterType::UrlRewrite => "URLRewrite",
        FilterType::RequestMirror => "RequestMirror",
    }
}

fn validate_modifier(v: &mut Validator, m: &HeaderModifier) {
    if m.set.is_none() && m.add.is_none() && m.remove.is_none() {
        v.error("at least one of set, add, remove must be set");
    }
    for (field, list) in [("set", &m.set), ("add", &m.add)] {
        v.field(field, |v| {
            for (i, h) in list.iter().flatten().enumerate() {
                v.index(i, |v| {
                    v.field("name", |v| check_modifiable(v, &h.name));
                    if h.value.contains(['\r', '\n', '\0']) {
                        v.error_at("value", "must not hold CR, LF or NUL");
                    }
                });
            }
        });
    }
    v.field("remove", |v| {
        for (i, name) in m.remove.iter().flatten().enumerate() {
            v.index(i, |v| check_modifiable(v, name));
        }
    });
}

/// A header a route may change: not `Host` (Envoy refuses; URLRewrite's hostname does it).
fn check_modifiable(v: &mut Validator, name: &str) {
    check_header_name(v, name);
    if name.eq_ignore_ascii_case("host") {
        v.error("Host cannot be modified by a header modifier: use a URLRewrite filter's hostname");
    }
}

fn validate_rewrite(v: &mut Validator, p: &PathRewrite, prefix_only: bool) {
    let (field, value, other) = match p.rewrite_type {
        PathRewriteType::ReplaceFullPath => (
            "replaceFullPath",
            &p.replace_full_path,
            ("replacePrefixMatch", &p.replace_prefix_match),
        ),
        PathRewriteType::ReplacePrefixMatch => (
            "replacePrefixMatch",
            &p.replace_prefix_match,
            ("replaceFullPath", &p.replace_full_path),
        ),
    };
    match value {
        None => v.error_at(field, format!("must be set for type {:?}", p.rewrite_type)),
        Some(path) if !path.starts_with('/') => v.error_at(field, "must start with /"),
        Some(_) => {}
    }
    if other.1.is_some() {
        v.error_at(other.0, format!("must not be set for type {:?}", p.rewrite_type));
    }
    if p.rewrite_type == PathRewriteType::ReplacePrefixMatch && !prefix_only {
        v.error_at(
            "type",
            "ReplacePrefixMatch needs every match of the rule to have a path of type PathPrefix: it replaces that prefix",
        );
    }
}

/// A host name (RFC 1123), not an address.
fn check_hostname(v: &mut Validator, host: &str) {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        && host.parse::<std::net::IpAddr>().is_err();
    if !ok {
        v.error(format!(
            "must be a host name (RFC 1123), not an address, got {host:?}"
        ));
    }
}

impl Validate for BackendRef {
    fn validate(&self, v: &mut Validator) {
        if !BACKEND_KINDS.contains(&self.kind) {
            let why = match self.kind {
                TargetRefKind::MeshExternalService | TargetRefKind::MeshMultiZoneService => {
                    format!("{:?} is not supported yet", self.kind)
                }
                other => format!("{other:?} is not a backend"),
            };
            v.error_at(
                "kind",
                format!("{why}; expected MeshService or MeshServiceSubset"),
            );
        }
        if self.name.is_empty() {
            v.error_at("name", "must name the service");
        }
        match (self.kind, &self.tags) {
            (TargetRefKind::MeshServiceSubset, None) => v.error_at(
                "tags",
                "must be set for kind MeshServiceSubset: they pick the instances",
            ),
            (TargetRefKind::MeshService, Some(_)) => v.error_at(
                "tags",
                "must not be set for kind MeshService (use MeshServiceSubset to pick instances by tags)",
            ),
            (_, Some(tags)) => v.field("tags", |v| validate_tag_map(v, tags)),
            _ => {}
        }
    }
}
