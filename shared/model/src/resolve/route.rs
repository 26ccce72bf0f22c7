//! What the MeshHTTPRoutes that apply to a proxy's traffic to one service come to: one list
//! of routes in the order Envoy tries them, each knowing the policies it came from.
//!
//! ```text
//!   routes selecting the proxy, `to` covering the service ──precedence (least specific first)──>
//!   rules keyed by `matches`: equal keys merge their `default` (the more specific wins)
//!   ──one entry per match──> sorted: Exact path, then the longest PathPrefix, then
//!   RegularExpression; then a method; then more headers; then more query parameters
//!   ──> the implicit catch-all (PathPrefix /, to the service) last, unless a rule has that key
//! ```
//!
//! A match that an earlier one covers can never be taken: it is kept, and a warning says why.

use serde::Serialize;

use super::{Policy, ProxyView, Resolved, Source, covers, merge_all, precedence, selects};
use crate::Kind;
use crate::policies::mesh_http_route::{HttpMatch, MeshHttpRouteSpec, PathMatch, PathMatchType, RuleConf};
use crate::policies::mesh_tcp_route::{MeshTcpRouteSpec, TcpRuleConf};
use crate::resolve::Merge;
use crate::targetref::TargetRef;

/// One route: a match and what matched requests get.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    #[serde(rename = "match")]
    pub matches: HttpMatch,
    pub conf: RuleConf,
    /// The MeshHTTPRoutes whose rules made it, in merge order (empty for the catch-all).
    pub origin: Vec<Source>,
}

/// The routes of traffic from a proxy to one service, in the order they are tried.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HttpRoutes {
    pub routes: Vec<HttpRoute>,
    /// Matches that can never be taken, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl HttpRoutes {
    /// The names of the MeshHTTPRoutes behind the route at `index`.
    pub fn names(&self, index: usize) -> impl Iterator<Item = &str> {
        self.routes[index].origin.iter().map(|s| s.name.as_str())
    }
}

/// Every path, as a match with no path means.
fn catch_all() -> Vec<HttpMatch> {
    vec![HttpMatch {
        path: Some(PathMatch {
            match_type: PathMatchType::PathPrefix,
            value: "/".into(),
        }),
        ..HttpMatch::default()
    }]
}

/// The routes `policies` give traffic from `proxy` to `service`, or `None` when no
/// MeshHTTPRoute applies (the service's plain route then stands).
pub fn http_routes(
    policies: &[Policy<MeshHttpRouteSpec>],
    proxy: &ProxyView<'_>,
    service: &str,
) -> Option<HttpRoutes> {
    let mesh = TargetRef::mesh();
    let mut contributions = Vec::new();
    for policy in policies {
        let top = policy.spec.target_ref.as_ref().unwrap_or(&mesh);
        if !selects(top, proxy) {
            continue;
        }
        let mut index = 0;
        for (i, to) in policy.spec.to.iter().enumerate() {
            if !covers(&to.target_ref, service) {
                index += to.rules.len();
                continue;
            }
            for (j, rule) in to.rules.iter().enumerate() {
                let place = (i, j);
                contributions.push((
                    precedence(policy, top, Some(&to.target_ref), index),
                    policy,
                    place,
                    rule,
                ));
                index += 1;
            }
        }
    }
    if contributions.is_empty() {
        return None;
    }
    contributions.sort_by(|a, b| a.0.cmp(&b.0));
    let mut warnings = Vec::new();
    // Rules keyed by their matches, in the order first seen (least specific policy first).
    let mut keyed: Vec<Keyed> = Vec::new();
    for (_, policy, place, rule) in contributions {
        let source = Source {
            kind: Kind::MeshHTTPRoute,
            name: policy.name.clone(),
        };
        match keyed.iter_mut().find(|k| k.0 == rule.matches) {
            Some((_, conf, origin, first)) => {
                if first.0 == policy.name {
                    warnings.push(format!(
                        "{}: to[{}].rules[{}] has the same matches as to[{}].rules[{}]: its conf is merged over that rule's",
                        policy.name, place.0, place.1, first.1.0, first.1.1
                    ));
                }
                conf.merge(&rule.default);
                origin.retain(|s| s.name != policy.name);
                origin.push(source);
            }
            None => keyed.push((
                rule.matches.clone(),
                rule.default.clone(),
                vec![source],
                (policy.name.clone(), place),
            )),
        }
    }
    let implicit = !keyed.iter().any(|k| k.0 == catch_all());
    let mut routes: Vec<HttpRoute> = keyed
        .into_iter()
        .flat_map(|(matches, conf, origin, _)| {
            matches.into_iter().map(move |m| HttpRoute {
                matches: m,
                conf: conf.clone(),
                origin: origin.clone(),
            })
        })
        .collect();
    routes.sort_by_key(|r| std::cmp::Reverse(specificity(&r.matches)));
    if implicit {
        routes.extend(catch_all().into_iter().map(|m| HttpRoute {
            matches: m,
            conf: RuleConf::default(),
            origin: Vec::new(),
        }));
    }
    for (j, later) in routes.iter().enumerate() {
        if let Some(i) = routes[..j]
            .iter()
            .position(|earlier| takes_all_of(&earlier.matches, &later.matches))
        {
            let by = |r: &HttpRoute| {
                r.origin
                    .last()
                    .map_or_else(|| "the catch-all route".to_owned(), |s| s.name.clone())
            };
            warnings.push(format!(
                "route {j} ({}, from {}) can never be reached: route {i} ({}, from {}) takes every request it matches",
                describe(&later.matches),
                by(later),
                describe(&routes[i].matches),
                by(&routes[i]),
            ));
        }
    }
    Some(HttpRoutes { routes, warnings })
}

/// A rule by its matches: its merged conf, the policies behind it, and where it was first
/// written (policy, `to` and rule index).
type Keyed = (Vec<HttpMatch>, RuleConf, Vec<Source>, (String, (usize, usize)));

/// Where the MeshTCPRoutes that apply send connections from `proxy` to `service`: their one
/// rule each, merged in precedence order (the most specific wins). `None` when none applies.
pub fn tcp_route(
    policies: &[Policy<MeshTcpRouteSpec>],
    proxy: &ProxyView<'_>,
    service: &str,
) -> Option<Resolved<TcpRuleConf>> {
    let mesh = TargetRef::mesh();
    let mut contributions = Vec::new();
    for policy in policies {
        let top = policy.spec.target_ref.as_ref().unwrap_or(&mesh);
        if !selects(top, proxy) {
            continue;
        }
        for (i, to) in policy.spec.to.iter().enumerate() {
            if covers(&to.target_ref, service)
                && let Some(rule) = to.rules.first()
            {
                contributions.push((
                    precedence(policy, top, Some(&to.target_ref), i),
                    policy.name.as_str(),
                    &rule.default,
                ));
            }
        }
    }
    merge_all(Kind::MeshTCPRoute, contributions)
}

/// How specific a match is: the greater is tried first.
fn specificity(m: &HttpMatch) -> (u8, usize, bool, usize, usize) {
    let (rank, len) = match &m.path {
        Some(p) => match p.match_type {
            PathMatchType::Exact => (3, p.value.len()),
            PathMatchType::PathPrefix => (2, p.value.len()),
            PathMatchType::RegularExpression => (1, p.value.len()),
        },
        // No path is every path: PathPrefix /.
        None => (2, 1),
    };
    (
        rank,
        len,
        m.method.is_some(),
        m.headers.as_ref().map_or(0, Vec::len),
        m.query_params.as_ref().map_or(0, Vec::len),
    )
}

/// Whether every request `later` matches is matched by `earlier` too.
fn takes_all_of(earlier: &HttpMatch, later: &HttpMatch) -> bool {
    let path = match (&earlier.path, &later.path) {
        (None, _) => true,
        (Some(a), b) => match a.match_type {
            PathMatchType::PathPrefix if a.value == "/" => true,
            PathMatchType::PathPrefix => b.as_ref().is_some_and(|b| {
                b.match_type != PathMatchType::RegularExpression
                    && (b.value == a.value || b.value.starts_with(&format!("{}/", a.value)))
            }),
            _ => b.as_ref() == Some(a),
        },
    };
    let method = earlier.method.is_none() || earlier.method == later.method;
    let headers = earlier
        .headers
        .iter()
        .flatten()
        .all(|h| later.headers.iter().flatten().any(|l| l == h));
    let query = earlier
        .query_params
        .iter()
        .flatten()
        .all(|q| later.query_params.iter().flatten().any(|l| l == q));
    path && method && headers && query
}

/// A match in a few words, for warnings.
fn describe(m: &HttpMatch) -> String {
    let mut parts = Vec::new();
    match &m.path {
        Some(p) => parts.push(format!("path {:?} {}", p.match_type, p.value)),
        None => parts.push("any path".to_owned()),
    }
    if let Some(method) = m.method {
        parts.push(method.as_str().to_owned());
    }
    for h in m.headers.iter().flatten() {
        parts.push(format!("header {}", h.name));
    }
    for q in m.query_params.iter().flatten() {
        parts.push(format!("query {}", q.name));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::dataplane::DataplaneSpec;
    use std::collections::BTreeMap;

    fn routes(yaml: &[&str], service: &str) -> Option<HttpRoutes> {
        let policies: Vec<Policy<MeshHttpRouteSpec>> = yaml
            .iter()
            .map(|y| {
                let r = crate::parse_one(y, crate::Format::Yaml).expect("route").resource;
                let crate::Spec::MeshHTTPRoute(spec) = &r.spec else {
                    panic!("kind")
                };
                Policy::new(&r, spec)
            })
            .collect();
        let dp: DataplaneSpec = serde_json::from_value(serde_json::json!({
            "networking": {"address": "127.0.0.1", "inbound": [{"port": 1, "tags": {"kuma.io/service": "web"}}]}
        }))
        .expect("dp");
        let labels = BTreeMap::new();
        let view = ProxyView {
            name: "web-1",
            labels: &labels,
            dataplane: &dp,
        };
        http_routes(&policies, &view, service)
    }

    const HEADER: &str = "type: MeshHTTPRoute\nname: by-header\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: backend}\n    rules:\n    - matches:\n      - headers: [{type: Exact, name: x-version, value: v2}]\n      default:\n        backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v2}}]\n";
    const PREFIXES: &str = "type: MeshHTTPRoute\nname: prefixes\nspec:\n  targetRef: {kind: MeshService, name: web}\n  to:\n  - targetRef: {kind: MeshService, name: backend}\n    rules:\n    - matches: [{path: {type: PathPrefix, value: /api}}]\n      default: {backendRefs: [{kind: MeshService, name: api}]}\n    - matches: [{path: {type: Exact, value: /api/health}}, {path: {type: PathPrefix, value: /api/v1}}]\n      default: {backendRefs: [{kind: MeshService, name: v1}]}\n    - matches: [{path: {type: PathPrefix, value: /api/v1/x}, method: GET}]\n      default: {}\n";

    #[test]
    fn no_route_no_rules_and_other_services_untouched() {
        assert_eq!(routes(&[HEADER], "other"), None);
        let r = routes(&[HEADER], "backend").expect("routes");
        assert_eq!(r.routes.len(), 2);
        assert!(r.routes[0].matches.headers.is_some());
        assert_eq!(r.routes[1].matches, catch_all()[0], "the catch-all comes last");
        assert!(r.routes[1].origin.is_empty());
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    #[test]
    fn exact_then_longest_prefix_first() {
        let r = routes(&[PREFIXES], "backend").expect("routes");
        let order: Vec<String> = r.routes.iter().map(|r| describe(&r.matches)).collect();
        assert_eq!(
            order,
            [
                "path Exact /api/health",
                "path PathPrefix /api/v1/x, GET",
                "path PathPrefix /api/v1",
                "path PathPrefix /api",
                "path PathPrefix /",
            ]
        );
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    #[test]
    fn equal_matches_merge_the_more_specific_policy_winning() {
        let general = "type: MeshHTTPRoute\nname: general\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: backend}\n    rules:\n    - matches: [{path: {type: PathPrefix, value: /api}}]\n      default:\n        filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: a}]}}]\n        backendRefs: [{kind: MeshService, name: general}]\n";
        let r = routes(&[PREFIXES, general], "backend").expect("routes");
        let api = r
            .routes
            .iter()
            .find(|r| describe(&r.matches) == "path PathPrefix /api")
            .expect("/api");
        let names: Vec<&str> = api.origin.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["general", "prefixes"], "MeshService top-level beats Mesh");
        assert_eq!(api.conf.backend_refs.as_ref().expect("refs")[0].name, "api");
        assert!(
            api.conf.filters.is_some(),
            "the general route's filters stay: the specific one set none"
        );
    }

    #[test]
    fn a_covered_match_is_warned_about() {
        let shadow = "type: MeshHTTPRoute\nname: shadow\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: backend}\n    rules:\n    - matches: [{path: {type: PathPrefix, value: /}}]\n      default: {}\n    - matches: [{path: {type: RegularExpression, value: \"/x.*\"}}]\n      default: {}\n    - matches: [{path: {type: PathPrefix, value: /}}]\n      default: {}\n";
        let r = routes(&[shadow], "backend").expect("routes");
        assert_eq!(r.routes.len(), 2, "no implicit catch-all: the route has one");
        assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("same matches"), "{:?}", r.warnings);
        assert!(
            r.warnings[1].contains("route 1 (path RegularExpression /x.*, from shadow) can never be reached"),
            "{:?}",
            r.warnings
        );
    }
}
