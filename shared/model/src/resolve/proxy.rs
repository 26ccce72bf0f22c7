//! A mesh's policies, typed by kind, and what they come to for one proxy.

use std::collections::BTreeMap;

use serde::Serialize;

use super::access::{Access, InboundPermissions, Permissions, ServiceTags};
use super::route::{HttpRoutes, http_routes, tcp_route};
use super::trace::{self, TraceConf};
use super::{Policy, ProxyView, Resolved, outbound};
use crate::extension::Extension;
use crate::policies::dataplane::{Inbound, SERVICE_TAG};
use crate::policies::mesh_circuit_breaker::{BreakerConf, MeshCircuitBreakerSpec};
use crate::policies::mesh_fault_injection::{FaultConf, MeshFaultInjectionSpec};
use crate::policies::mesh_health_check::{HealthCheckConf, MeshHealthCheckSpec};
use crate::policies::mesh_http_route::MeshHttpRouteSpec;
use crate::policies::mesh_load_balancing_strategy::{LbConf, MeshLoadBalancingStrategySpec};
use crate::policies::mesh_rate_limit::{MeshRateLimitSpec, RateLimitConf};
use crate::policies::mesh_retry::{MeshRetrySpec, RetryConf};
use crate::policies::mesh_tcp_route::{MeshTcpRouteSpec, TcpRuleConf};
use crate::policies::mesh_timeout::{MeshTimeoutSpec, TimeoutConf};
use crate::policies::mesh_tls::{MeshTlsSpec, TlsConf};
use crate::policies::mesh_trace::MeshTraceSpec;
use crate::{Kind, Resource, Spec};

/// The policies of one mesh, read once per change, and the service tags permissions resolve
/// against.
#[derive(Clone, Debug, Default)]
pub struct MeshPolicies {
    pub timeouts: Vec<Policy<MeshTimeoutSpec>>,
    pub retries: Vec<Policy<MeshRetrySpec>>,
    pub balancing: Vec<Policy<MeshLoadBalancingStrategySpec>>,
    pub breakers: Vec<Policy<MeshCircuitBreakerSpec>>,
    pub health_checks: Vec<Policy<MeshHealthCheckSpec>>,
    pub traces: Vec<Policy<MeshTraceSpec>>,
    pub http_routes: Vec<Policy<MeshHttpRouteSpec>>,
    pub tcp_routes: Vec<Policy<MeshTcpRouteSpec>>,
    pub faults: Vec<Policy<MeshFaultInjectionSpec>>,
    pub rate_limits: Vec<Policy<MeshRateLimitSpec>>,
    pub tls: Vec<Policy<MeshTlsSpec>>,
    pub permissions: Permissions,
    /// Each service's inbound tag sets, to resolve permissions that select clients by tags.
    pub service_tags: ServiceTags,
    /// Policies of registered kinds ([`crate::extension`]), by kind.
    pub extensions: BTreeMap<Kind, Vec<Policy<Extension>>>,
}

impl MeshPolicies {
    /// The kinds whose policies share a list with `kind`'s: a targetRef kind and the older
    /// kinds converted to it (a TrafficRoute becomes routes of both kinds).
    pub fn group(kind: Kind) -> Vec<Kind> {
        use Kind::*;
        match kind {
            MeshTimeout | Timeout => vec![MeshTimeout, Timeout],
            MeshRetry | Retry => vec![MeshRetry, Retry],
            MeshCircuitBreaker | CircuitBreaker => vec![MeshCircuitBreaker, CircuitBreaker],
            MeshHealthCheck | HealthCheck => vec![MeshHealthCheck, HealthCheck],
            MeshFaultInjection | FaultInjection => vec![MeshFaultInjection, FaultInjection],
            MeshRateLimit | RateLimit => vec![MeshRateLimit, RateLimit],
            MeshHTTPRoute | MeshTCPRoute | TrafficRoute => vec![MeshHTTPRoute, MeshTCPRoute, TrafficRoute],
            other => vec![other],
        }
    }

    /// Forgets every policy of `kind`'s [`MeshPolicies::group`] (what [`MeshPolicies::add`]
    /// took in of it), so that the group can be read again alone.
    pub fn clear(&mut self, kind: Kind) {
        for kind in Self::group(kind) {
            self.clear_one(kind);
        }
    }

    fn clear_one(&mut self, kind: Kind) {
        match kind {
            Kind::MeshTimeout => self.timeouts.clear(),
            Kind::MeshRetry => self.retries.clear(),
            Kind::MeshLoadBalancingStrategy => self.balancing.clear(),
            Kind::MeshCircuitBreaker => self.breakers.clear(),
            Kind::MeshHealthCheck => self.health_checks.clear(),
            Kind::MeshTrace => self.traces.clear(),
            Kind::MeshHTTPRoute => self.http_routes.clear(),
            Kind::MeshTCPRoute => self.tcp_routes.clear(),
            Kind::MeshFaultInjection => self.faults.clear(),
            Kind::MeshRateLimit => self.rate_limits.clear(),
            Kind::MeshTLS => self.tls.clear(),
            Kind::MeshTrafficPermission => self.permissions.mesh.clear(),
            Kind::TrafficPermission => self.permissions.legacy.clear(),
            Kind::Extension(_) => {
                self.extensions.remove(&kind);
            }
            Kind::Dataplane => self.service_tags.clear(),
            _ => {}
        }
    }

    /// Takes in one resource of the mesh: a policy (an older kind as what it converts to; one
    /// that does not convert was refused when written), or a Dataplane (for its service tags).
    pub fn add(&mut self, r: &Resource) {
        match crate::policies::legacy::convert_resource(r) {
            // Named as `meshctl convert` names them.
            Some(converted) => {
                for c in converted.into_iter().flatten() {
                    self.add_spec(&c, &c.spec);
                }
            }
            None => self.add_spec(r, &r.spec),
        }
    }

    fn add_spec(&mut self, r: &Resource, spec: &Spec) {
        match spec {
            Spec::MeshTimeout(s) => self.timeouts.push(Policy::new(r, s)),
            Spec::MeshRetry(s) => self.retries.push(Policy::new(r, s)),
            Spec::MeshLoadBalancingStrategy(s) => self.balancing.push(Policy::new(r, s)),
            Spec::MeshCircuitBreaker(s) => self.breakers.push(Policy::new(r, s)),
            Spec::MeshHealthCheck(s) => self.health_checks.push(Policy::new(r, s)),
            Spec::MeshTrace(s) => self.traces.push(Policy::new(r, s)),
            Spec::MeshHTTPRoute(s) => self.http_routes.push(Policy::new(r, s)),
            Spec::MeshTCPRoute(s) => self.tcp_routes.push(Policy::new(r, s)),
            Spec::MeshFaultInjection(s) => self.faults.push(Policy::new(r, s)),
            Spec::MeshRateLimit(s) => self.rate_limits.push(Policy::new(r, s)),
            Spec::MeshTLS(s) => self.tls.push(Policy::new(r, s)),
            Spec::MeshTrafficPermission(s) => self.permissions.mesh.push(Policy::new(r, s)),
            Spec::TrafficPermission(s) => self.permissions.legacy.push(Policy::new(r, s)),
            Spec::Extension(e) => self
                .extensions
                .entry(Kind::Extension(e.kind))
                .or_default()
                .push(Policy::new(r, e)),
            Spec::Dataplane(dp) => {
                for inbound in dp.networking.inbound.iter().flatten() {
                    if let Some(service) = inbound.tags.get(SERVICE_TAG) {
                        self.service_tags
                            .entry(service.clone())
                            .or_default()
                            .push(inbound.tags.clone());
                    }
                }
            }
            _ => {}
        }
    }

    /// The policies of a registered kind whose spec is `S`, to resolve with the functions of
    /// [`super`] like any built-in kind's.
    pub fn extension<S: Clone + 'static>(&self, kind: Kind) -> Vec<Policy<S>> {
        let policies = self.extensions.get(&kind).into_iter().flatten();
        policies
            .filter_map(|p| {
                Some(Policy {
                    name: p.name.clone(),
                    origin: p.origin,
                    spec: p.spec.get::<S>()?.clone(),
                })
            })
            .collect()
    }

    /// What this mesh's policies come to for `proxy`.
    pub fn for_proxy(&self, proxy: &ProxyView<'_>) -> ProxyPolicy {
        let inbounds = proxy
            .dataplane
            .networking
            .inbound
            .iter()
            .flatten()
            .map(|inbound| InboundPolicy {
                port: inbound.port,
                tags: inbound.tags.clone(),
                access: self.permissions(proxy, inbound).access(),
                timeout: super::inbound(&self.timeouts, proxy, inbound),
                circuit_breaker: super::inbound(&self.breakers, proxy, inbound),
                fault_injection: super::inbound(&self.faults, proxy, inbound),
                rate_limit: super::inbound(&self.rate_limits, proxy, inbound),
                tls: super::inbound(&self.tls, proxy, inbound),
            })
            .collect();
        let outbounds = proxy
            .dataplane
            .networking
            .outbound
            .iter()
            .flatten()
            .filter_map(|o| o.service())
            .map(|service| (service.to_owned(), self.outbound(proxy, service)))
            .collect();
        ProxyPolicy {
            inbounds,
            outbounds,
            trace: self.traced(proxy),
        }
    }

    /// The tracing `proxy` gets.
    pub fn traced(&self, proxy: &ProxyView<'_>) -> Option<Resolved<TraceConf>> {
        trace::select(&self.traces, proxy)
    }

    /// The permissions of `inbound` of `proxy`, to ask about clients.
    pub fn permissions<'a>(&'a self, proxy: &ProxyView<'_>, inbound: &Inbound) -> InboundPermissions<'a> {
        InboundPermissions::new(&self.permissions, &self.service_tags, proxy, inbound)
    }

    /// What applies to traffic from `proxy` to `service`.
    pub fn outbound(&self, proxy: &ProxyView<'_>, service: &str) -> OutboundPolicy {
        OutboundPolicy {
            timeout: outbound(&self.timeouts, proxy, service),
            retry: outbound(&self.retries, proxy, service),
            load_balancing: outbound(&self.balancing, proxy, service),
            circuit_breaker: outbound(&self.breakers, proxy, service),
            health_check: outbound(&self.health_checks, proxy, service),
            http_routes: http_routes(&self.http_routes, proxy, service),
            tcp_route: tcp_route(&self.tcp_routes, proxy, service),
        }
    }
}

/// Everything the mesh's policies say about one proxy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProxyPolicy {
    pub inbounds: Vec<InboundPolicy>,
    /// By destination service.
    pub outbounds: BTreeMap<String, OutboundPolicy>,
    pub trace: Option<Resolved<TraceConf>>,
}

/// What applies to one inbound.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InboundPolicy {
    pub port: u32,
    pub tags: BTreeMap<String, String>,
    /// Who may call it (enforced with mTLS on).
    pub access: Access,
    pub timeout: Option<Resolved<TimeoutConf>>,
    pub circuit_breaker: Option<Resolved<BreakerConf>>,
    pub fault_injection: Option<Resolved<FaultConf>>,
    pub rate_limit: Option<Resolved<RateLimitConf>>,
    pub tls: Option<Resolved<TlsConf>>,
}

/// What applies to traffic to one service, kind by kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundPolicy {
    #[serde(rename = "MeshTimeout", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Resolved<TimeoutConf>>,
    #[serde(rename = "MeshRetry", skip_serializing_if = "Option::is_none")]
    pub retry: Option<Resolved<RetryConf>>,
    #[serde(rename = "MeshLoadBalancingStrategy", skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<Resolved<LbConf>>,
    #[serde(rename = "MeshCircuitBreaker", skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<Resolved<BreakerConf>>,
    #[serde(rename = "MeshHealthCheck", skip_serializing_if = "Option::is_none")]
    pub health_check: Option<Resolved<HealthCheckConf>>,
    /// The routes MeshHTTPRoutes give it, in the order they are tried.
    #[serde(rename = "MeshHTTPRoute", skip_serializing_if = "Option::is_none")]
    pub http_routes: Option<HttpRoutes>,
    /// Where MeshTCPRoutes send its connections (left out where a MeshHTTPRoute routes it).
    #[serde(rename = "MeshTCPRoute", skip_serializing_if = "Option::is_none")]
    pub tcp_route: Option<Resolved<TcpRuleConf>>,
}
