//! What translation reads about a mesh: its services and their endpoints, its mTLS settings,
//! its policies (typed) and its Secrets, computed once per change for every proxy of the mesh.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, OnceLock};
use std::time::Duration as StdDuration;

use meridian_model::policies::dataplane::{PROTOCOL_TAG, SERVICE_TAG, speaks_http};
use meridian_model::policies::mesh::MtlsMode;
use meridian_model::resolve::MeshPolicies;
use meridian_model::resolve::reach::Reach;
use meridian_model::{Kind, Resource, Spec};

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

/// The parts of a mesh every proxy's translation reads, computed once per change: in full by
/// [`MeshContext::new`], or part by part ([`MeshContext::set_kind`],
/// [`MeshContext::set_service`]) by the reconciler's index as changes come.
#[derive(Clone, Debug, Default)]
pub struct MeshContext {
    pub mesh: String,
    pub services: BTreeMap<String, ServiceInfo>,
    /// Set when the mesh has mTLS on.
    pub tls: Option<TlsSettings>,
    /// The mesh's policies, typed, and what they resolve against.
    pub policies: MeshPolicies,
    /// Ready instances of each service in other zones, by zone.
    pub remote: BTreeMap<String, BTreeMap<String, u32>>,
    /// The tags of those instances, by service then zone (what a subset counts).
    pub remote_tags: BTreeMap<String, BTreeMap<String, Vec<BTreeMap<String, String>>>>,
    /// The mesh's Secrets, decoded, by name (what policies refer to).
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// The other zones and their ingresses (set by the reconciler).
    pub zones: Zones,
    /// Transparent proxies let traffic to destinations outside the mesh through (the Mesh's
    /// `networking.outbound.passthrough`, on unless it says otherwise).
    pub passthrough: bool,
    /// Each service's virtual IP in this zone (the mesh's VirtualIPs), for transparent proxies.
    pub vips: BTreeMap<String, Ipv4Addr>,
    /// Who may reach which service (with mTLS on), made at first use after a change.
    reach: OnceLock<Arc<Reach>>,
}

/// The services a Dataplane's inbounds serve.
fn served(r: &Resource) -> impl Iterator<Item = &String> {
    let inbounds = match &r.spec {
        Spec::Dataplane(dp) => dp.networking.inbound.as_deref().unwrap_or_default(),
        _ => &[],
    };
    inbounds.iter().filter_map(|i| i.tags.get(SERVICE_TAG))
}

impl MeshContext {
    /// Indexes a mesh's Dataplanes and policies.
    pub fn new<'a>(resources: impl IntoIterator<Item = &'a Resource>) -> Self {
        let mut ctx = MeshContext::default();
        let mut providers: BTreeMap<&String, Vec<&Resource>> = BTreeMap::new();
        for r in resources {
            if r.kind() != Kind::Dataplane {
                ctx.take_in(r);
                continue;
            }
            for service in served(r).collect::<BTreeSet<_>>() {
                providers.entry(service).or_default().push(r);
            }
        }
        for (service, dataplanes) in providers {
            ctx.set_service(service, dataplanes);
        }
        ctx
    }

    /// Recomputes what the mesh's resources of `kind` give it (its settings for the Mesh, its
    /// Secrets, or one kind of policy with the older kinds converted to it, its
    /// [`MeshPolicies::group`]) from every resource of those kinds in it. Dataplanes are
    /// [`MeshContext::set_service`]'s.
    pub fn set_kind<'a>(&mut self, kind: Kind, resources: impl IntoIterator<Item = &'a Resource>) {
        self.reach = OnceLock::new();
        match kind {
            Kind::Dataplane => return,
            Kind::Mesh => {
                self.mesh.clear();
                self.tls = None;
            }
            Kind::Secret => self.secrets.clear(),
            Kind::VirtualIPs => self.vips.clear(),
            _ => self.policies.clear(kind),
        }
        let group = MeshPolicies::group(kind);
        for r in resources.into_iter().filter(|r| group.contains(&r.kind())) {
            self.take_in(r);
        }
    }

    /// Adds what one resource other than a Dataplane gives the mesh.
    fn take_in(&mut self, r: &Resource) {
        match &r.spec {
            Spec::Dataplane(_) => {}
            Spec::Mesh(mesh) => {
                self.mesh = r.name.clone();
                self.passthrough = mesh
                    .networking
                    .as_ref()
                    .and_then(|n| n.outbound.as_ref())
                    .and_then(|o| o.passthrough)
                    .unwrap_or(true);
                self.tls = mesh.enabled_ca().map(|ca| TlsSettings {
                    backend: ca.name.clone(),
                    permissive: ca.mode == Some(MtlsMode::Permissive),
                    cert_lifetime: ca
                        .dp_cert
                        .as_ref()
                        .and_then(|c| c.rotation.as_ref())
                        .map_or(DEFAULT_CERT_LIFETIME, |r| r.expiration.as_duration()),
                });
            }
            Spec::Secret(secret) => {
                if let Some(value) = secret.value() {
                    self.secrets.insert(r.name.clone(), value);
                }
            }
            Spec::VirtualIPs(v) => self.vips = v.services.clone(),
            _ => self.policies.add(r),
        }
    }

    /// Recomputes what the mesh knows of `service` (its endpoints here, its ready instances
    /// in other zones, its protocols and tag sets) from the Dataplanes, of any zone, that
    /// serve it; with none, the service is gone.
    pub fn set_service<'a>(&mut self, service: &str, dataplanes: impl IntoIterator<Item = &'a Resource>) {
        self.reach = OnceLock::new();
        let mut info = ServiceInfo::default();
        let mut endpoints = Vec::new();
        let mut remote: BTreeMap<String, u32> = BTreeMap::new();
        let mut remote_tags: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
        let mut tags = Vec::new();
        for r in dataplanes {
            let Spec::Dataplane(dp) = &r.spec else { continue };
            let zone = r.key().synced_zone().map(str::to_owned);
            let inbounds = dp.networking.inbound.iter().flatten();
            for inbound in inbounds.filter(|i| i.tags.get(SERVICE_TAG).is_some_and(|s| s == service)) {
                tags.push(inbound.tags.clone());
                info.http |= speaks_http(&inbound.tags);
                info.grpc |= inbound.tags.get(PROTOCOL_TAG).is_some_and(|p| p == "grpc");
                let ready = inbound.health.as_ref().is_none_or(|h| h.ready);
                match &zone {
                    // Another zone's instance: reached through that zone's ingress.
                    Some(zone) => {
                        if ready {
                            *remote.entry(zone.clone()).or_default() += 1;
                            remote_tags
                                .entry(zone.clone())
                                .or_default()
                                .push(inbound.tags.clone());
                        }
                    }
                    None => endpoints.push(ServiceEndpoint {
                        address: inbound
                            .address
                            .clone()
                            .unwrap_or_else(|| dp.networking.address.clone()),
                        port: inbound.port,
                        ready,
                        tags: inbound.tags.clone(),
                    }),
                }
            }
        }
        if tags.is_empty() {
            self.services.remove(service);
            self.remote.remove(service);
            self.remote_tags.remove(service);
            self.policies.service_tags.remove(service);
            return;
        }
        endpoints.sort_by(|a, b| (&a.address, a.port).cmp(&(&b.address, b.port)));
        info.endpoints = Arc::new(endpoints);
        self.services.insert(service.to_owned(), info);
        match remote.is_empty() {
            true => {
                self.remote.remove(service);
                self.remote_tags.remove(service);
            }
            false => {
                self.remote.insert(service.to_owned(), remote);
                self.remote_tags.insert(service.to_owned(), remote_tags);
            }
        };
        self.policies.service_tags.insert(service.to_owned(), tags);
    }

    /// Who may reach which service of the mesh (what a transparent proxy gets outbounds for).
    pub fn reach(&self) -> &Reach {
        self.reach
            .get_or_init(|| Arc::new(Reach::new(&self.mesh, &self.policies)))
    }

    /// Ready instances of `service` in other zones, by zone; of those with `tags` only, for a
    /// subset. `None` when there are none.
    pub fn remote_instances(
        &self,
        service: &str,
        tags: &BTreeMap<String, String>,
    ) -> Option<std::borrow::Cow<'_, BTreeMap<String, u32>>> {
        if tags.is_empty() {
            return self.remote.get(service).map(std::borrow::Cow::Borrowed);
        }
        let counts: BTreeMap<String, u32> = self
            .remote_tags
            .get(service)?
            .iter()
            .filter_map(|(zone, instances)| {
                let n = instances
                    .iter()
                    .filter(|t| tags.iter().all(|(k, v)| t.get(k) == Some(v)))
                    .count();
                (n > 0).then(|| (zone.clone(), n as u32))
            })
            .collect();
        (!counts.is_empty()).then_some(std::borrow::Cow::Owned(counts))
    }
}
