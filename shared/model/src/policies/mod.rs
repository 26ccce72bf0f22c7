//! One module per kind; each holds the spec type and its validation.

pub mod common;
pub mod dataplane;
pub mod legacy;
pub mod mesh;
pub mod mesh_circuit_breaker;
pub mod mesh_fault_injection;
pub mod mesh_health_check;
pub mod mesh_http_route;
pub mod mesh_load_balancing_strategy;
pub mod mesh_rate_limit;
pub mod mesh_retry;
pub mod mesh_tcp_route;
pub mod mesh_timeout;
pub mod mesh_tls;
pub mod mesh_trace;
pub mod mesh_traffic_permission;
pub mod secret;
pub mod traffic_permission;
pub mod virtual_ips;
pub mod zone_ingress;

pub use dataplane::DataplaneSpec;
pub use legacy::{
    CircuitBreakerSpec, FaultInjectionSpec, HealthCheckSpec, RateLimitSpec, RetrySpec, TimeoutSpec,
    TrafficRouteSpec,
};
pub use mesh::MeshSpec;
pub use mesh_circuit_breaker::MeshCircuitBreakerSpec;
pub use mesh_fault_injection::MeshFaultInjectionSpec;
pub use mesh_health_check::MeshHealthCheckSpec;
pub use mesh_http_route::MeshHttpRouteSpec;
pub use mesh_load_balancing_strategy::MeshLoadBalancingStrategySpec;
pub use mesh_rate_limit::MeshRateLimitSpec;
pub use mesh_retry::MeshRetrySpec;
pub use mesh_tcp_route::MeshTcpRouteSpec;
pub use mesh_timeout::MeshTimeoutSpec;
pub use mesh_tls::MeshTlsSpec;
pub use mesh_trace::MeshTraceSpec;
pub use mesh_traffic_permission::MeshTrafficPermissionSpec;
pub use secret::SecretSpec;
pub use traffic_permission::TrafficPermissionSpec;
pub use virtual_ips::VirtualIpsSpec;
pub use zone_ingress::ZoneIngressSpec;
