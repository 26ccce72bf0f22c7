//! MeshHTTPRoute on HTTP outbounds: the resolved routes (see
//! [`meridian_model::resolve::route`]) replace the outbound's one route, in the order they are
//! tried. Each becomes an Envoy route: its match (path, method, headers, query parameters), its
//! header modifiers, and either a redirect or an action to its backends (one cluster, or
//! weighted clusters), with its rewrites and mirrors. A backend that is a subset gets a cluster
//! of its own, whose endpoints are the service's instances with its tags. Runs first, so that
//! the plugins after it shape every route and cluster it makes.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, RuntimeFractionalPercent};
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HostRewriteSpecifier, RequestMirrorPolicy,
};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RedirectAction, Route, RouteAction, RouteMatch, WeightedCluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatchAndSubstitute, RegexMatcher, StringMatcher};
use envoy_types::pb::google::protobuf::UInt32Value;
use meridian_model::Kind;
use meridian_model::policies::mesh_http_route::{
    BackendRef, FilterType, HeaderModifier, HttpMatch, PathMatchType, PathRewrite, PathRewriteType,
    QueryMatchType, RuleConf,
};
use meridian_model::resolve::route::{HttpRoute, http_routes};

use super::{Generated, OutboundResources, PolicyPlugin, ProxyInput};
use crate::xds::cache::{CLUSTER, ENDPOINT, ROUTE, Types};
use crate::xds::crosszone::tagged;
use crate::xds::translate::{fractional, upstream};

pub struct Plugin;

impl PolicyPlugin for Plugin {
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::MeshHTTPRoute]
    }

    fn shapes(&self) -> Types {
        Types::of(&[CLUSTER, ENDPOINT, ROUTE])
    }

    fn apply(&self, input: &ProxyInput<'_>, generated: &mut Generated) {
        let policies = &input.ctx.policies.http_routes;
        if policies.is_empty() {
            return;
        }
        for o in &mut generated.outbounds {
            if o.route.is_none() {
                continue;
            }
            let Some(resolved) = http_routes(policies, &input.view, &o.service) else {
                continue;
            };
            let routes: Vec<Route> = resolved.routes.iter().map(|r| envoy_route(input, o, r)).collect();
            if let Some(vh) = o.route.as_mut().and_then(|r| r.virtual_hosts.first_mut()) {
                vh.routes = routes;
                o.route_origins = resolved
                    .routes
                    .iter()
                    .map(|r| r.origin.iter().map(|s| s.name.clone()).collect())
                    .collect();
            }
        }
    }
}

/// One resolved route as Envoy's, adding the clusters its backends need to the outbound.
fn envoy_route(input: &ProxyInput<'_>, o: &mut OutboundResources, r: &HttpRoute) -> Route {
    let conf = &r.conf;
    let filters = conf.filters.as_deref().unwrap_or_default();
    let of = |t: FilterType| filters.iter().filter(move |f| f.filter_type == t);
    let mut route = Route {
        name: r
            .origin
            .last()
            .map_or_else(|| o.service.clone(), |s| s.name.clone()),
        r#match: Some(route_match(&r.matches)),
        ..Default::default()
    };
    for m in of(FilterType::RequestHeaderModifier).filter_map(|f| f.request_header_modifier.as_ref()) {
        let (add, remove) = modifier(m);
        route.request_headers_to_add.extend(add);
        route.request_headers_to_remove.extend(remove);
    }
    for m in of(FilterType::ResponseHeaderModifier).filter_map(|f| f.response_header_modifier.as_ref()) {
        let (add, remove) = modifier(m);
        route.response_headers_to_add.extend(add);
        route.response_headers_to_remove.extend(remove);
    }
    let prefix = r
        .matches
        .path
        .as_ref()
        .filter(|p| p.match_type == PathMatchType::PathPrefix)
        .map(|p| p.value.as_str());
    if let Some(redirect) = of(FilterType::RequestRedirect).find_map(|f| f.request_redirect.as_ref()) {
        let path = redirect.path.as_ref().map(|p| match rewrite(p, prefix) {
            Rewrite::Full(path) => PathRewriteSpecifier::PathRedirect(path),
            Rewrite::Prefix(path) => PathRewriteSpecifier::PrefixRewrite(path),
            Rewrite::Regex(m) => PathRewriteSpecifier::RegexRewrite(m),
        });
        let code = match redirect.status_code.unwrap_or(302) {
            301 => RedirectResponseCode::MovedPermanently,
            303 => RedirectResponseCode::SeeOther,
            307 => RedirectResponseCode::TemporaryRedirect,
            308 => RedirectResponseCode::PermanentRedirect,
            _ => RedirectResponseCode::Found,
        };
        route.action = Some(Action::Redirect(RedirectAction {
            scheme_rewrite_specifier: redirect
                .scheme
                .clone()
                .map(SchemeRewriteSpecifier::SchemeRedirect),
            host_redirect: redirect.hostname.clone().unwrap_or_default(),
            port_redirect: redirect.port.unwrap_or_default(),
            path_rewrite_specifier: path,
            response_code: code as i32,
            ..Default::default()
        }));
        return route;
    }
    let mut action = RouteAction {
        cluster_specifier: Some(backends(input, o, conf)),
        ..Default::default()
    };
    if let Some(rw) = of(FilterType::UrlRewrite).find_map(|f| f.url_rewrite.as_ref()) {
        if let Some(host) = &rw.hostname {
            action.host_rewrite_specifier = Some(HostRewriteSpecifier::HostRewriteLiteral(host.clone()));
        }
        match rw.path.as_ref().map(|p| rewrite(p, prefix)) {
            Some(Rewrite::Prefix(p)) => action.prefix_rewrite = p,
            Some(Rewrite::Full(p)) => {
                action.regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(regex("^.*$")),
                    substitution: p,
                })
            }
            Some(Rewrite::Regex(m)) => action.regex_rewrite = Some(m),
            None => {}
        }
    }
    for mirror in of(FilterType::RequestMirror).filter_map(|f| f.request_mirror.as_ref()) {
        let cluster = cluster_for(input, o, &mirror.backend_ref);
        action.request_mirror_policies.push(RequestMirrorPolicy {
            cluster,
            runtime_fraction: mirror.percentage.map(|p| RuntimeFractionalPercent {
                default_value: Some(fractional(p.value())),
                runtime_key: String::new(),
            }),
            ..Default::default()
        });
    }
    route.action = Some(Action::Route(action));
    route
}

/// Where a rule's requests go: the `to` service, one backend, or several by weight.
pub(super) fn backends(
    input: &ProxyInput<'_>,
    o: &mut OutboundResources,
    conf: &RuleConf,
) -> ClusterSpecifier {
    match weighted(input, o, conf.backend_refs.as_deref()).as_slice() {
        [(one, _)] => ClusterSpecifier::Cluster(one.clone()),
        many => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: many
                .iter()
                .map(|(name, weight)| ClusterWeight {
                    name: name.clone(),
                    weight: Some(UInt32Value { value: *weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    }
}

/// The clusters of a rule's backends that get traffic, with their weights (the `to`
/// service's own cluster when it names none), added to the outbound's upstreams as needed.
pub(super) fn weighted(
    input: &ProxyInput<'_>,
    o: &mut OutboundResources,
    refs: Option<&[BackendRef]>,
) -> Vec<(String, u32)> {
    let live: Vec<&BackendRef> = refs.into_iter().flatten().filter(|b| b.weight() > 0).collect();
    if live.is_empty() {
        return vec![(o.service.clone(), 1)];
    }
    live.into_iter()
        .map(|b| (cluster_for(input, o, b), b.weight()))
        .collect()
}

/// The cluster of a backend, added to the outbound's upstreams when it is not there yet.
fn cluster_for(input: &ProxyInput<'_>, o: &mut OutboundResources, b: &BackendRef) -> String {
    let tags: BTreeMap<String, String> = b.subset();
    let name = tagged(&b.name, &tags);
    if !o.upstreams.iter().any(|u| u.cluster.name == name) {
        o.upstreams.push(upstream(input.ctx, input.tls, &b.name, &tags));
    }
    name
}

fn route_match(m: &HttpMatch) -> RouteMatch {
    let path = match &m.path {
        None => PathSpecifier::Prefix("/".into()),
        Some(p) => match p.match_type {
            PathMatchType::Exact => PathSpecifier::Path(p.value.clone()),
            PathMatchType::PathPrefix if p.value == "/" => PathSpecifier::Prefix("/".into()),
            PathMatchType::PathPrefix => PathSpecifier::PathSeparatedPrefix(p.value.clone()),
            PathMatchType::RegularExpression => PathSpecifier::SafeRegex(regex(&p.value)),
        },
    };
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .flatten()
        .map(super::mesh_retry::header_matcher)
        .collect();
    if let Some(method) = m.method {
        headers.push(HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(
                envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier::StringMatch(
                    exact(method.as_str()),
                ),
            ),
            ..Default::default()
        });
    }
    RouteMatch {
        path_specifier: Some(path),
        headers,
        query_parameters: m
            .query_params
            .iter()
            .flatten()
            .map(|q| QueryParameterMatcher {
                name: q.name.clone(),
                query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(
                    match q.match_type {
                        QueryMatchType::Exact => exact(&q.value),
                        QueryMatchType::RegularExpression => StringMatcher {
                            match_pattern: Some(MatchPattern::SafeRegex(regex(&q.value))),
                            ..Default::default()
                        },
                    },
                )),
            })
            .collect(),
        ..Default::default()
    }
}

fn exact(value: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(MatchPattern::Exact(value.to_owned())),
        ..Default::default()
    }
}

fn regex(pattern: &str) -> RegexMatcher {
    RegexMatcher {
        regex: pattern.to_owned(),
        ..Default::default()
    }
}

/// Header modifications: what to add (set overwrites, add appends) and what to remove.
fn modifier(m: &HeaderModifier) -> (Vec<HeaderValueOption>, Vec<String>) {
    let option = |h: &meridian_model::policies::mesh_http_route::HeaderValue, action: HeaderAppendAction| {
        HeaderValueOption {
            header: Some(HeaderValue {
                key: h.name.clone(),
                // Envoy reads `%...%` in a header value as a variable: a value is a literal.
                value: h.value.replace('%', "%%"),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        }
    };
    let set = m
        .set
        .iter()
        .flatten()
        .map(|h| option(h, HeaderAppendAction::OverwriteIfExistsOrAdd));
    let add = m
        .add
        .iter()
        .flatten()
        .map(|h| option(h, HeaderAppendAction::AppendIfExistsOrAdd));
    (set.chain(add).collect(), m.remove.clone().unwrap_or_default())
}

enum Rewrite {
    Full(String),
    Prefix(String),
    Regex(RegexMatchAndSubstitute),
}

/// A path rewrite against the route's matched prefix (when it has one).
fn rewrite(p: &PathRewrite, prefix: Option<&str>) -> Rewrite {
    match p.rewrite_type {
        PathRewriteType::ReplaceFullPath => Rewrite::Full(p.replace_full_path.clone().unwrap_or_default()),
        PathRewriteType::ReplacePrefixMatch => {
            let to = p.replace_prefix_match.clone().unwrap_or_default();
            // As Gateway API: `/api` to `/` makes `/api/x` `/x`, `/` to `/v2` makes `/x` `/v2/x`,
            // `/api` to `/v2/` makes `/api/x` `/v2/x`: no `//`, no lost `/`.
            match prefix {
                Some("/") => Rewrite::Regex(RegexMatchAndSubstitute {
                    pattern: Some(regex("^/")),
                    substitution: format!("{}/", to.trim_end_matches('/')),
                }),
                Some(from) if to.ends_with('/') => Rewrite::Regex(RegexMatchAndSubstitute {
                    pattern: Some(regex(&format!("^{}/*", escape(from)))),
                    substitution: to,
                }),
                _ => Rewrite::Prefix(to),
            }
        }
    }
}

/// A literal as an RE2 pattern.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(to: &str, from: &str) -> String {
        let p = PathRewrite {
            rewrite_type: PathRewriteType::ReplacePrefixMatch,
            replace_full_path: None,
            replace_prefix_match: Some(to.into()),
        };
        match rewrite(&p, Some(from)) {
            Rewrite::Prefix(to) => format!("prefix {to}"),
            Rewrite::Regex(m) => format!(
                "regex {} -> {}",
                m.pattern.map(|p| p.regex).unwrap_or_default(),
                m.substitution
            ),
            Rewrite::Full(to) => format!("full {to}"),
        }
    }

    #[test]
    fn prefix_rewrites_keep_one_slash_between_segments() {
        assert_eq!(prefix("/v2", "/api"), "prefix /v2");
        assert_eq!(prefix("/", "/api"), "regex ^/api/* -> /");
        assert_eq!(prefix("/v2/", "/api"), "regex ^/api/* -> /v2/");
        assert_eq!(prefix("/v2", "/"), "regex ^/ -> /v2/");
        assert_eq!(prefix("/", "/"), "regex ^/ -> /");
    }
}
