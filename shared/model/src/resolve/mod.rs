//! Which policies apply to a proxy, in which order, and what they come to: typed, for every
//! kind, each value knowing the policies it came from.
//!
//! ```text
//!   policies of a kind ──selects(top targetRef)──> contributions (to / from / rules entries)
//!        ──sort by precedence()──> merge (typed, most specific last) ──> Resolved<Conf>
//!   MeshPolicies::for_proxy ──> ProxyPolicy { inbounds (access), outbounds (per service), trace }
//! ```
//!
//! One precedence for every kind and section (Kuma's order): the top-level targetRef's
//! specificity, then the policy's origin, then the entry's targetRef, then the name (the
//! lexicographically first wins, as in Kuma), then the entry's place in its policy.

pub mod access;
pub mod locality;
mod merge;
pub mod proxy;
pub mod reach;
pub mod route;
pub mod trace;

use std::cmp::Reverse;
use std::collections::BTreeMap;

use serde::Serialize;

pub use merge::Merge;
pub use proxy::{InboundPolicy, MeshPolicies, OutboundPolicy, ProxyPolicy};

use crate::policies::common::{From, Rule, To};
use crate::policies::dataplane::{DataplaneSpec, Inbound as DataplaneInbound, SERVICE_TAG};
use crate::targetref::{ProxyType, TargetRef, TargetRefKind};
use crate::{Kind, Resource, Spec};

/// The label that says where a policy was created (Kuma's).
pub const ORIGIN_LABEL: &str = "kuma.io/origin";

/// What a proxy is, for matching.
#[derive(Clone, Copy, Debug)]
pub struct ProxyView<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub dataplane: &'a DataplaneSpec,
}

impl ProxyView<'_> {
    fn inbound_tags(&self) -> impl Iterator<Item = &BTreeMap<String, String>> {
        self.dataplane
            .networking
            .inbound
            .iter()
            .flatten()
            .map(|i| &i.tags)
    }
}

fn contains_all(have: &BTreeMap<String, String>, want: Option<&BTreeMap<String, String>>) -> bool {
    want.into_iter().flatten().all(|(k, v)| have.get(k) == Some(v))
}

/// Whether a top-level `targetRef` selects `proxy` (a sidecar).
pub fn selects(target: &TargetRef, proxy: &ProxyView<'_>) -> bool {
    use TargetRefKind::*;
    if target
        .proxy_types
        .as_ref()
        .is_some_and(|types| !types.is_empty() && !types.contains(&ProxyType::Sidecar))
    {
        return false;
    }
    match target.kind {
        Mesh => true,
        MeshSubset => proxy
            .inbound_tags()
            .any(|t| contains_all(t, target.tags.as_ref())),
        MeshService => proxy
            .inbound_tags()
            .any(|t| t.get(SERVICE_TAG) == target.name.as_ref()),
        MeshServiceSubset => proxy
            .inbound_tags()
            .any(|t| t.get(SERVICE_TAG) == target.name.as_ref() && contains_all(t, target.tags.as_ref())),
        Dataplane => {
            target.name.as_deref().is_none_or(|n| n == proxy.name)
                && contains_all(proxy.labels, target.labels.as_ref())
        }
        MeshExternalService | MeshMultiZoneService | MeshGateway | MeshHTTPRoute => false,
    }
}

/// Whether a top-level `targetRef` that selects a proxy takes in its inbound `inbound`: all
/// of them, unless a Dataplane's `sectionName` names one (by name, or by port).
pub fn selects_inbound(target: &TargetRef, inbound: &DataplaneInbound) -> bool {
    match &target.section_name {
        None => true,
        Some(section) => {
            inbound.name.as_deref() == Some(section.as_str()) || inbound.port.to_string() == *section
        }
    }
}

/// Whether a `to[].targetRef` covers traffic to `service`.
pub fn covers(target: &TargetRef, service: &str) -> bool {
    match target.kind {
        TargetRefKind::Mesh => true,
        TargetRefKind::MeshService => target.name.as_deref() == Some(service),
        _ => false,
    }
}

/// How specific a targetRef is: the more specific wins where policies overlap. Mesh <
/// MeshSubset < MeshGateway < MeshService < MeshExternalService < MeshMultiZoneService <
/// MeshServiceSubset < MeshHTTPRoute < Dataplane by labels < Dataplane by name; a
/// `sectionName` is more specific than the same reference without one.
pub fn specificity(target: &TargetRef) -> u8 {
    use TargetRefKind::*;
    let kind = match target.kind {
        Mesh => 0,
        MeshSubset => 1,
        MeshGateway => 2,
        MeshService => 3,
        MeshExternalService => 4,
        MeshMultiZoneService => 5,
        MeshServiceSubset => 6,
        MeshHTTPRoute => 7,
        Dataplane if target.name.is_some() => 9,
        Dataplane => 8,
    };
    kind * 2 + u8::from(target.section_name.is_some())
}

/// Where a policy was created: a zone's own policy beats one synced from global, which an
/// unlabelled one sits between (Kuma's `kuma.io/origin`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Global,
    Unlabelled,
    Zone,
}

impl Origin {
    pub fn of(resource: &Resource) -> Self {
        match resource.labels.get(ORIGIN_LABEL).map(String::as_str) {
            Some("global") => Origin::Global,
            Some("zone") => Origin::Zone,
            _ => Origin::Unlabelled,
        }
    }
}

/// A policy of one kind, read once when its mesh changes.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy<S> {
    pub name: String,
    pub origin: Origin,
    pub spec: S,
}

impl<S: Clone> Policy<S> {
    pub fn new(resource: &Resource, spec: &S) -> Self {
        Self {
            name: resource.name.clone(),
            origin: Origin::of(resource),
            spec: spec.clone(),
        }
    }
}

/// Where one contribution stands among those of its kind: the greatest wins.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    top: u8,
    origin: Origin,
    entry: u8,
    name: Reverse<String>,
    index: usize,
}

/// The one ordering of contributions, for every kind and for `to`, `from` and `rules` alike.
/// `entry` is the `to`/`from` entry's targetRef (`None` for `rules` and single-conf kinds),
/// `index` its place in the policy (a later entry of one policy wins).
pub fn precedence<S>(
    policy: &Policy<S>,
    top: &TargetRef,
    entry: Option<&TargetRef>,
    index: usize,
) -> Precedence {
    Precedence {
        top: specificity(top),
        origin: policy.origin,
        entry: entry.map_or(0, specificity),
        name: Reverse(policy.name.clone()),
        index,
    }
}

/// The top-level targetRef of a policy of a targetRef kind (`Mesh` when it names none), or
/// `None` for kinds that have none (Kuma's older kinds, which apply mesh-wide).
pub fn top_target(spec: &Spec) -> Option<TargetRef> {
    let target = match spec {
        Spec::MeshTrafficPermission(s) => &s.target_ref,
        Spec::MeshTrace(s) => &s.target_ref,
        Spec::MeshLoadBalancingStrategy(s) => &s.target_ref,
        Spec::MeshHealthCheck(s) => &s.target_ref,
        Spec::MeshCircuitBreaker(s) => &s.target_ref,
        Spec::MeshRetry(s) => &s.target_ref,
        Spec::MeshTimeout(s) => &s.target_ref,
        Spec::MeshHTTPRoute(s) => &s.target_ref,
        Spec::MeshTCPRoute(s) => &s.target_ref,
        Spec::MeshFaultInjection(s) => &s.target_ref,
        Spec::MeshRateLimit(s) => &s.target_ref,
        Spec::MeshTLS(s) => &s.target_ref,
        Spec::Extension(e) => return Some(e.spec.target_ref().cloned().unwrap_or_else(TargetRef::mesh)),
        _ => return None,
    };
    Some(target.clone().unwrap_or_else(TargetRef::mesh))
}

/// Whether a policy selects `proxy`; `None` for kinds that are not policies.
pub fn affects(spec: &Spec, proxy: &ProxyView<'_>) -> Option<bool> {
    // An older kind selects what the policies it converts to select.
    if let Some(converted) = crate::policies::legacy::converted(spec) {
        let converted = converted.unwrap_or_default();
        return Some(converted.iter().any(|c| affects(&c.spec, proxy) == Some(true)));
    }
    if let Spec::TrafficPermission(tp) = spec {
        let mut tags = proxy.inbound_tags();
        return Some(tags.any(|t| tp.destinations.iter().any(|d| access::selector_matches(d, t))));
    }
    top_target(spec).map(|t| selects(&t, proxy))
}

/// A policy kind with a top-level `targetRef`.
pub trait Targeted {
    const KIND: Kind;
    /// The top-level `targetRef` (`None` stands for `Mesh`).
    fn target_ref(&self) -> Option<&TargetRef>;
}

/// A policy kind that configures outbound traffic (`to`).
pub trait Outbound: Targeted {
    type Conf: Merge + Clone + Serialize;
    fn to(&self) -> &[To<Self::Conf>];
}

/// A policy kind that configures inbound traffic from every client (`from` entries whose
/// `targetRef` is `Mesh`, and `rules`): MeshTimeout and MeshCircuitBreaker.
pub trait Inbound: Targeted {
    type Conf: Merge + Clone + Serialize;
    fn from(&self) -> &[From<Self::Conf>];
    fn rules(&self) -> &[Rule<Self::Conf>];
}

/// A policy a value came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Source {
    #[serde(rename = "type")]
    pub kind: Kind,
    pub name: String,
}

/// A resolved value and the policies that made it, in merge order (the last won).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Resolved<T> {
    pub conf: T,
    pub origin: Vec<Source>,
}

impl<T> Resolved<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Resolved<U> {
        Resolved {
            conf: f(self.conf),
            origin: self.origin,
        }
    }
}

/// Merges contributions in precedence order, the most specific last.
pub fn merge_all<'a, T: Merge + Clone + 'a>(
    kind: Kind,
    mut contributions: Vec<(Precedence, &'a str, &'a T)>,
) -> Option<Resolved<T>> {
    contributions.sort_by(|a, b| a.0.cmp(&b.0));
    let mut iter = contributions.into_iter();
    let (_, name, first) = iter.next()?;
    let mut conf = first.clone();
    let mut origin = vec![Source {
        kind,
        name: name.to_owned(),
    }];
    for (_, name, next) in iter {
        conf.merge(next);
        origin.retain(|s| s.name != name);
        origin.push(Source {
            kind,
            name: name.to_owned(),
        });
    }
    Some(Resolved { conf, origin })
}

/// The merged `default` of every `to` entry of `policies` that applies to traffic from
/// `proxy` to `service`, or `None` when none does.
pub fn outbound<S: Outbound>(
    policies: &[Policy<S>],
    proxy: &ProxyView<'_>,
    service: &str,
) -> Option<Resolved<S::Conf>> {
    let mesh = TargetRef::mesh();
    let mut contributions = Vec::new();
    for policy in policies {
        let top = policy.spec.target_ref().unwrap_or(&mesh);
        if !selects(top, proxy) {
            continue;
        }
        for (i, entry) in policy.spec.to().iter().enumerate() {
            if covers(&entry.target_ref, service) {
                contributions.push((
                    precedence(policy, top, Some(&entry.target_ref), i),
                    policy.name.as_str(),
                    &entry.default,
                ));
            }
        }
    }
    merge_all(S::KIND, contributions)
}

/// Whether any of `policies` names a MeshHTTPRoute, top-level or in `to`: only then may a
/// route's conf differ from its service's.
pub fn names_routes<S: Outbound>(policies: &[Policy<S>]) -> bool {
    policies.iter().any(|p| {
        p.spec
            .target_ref()
            .is_some_and(|t| t.kind == TargetRefKind::MeshHTTPRoute)
            || p.spec
                .to()
                .iter()
                .any(|e| e.target_ref.kind == TargetRefKind::MeshHTTPRoute)
    })
}

/// What [`outbound`] gives traffic from `proxy` to `service` that takes a route made by the
/// MeshHTTPRoutes `routes`: beyond the service's conf, that of policies whose top-level
/// targetRef names one of them (their `to` entries apply to its traffic), and of `to`
/// entries naming one of them (in policies selecting the proxy). A route is more specific
/// than a service, so its conf wins.
pub fn outbound_route<S: Outbound>(
    policies: &[Policy<S>],
    proxy: &ProxyView<'_>,
    service: &str,
    routes: &[String],
) -> Option<Resolved<S::Conf>> {
    let mesh = TargetRef::mesh();
    let named = |t: &TargetRef| t.name.as_ref().is_some_and(|n| routes.contains(n));
    let mut contributions = Vec::new();
    for policy in policies {
        let top = policy.spec.target_ref().unwrap_or(&mesh);
        // A route applies to this traffic only where it selected the proxy.
        let on_route = top.kind == TargetRefKind::MeshHTTPRoute;
        if (on_route && !named(top)) || (!on_route && !selects(top, proxy)) {
            continue;
        }
        for (i, entry) in policy.spec.to().iter().enumerate() {
            let applies = match entry.target_ref.kind {
                TargetRefKind::MeshHTTPRoute => !on_route && named(&entry.target_ref),
                _ => covers(&entry.target_ref, service),
            };
            if applies {
                contributions.push((
                    precedence(policy, top, Some(&entry.target_ref), i),
                    policy.name.as_str(),
                    &entry.default,
                ));
            }
        }
    }
    merge_all(S::KIND, contributions)
}

/// The merged conf of every `from` (for all clients) and `rules` entry of `policies` that
/// applies to traffic into `inbound` of `proxy`, or `None` when none does.
pub fn inbound<S: Inbound>(
    policies: &[Policy<S>],
    proxy: &ProxyView<'_>,
    inbound: &DataplaneInbound,
) -> Option<Resolved<S::Conf>> {
    let mesh = TargetRef::mesh();
    let mut contributions = Vec::new();
    for policy in policies {
        let top = policy.spec.target_ref().unwrap_or(&mesh);
        if !selects(top, proxy) || !selects_inbound(top, inbound) {
            continue;
        }
        let from = policy.spec.from();
        for (i, entry) in from.iter().enumerate() {
            if entry.target_ref.kind == TargetRefKind::Mesh {
                contributions.push((
                    precedence(policy, top, Some(&entry.target_ref), i),
                    policy.name.as_str(),
                    &entry.default,
                ));
            }
        }
        for (i, rule) in policy.spec.rules().iter().enumerate() {
            contributions.push((
                precedence(policy, top, None, from.len() + i),
                policy.name.as_str(),
                &rule.default,
            ));
        }
    }
    merge_all(S::KIND, contributions)
}

#[cfg(test)]
mod tests;
