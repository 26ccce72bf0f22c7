//! What translation reads about a mesh: its services and their endpoints, its mTLS settings,
//! its policies (typed) and its Secrets, computed once per change for every proxy of the mesh.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use meridian_model::policies::dataplane::{PROTOCOL_TAG, SERVICE_TAG, speaks_http};
use meridian_model::policies::mesh::MtlsMode;
use meridian_model::resolve::MeshPolicies;
use meridian_model::{Resource, Spec};

use super::crosszone::Zones;

/// One endpoint of a service: a Dataplane's inbound.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceEndpoint {
    pub address: String,
    pub port: u32,
    pub ready: bool,
    /// The inbound's tags (for locality affinity).
    pub tags: BTreeMap<String, String>,
}

/// What the proxies of a mesh need to know about its services.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceInfo {
    /// Shared: every caller's translation reads them, none copies them.
    pub endpoints: Arc<Vec<ServiceEndpoint>>,
    pub http: bool,
    /// Some instance says `kuma.io/protocol: grpc` (MeshRetry's `grpc` section applies).
    pub grpc: bool,
}

/// Dataplane certificates live this long unless the mesh says otherwise (Kuma's default).
pub const DEFAULT_CERT_LIFETIME: StdDuration = StdDuration::from_secs(24 * 3600);

/// A mesh's mTLS settings, from its enabled builtin backend.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsSettings {
    pub backend: String,
    /// Inbounds accept plaintext too (for migration).
    pub permissive: bool,
    pub cert_lifetime: StdDuration,
}

/// What a proxy proves itself with: its certificate and key, and the mesh's root.
#[derive(Clone, Copy, Debug)]
pub struct Identity<'a> {
    pub ca_cert: &'a str,
    pub cert: &'a str,
    pub key: &'a str,
}

/// The parts of a mesh every proxy's translation reads, computed once per change.
#[derive(Default)]
pub struct MeshContext {
    pub mesh: String,
    pub services: BTreeMap<String, ServiceInfo>,
    /// Set when the mesh has mTLS on.
    pub tls: Option<TlsSettings>,
    /// The mesh's policies, typed, and what they resolve against.
    pub policies: MeshPolicies,
    /// Ready instances of each service in other zones, by zone.
    pub remote: BTreeMap<String, BTreeMap<String, u32>>,
    /// The mesh's Secrets, decoded, by name (what policies refer to).
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// The other zones and their ingresses (set by the reconciler).
    pub zones: Zones,
}

impl MeshContext {
    /// Indexes a mesh's Dataplanes and policies.
    pub fn new<'a>(resources: impl IntoIterator<Item = &'a Resource>) -> Self {
        let mut ctx = MeshContext::default();
        for r in resources {
            ctx.policies.add(r);
            match &r.spec {
                Spec::Mesh(mesh) => {
                    ctx.mesh = r.name.clone();
                    ctx.tls = mesh.enabled_ca().map(|ca| TlsSettings {
                        backend: ca.name.clone(),
                        permissive: ca.mode == Some(MtlsMode::Permissive),
                        cert_lifetime: ca
                            .dp_cert
                            .as_ref()
                            .and_then(|c| c.rotation.as_ref())
                            .map_or(DEFAULT_CERT_LIFETIME, |r| r.expiration.as_duration()),
                    });
                }
                Spec::Dataplane(dp) => {
                    let zone = r.key().synced_zone().map(str::to_owned);
                    for inbound in dp.networking.inbound.iter().flatten() {
                        let Some(service) = inbound.tags.get(SERVICE_TAG) else {
                            continue;
                        };
                        let info = ctx.services.entry(service.clone()).or_default();
                        info.http |= speaks_http(&inbound.tags);
                        info.grpc |= inbound.tags.get(PROTOCOL_TAG).is_some_and(|p| p == "grpc");
                        let ready = inbound.health.as_ref().is_none_or(|h| h.ready);
                        if let Some(zone) = &zone {
                            // Another zone's instance: reached through that zone's ingress.
                            if ready {
                                *ctx.remote
                                    .entry(service.clone())
                                    .or_default()
                                    .entry(zone.clone())
                                    .or_default() += 1;
                            }
                            continue;
                        }
                        Arc::make_mut(&mut info.endpoints).push(ServiceEndpoint {
                            address: inbound
                                .address
                                .clone()
                                .unwrap_or_else(|| dp.networking.address.clone()),
                            port: inbound.port,
                            ready,
                            tags: inbound.tags.clone(),
                        });
                    }
                }
                Spec::Secret(secret) => {
                    if let Some(value) = secret.value() {
                        ctx.secrets.insert(r.name.clone(), value);
                    }
                }
                _ => {}
            }
        }
        for info in ctx.services.values_mut() {
            Arc::make_mut(&mut info.endpoints)
                .sort_by(|a, b| (&a.address, a.port).cmp(&(&b.address, b.port)));
        }
        ctx
    }
}
