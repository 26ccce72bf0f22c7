//! xDS metrics: streams held, pushes, ACKs and NACKs.

use std::sync::atomic::AtomicI64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Default)]
pub struct XdsMetrics {
    pub streams: Gauge<i64, AtomicI64>,
    pub pushes: Counter,
    pub acks: Counter,
    pub nacks: Counter,
    pub generations: Counter,
    /// Proxy snapshots regenerated in some resource types only (after a policy change).
    pub partial_generations: Counter,
    /// Proxies whose endpoints were patched in, with no full translation.
    pub endpoint_patches: Counter,
    /// Streams refused for a missing or wrong dataplane token.
    pub refused: Counter,
    /// Proxy certificates issued (first ones and renewals).
    pub certificates: Counter,
}

impl XdsMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "xds_streams",
            "Open xDS streams (connected proxies)",
            m.streams.clone(),
        );
        registry.register("xds_pushes", "xDS responses sent", m.pushes.clone());
        registry.register("xds_acks", "xDS responses accepted by proxies", m.acks.clone());
        registry.register("xds_nacks", "xDS responses rejected by proxies", m.nacks.clone());
        registry.register(
            "xds_refused",
            "xDS streams refused (missing or wrong dataplane token)",
            m.refused.clone(),
        );
        registry.register(
            "xds_generations",
            "Proxy snapshots regenerated",
            m.generations.clone(),
        );
        registry.register(
            "xds_partial_generations",
            "Proxy snapshots regenerated in the resource types a policy change can alter, the rest kept",
            m.partial_generations.clone(),
        );
        registry.register(
            "xds_endpoint_patches",
            "Proxy snapshots whose endpoints were patched in without a full translation",
            m.endpoint_patches.clone(),
        );
        registry.register(
            "xds_certificates_issued",
            "Proxy certificates issued from mesh CAs (first ones and renewals)",
            m.certificates.clone(),
        );
        m
    }
}
