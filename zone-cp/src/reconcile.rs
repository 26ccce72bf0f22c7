//! Keeps every proxy's snapshot in step with the store.
//!
//! ```text
//!   store commit ──watch──> Reconciler: changes_since(applied) ──> affected proxies
//!                                      ──> translate ──> SnapshotCache.set (only if changed)
//! ```
//!
//! One writer (this task) owns the zone's in-memory view; a change regenerates only the
//! proxies it can affect: a Dataplane itself and the proxies that call its services; a policy,
//! the proxies its top-level targetRef selects (all of the mesh for a mesh-wide one).
//!
//! Translation runs on the blocking pool, spread over the cores (`reconcile/generate.rs`), so the async
//! workers keep serving the streams meanwhile.
//!
//! With mesh mTLS on, it also issues each proxy's certificate from the mesh CA, and reissues
//! it four fifths into its life (a timer here), so Envoy gets a fresh one over SDS in time.
//! The CA comes from the store, which it only reads (`reconcile/cas.rs`): a job creates it
//! when the zone is standalone, the sync brings it from global when federated; until it is
//! there, the mesh's proxies keep what they have.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meridian_api::ca::{CaError, Leaf, MeshCa, spiffe_id};

use meridian_model::policies::dataplane::DataplaneSpec;
use meridian_model::policies::zone_ingress::ZoneIngressSpec;
use meridian_model::{Kind, Resource, ResourceKey};
use meridian_store::{Change, Store, StoreError};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::xds::cache::{ProxyId, SnapshotCache, Types};
use crate::xds::crosszone::{INGRESS_MESH, Zones, ingress_snapshot};
use crate::xds::metrics::XdsMetrics;
use crate::xds::translate::{MeshContext, TlsSettings};

mod cas;
mod generate;
mod probe;
#[cfg(test)]
mod tests;
mod view;
pub mod vips;

use generate::{Generation, Proxy};

pub use cas::create_mesh_cas;
pub use probe::{IngressTargets, probe_ingresses};
use view::{Touched, ZoneView, change_key, served};
pub use vips::allocate_vips;

const BATCH: u32 = 1000;

/// A proxy's certificate, and what it was issued for.
struct Issued {
    ids: Vec<String>,
    ca: String,
    lifetime: Duration,
    leaf: Arc<Leaf>,
}

/// How often meshes waiting for their CA look again.
const CA_RETRY: Duration = Duration::from_secs(1);

pub struct Reconciler {
    store: Arc<dyn Store>,
    cache: SnapshotCache,
    metrics: Arc<XdsMetrics>,
    view: ZoneView,
    applied: i64,
    cas: cas::MeshCas,
    /// Bumped when a mesh CA was created: meshes waiting for one look again.
    ca_created: watch::Receiver<u64>,
    /// Where to ask for a mesh's CA (standalone only: federated, global makes them).
    ca_wanted: Option<mpsc::UnboundedSender<cas::Wanted>>,
    leaves: HashMap<ProxyId, Issued>,
    /// Meshes with mTLS on whose CA is not available yet.
    waiting: BTreeSet<String>,
    /// This zone's name.
    zone: String,
    /// Other zones' ingresses (by resource name) that this zone cannot reach now.
    unreachable: watch::Receiver<BTreeSet<String>>,
    /// Other zones' ingresses, published for the prober.
    ingress_targets: watch::Sender<IngressTargets>,
    /// Keep the default (never changing) reachability and CA channels open.
    _no_probe: Option<watch::Sender<BTreeSet<String>>>,
    _no_ca_job: Option<watch::Sender<u64>>,
    /// Where to ask for virtual IPs, and whether this node is the one that asks.
    vip_job: Option<(mpsc::UnboundedSender<vips::Wanted>, watch::Receiver<bool>)>,
}

/// The identities a proxy's certificate carries: one per service it serves.
fn identities(mesh: &str, name: &str, dp: &DataplaneSpec) -> Vec<String> {
    let services: BTreeSet<&String> = served(dp).collect();
    if services.is_empty() {
        // A proxy that only calls out still needs an identity to show.
        return vec![spiffe_id(mesh, name)];
    }
    services.into_iter().map(|s| spiffe_id(mesh, s)).collect()
}

impl Reconciler {
    pub fn new(store: Arc<dyn Store>, cache: SnapshotCache, metrics: Arc<XdsMetrics>) -> Self {
        let (tx, rx) = watch::channel(BTreeSet::new());
        let (ca_tx, ca_rx) = watch::channel(0);
        Self {
            store,
            cache,
            metrics,
            view: ZoneView::default(),
            applied: 0,
            cas: cas::MeshCas::default(),
            ca_created: ca_rx,
            ca_wanted: None,
            leaves: HashMap::new(),
            waiting: BTreeSet::new(),
            zone: String::new(),
            unreachable: rx,
            ingress_targets: watch::Sender::new(IngressTargets::new()),
            _no_probe: Some(tx),
            _no_ca_job: Some(ca_tx),
            vip_job: None,
        }
    }

    /// The zone's name, and the ingresses of other zones it cannot reach (kept current by
    /// [`crate::reconcile::probe_ingresses`]).
    pub fn with_zone(self, zone: &str, unreachable: watch::Receiver<BTreeSet<String>>) -> Self {
        Self {
            zone: zone.to_owned(),
            unreachable,
            _no_probe: None,
            ..self
        }
    }

    /// Other zones' ingresses as the zone's view has them, kept current: what
    /// [`probe_ingresses`] probes.
    pub fn ingress_targets(&self) -> watch::Receiver<IngressTargets> {
        self.ingress_targets.subscribe()
    }

    /// The job that makes mesh CAs on a standalone zone ([`create_mesh_cas`]): where to ask
    /// for one, and where the news comes from that one was made.
    pub fn with_ca_job(
        self,
        wanted: mpsc::UnboundedSender<cas::Wanted>,
        created: watch::Receiver<u64>,
    ) -> Self {
        Self {
            ca_wanted: Some(wanted),
            ca_created: created,
            _no_ca_job: None,
            ..self
        }
    }

    /// The job that allocates virtual IPs ([`vips::allocate_vips`]): where to ask, and the
    /// node's leadership (only the leader asks).
    pub fn with_vip_job(
        self,
        wanted: mpsc::UnboundedSender<vips::Wanted>,
        leading: watch::Receiver<bool>,
    ) -> Self {
        Self {
            vip_job: Some((wanted, leading)),
            ..self
        }
    }

    /// Asks for virtual IPs where a mesh with transparent proxies has services without one,
    /// or keeps some for services gone.
    fn check_vips<'a>(&mut self, meshes: impl IntoIterator<Item = &'a String>) {
        let Some((wanted, leading)) = &self.vip_job else {
            return;
        };
        if !*leading.borrow() {
            return;
        }
        let wanted = wanted.clone();
        for mesh in meshes {
            if self.view.transparent(mesh).next().is_none() {
                continue;
            }
            let zones = self.zones();
            let ctx = self.view.context(mesh, zones);
            if !ctx.services.keys().eq(ctx.vips.keys()) {
                let services = ctx.services.keys().cloned().collect();
                let _ = wanted.send((mesh.clone(), services));
            }
        }
    }

    /// When the next certificate is due for renewal.
    fn next_renewal(&self) -> Option<SystemTime> {
        self.leaves.values().map(|i| i.leaf.renew_at).min()
    }

    /// Runs until `shutdown` fires; returns an error only when the store fails for good.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), StoreError> {
        let mut commits = self.store.watch();
        self.catch_up().await?;
        info!(revision = self.applied, "proxy snapshots generated");
        // When the meshes waiting for a CA look again: fixed once they start waiting, so a
        // stream of other events cannot keep putting it off.
        let mut retry_at: Option<tokio::time::Instant> = None;
        // A channel whose sender is gone (its task ended) would be ready at once, forever.
        let (mut probing, mut ca_job) = (true, true);
        // A new leader looks at every mesh's virtual IPs once.
        let mut leading = self.vip_job.as_ref().map(|(_, l)| l.clone());
        loop {
            let renewal = self.next_renewal().map(|at| {
                let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
                tokio::time::Instant::now() + wait
            });
            retry_at = match (self.waiting.is_empty(), retry_at) {
                (true, _) => None,
                (false, None) => Some(tokio::time::Instant::now() + CA_RETRY),
                (false, Some(at)) => Some(at),
            };
            let timer = renewal.into_iter().chain(retry_at).min();
            tokio::select! {
                changed = commits.changed() => if changed.is_err() { return Ok(()) },
                _ = shutdown.changed() => return Ok(()),
                changed = self.unreachable.changed(), if probing => {
                    probing = changed.is_ok();
                    if probing {
                        self.unreachable.borrow_and_update();
                        for mesh in self.view.mesh_names() {
                            self.regenerate(&mesh, &Touched::everything()).await;
                        }
                    }
                    continue;
                }
                changed = async { leading.as_mut().expect("guarded").changed().await }, if leading.is_some() => {
                    if changed.is_err() {
                        leading = None;
                    } else {
                        let meshes = self.view.mesh_names();
                        self.check_vips(&meshes);
                    }
                    continue;
                }
                changed = self.ca_created.changed(), if ca_job => {
                    ca_job = changed.is_ok();
                    if ca_job {
                        self.ca_created.borrow_and_update();
                        retry_at = None;
                        self.refresh_identities().await;
                    }
                    continue;
                }
                _ = async { tokio::time::sleep_until(timer.unwrap_or_else(tokio::time::Instant::now)).await }, if timer.is_some() => {
                    retry_at = None;
                    self.refresh_identities().await;
                    continue;
                }
            }
            commits.borrow_and_update();
            // A failed read is retried with backoff: proxies must not stay stale until some
            // later commit happens to come along.
            let mut delay = std::time::Duration::from_millis(100);
            while let Err(e) = self.catch_up().await {
                warn!(error = %e, retry_in = ?delay, "reading changes failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }

    /// Applies every change after `applied` and regenerates what they affect.
    pub async fn catch_up(&mut self) -> Result<(), StoreError> {
        loop {
            let changes = self.store.changes_since(self.applied, BATCH).await?;
            if changes.is_empty() {
                return Ok(());
            }
            // Fewer than asked for: that was everything committed when they were read, and
            // another read would cost a round of queries to find nothing.
            let caught_up = changes.len() < BATCH as usize;
            let mut affected = BTreeMap::new();
            let mut removed = Vec::new();
            let mut traced = Vec::new();
            let tracing = meridian_otlp::exporter::enabled();
            let now_ms = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            // An ingress routes to this zone's Dataplanes in meshes with mTLS, and to the
            // subsets routes name: only those kinds change what it gets.
            let mut ingress_inputs = false;
            let mut ingresses_changed = false;
            for change in changes {
                let key = change_key(&change);
                ingress_inputs |= matches!(
                    key.kind,
                    Kind::Dataplane
                        | Kind::Mesh
                        | Kind::ZoneIngress
                        | Kind::MeshHTTPRoute
                        | Kind::MeshTCPRoute
                        | Kind::TrafficRoute
                );
                ingresses_changed |= key.kind == Kind::ZoneIngress;
                // A change from a traced write: its push to this node's proxies ends the trace.
                if tracing && let Some(parent) = change.trace(now_ms) {
                    let mut span = meridian_otlp::exporter::Span::start(
                        format!("zone {}: xds push", self.zone),
                        Some(parent),
                        meridian_otlp::exporter::INTERNAL,
                    );
                    span.set("zone", &self.zone);
                    span.set("zone.revision", change.revision());
                    traced.push(span);
                }
                self.view.affected(&change, &mut affected);
                self.applied = change.revision();
                if let Change::Delete { .. } = change {
                    match key.kind {
                        Kind::Dataplane => removed.push(ProxyId::new(key.mesh.clone(), key.name.clone())),
                        Kind::ZoneIngress => self.cache.remove(&ProxyId::new(INGRESS_MESH, key.name.clone())),
                        _ => {}
                    }
                }
                self.view.apply(change);
            }
            let mut pushed = 0;
            let meshes: Vec<String> = affected.keys().cloned().collect();
            for (mesh, touched) in affected {
                pushed += self.regenerate(&mesh, &touched).await;
            }
            self.check_vips(&meshes);
            for mut span in traced {
                span.set("proxies.pushed", pushed);
            }
            for id in removed.iter().filter(|id| {
                self.view
                    .get(&ResourceKey::new(Kind::Dataplane, &id.mesh, &id.name))
                    .is_none()
            }) {
                self.cache.remove(id);
                self.leaves.remove(id);
            }
            if ingress_inputs {
                self.regenerate_ingresses();
            }
            if ingresses_changed {
                self.publish_ingress_targets();
            }
            if caught_up {
                return Ok(());
            }
        }
    }

    /// Tells the prober which of other zones' ingresses there are now.
    fn publish_ingress_targets(&self) {
        let targets: IngressTargets = self
            .view
            .ingresses()
            .filter(|(r, _)| r.key().synced_zone().is_some())
            .map(|(r, z)| (r.name.clone(), z.advertised()))
            .collect();
        self.ingress_targets.send_if_modified(|current| {
            let changed = *current != targets;
            *current = targets;
            changed
        });
    }

    /// Other zones and their reachable ingresses, as every mesh's translation sees them.
    fn zones(&self) -> Zones {
        let unreachable = self.unreachable.borrow();
        let mut zones = Zones {
            local: self.zone.clone(),
            ..Zones::default()
        };
        for (r, ingress) in self.view.ingresses() {
            let Some(zone) = r.key().synced_zone().map(str::to_owned) else {
                continue;
            };
            if zone == self.zone || unreachable.contains(&r.name) {
                continue;
            }
            let n = &ingress.networking;
            let host = n.advertised_address.clone().unwrap_or_else(|| n.address.clone());
            let port = n.advertised_port.unwrap_or(n.port);
            zones.ingresses.entry(zone).or_default().push((host, port));
        }
        zones
    }

    /// This zone's ingresses: a filter chain per service of every mesh with mTLS.
    fn regenerate_ingresses(&mut self) {
        let local: Vec<(String, ZoneIngressSpec)> = self
            .view
            .ingresses()
            .filter(|(r, _)| r.key().synced_zone().is_none())
            .map(|(r, z)| (r.name.clone(), z.clone()))
            .collect();
        if local.is_empty() {
            return;
        }
        let zones = self.zones();
        let contexts: Vec<Arc<MeshContext>> = self
            .view
            .mesh_names()
            .iter()
            .map(|m| self.view.context(m, zones.clone()))
            .collect();
        let refs: Vec<&MeshContext> = contexts.iter().map(|c| &**c).collect();
        for (name, spec) in local {
            let id = ProxyId::new(INGRESS_MESH, name);
            match self.cache.set(&id, ingress_snapshot(&spec, &refs)) {
                Ok(changed) => debug!(proxy = %id, changed, "ingress snapshot regenerated"),
                Err(e) => {
                    error!(proxy = %id, error = %e, "ingress snapshot refused; the last good one stays")
                }
            }
        }
    }

    /// Reissues certificates that are due, and retries meshes that were waiting for a CA.
    async fn refresh_identities(&mut self) {
        let now = SystemTime::now();
        let mut due: BTreeMap<String, Touched> = BTreeMap::new();
        for (id, issued) in &self.leaves {
            if issued.leaf.renew_at <= now {
                let touched = due.entry(id.mesh.clone()).or_default();
                touched.add_whole([id.name.clone()], Types::ALL);
            }
        }
        for mesh in std::mem::take(&mut self.waiting) {
            due.insert(mesh, Touched::everything());
        }
        for (mesh, touched) in due {
            self.regenerate(&mesh, &touched).await;
        }
    }

    /// The CA of `mesh`'s backend, if the store has it.
    async fn mesh_ca(&mut self, mesh: &str, tls: &TlsSettings) -> Result<Option<MeshCa>, CaError> {
        self.cas.get(&*self.store, mesh, &tls.backend).await
    }

    /// The current certificate of each proxy (`None` where issuing failed), issued anew
    /// where it is missing, due, or for other services, CA or lifetime.
    async fn leaves(
        &mut self,
        mesh: &str,
        proxies: &[Proxy],
        ca: &MeshCa,
        tls: &TlsSettings,
    ) -> Vec<Option<Arc<Leaf>>> {
        let fingerprint = ca.fingerprint();
        let now = SystemTime::now();
        let due: Vec<(ProxyId, Vec<String>)> = proxies
            .iter()
            .filter_map(|p| Some((p.id.clone(), identities(&p.id.mesh, &p.id.name, p.dataplane()?))))
            .filter(|(id, ids)| {
                !self.leaves.get(id).is_some_and(|i| {
                    i.ids == *ids
                        && i.ca == fingerprint
                        && i.lifetime == tls.cert_lifetime
                        && i.leaf.renew_at > now
                })
            })
            .collect();
        let (signer, mesh_name, lifetime) = (ca.clone(), mesh.to_owned(), tls.cert_lifetime);
        let issued = generate::blocking(move || {
            generate::in_parallel(due, |(id, ids)| {
                let leaf = signer.issue(&mesh_name, &ids, lifetime);
                (id, ids, leaf)
            })
        })
        .await;
        for (id, ids, leaf) in issued {
            match leaf {
                Ok(leaf) => {
                    debug!(proxy = %id, ids = ?ids, not_after = ?leaf.not_after, "certificate issued");
                    self.metrics.certificates.inc();
                    let issued = Issued {
                        ids,
                        ca: fingerprint.clone(),
                        lifetime,
                        leaf: Arc::new(leaf),
                    };
                    self.leaves.insert(id, issued);
                }
                Err(e) => {
                    warn!(proxy = %id, error = %e, "issuing a certificate failed");
                    self.leaves.remove(&id);
                }
            }
        }
        proxies
            .iter()
            .map(|p| self.leaves.get(&p.id).map(|i| i.leaf.clone()))
            .collect()
    }

    /// Regenerates what `touched` names of `mesh`'s proxies; returns how many got a changed
    /// snapshot (and so a push). Callers touched only through the instances they call get
    /// their endpoints patched where that is all that changed, and the rest in full.
    async fn regenerate(&mut self, mesh: &str, touched: &Touched) -> usize {
        if mesh.is_empty() {
            return 0;
        }
        // Only the proxies named are looked at, unless all are.
        let candidates: Vec<Arc<Resource>> = if touched.is_mesh_wide() {
            self.view.dataplanes(mesh).cloned().collect()
        } else {
            let names: BTreeSet<&String> = touched.whole.keys().chain(touched.endpoints.keys()).collect();
            names
                .into_iter()
                .filter_map(|name| self.view.get(&ResourceKey::new(Kind::Dataplane, mesh, name)))
                .filter(|r| r.key().synced_zone().is_none())
                .cloned()
                .collect()
        };
        if candidates.is_empty() {
            // Nothing to generate: the context is not even brought up to date (the next
            // generation does that, with whatever changed by then).
            return 0;
        }
        let zones = self.zones();
        let ctx = self.view.context(mesh, zones);
        let mut proxies: Vec<Proxy> = Vec::new();
        let mut patch: Vec<(Proxy, BTreeSet<String>)> = Vec::new();
        for r in candidates {
            let id = ProxyId::new(mesh, r.name.clone());
            let services = touched.endpoints.get(&r.name);
            let types = touched.types_of(&r.name);
            // With mTLS on, only a proxy holding its certificate has outbounds to patch.
            let patchable = types == Types::NONE && (ctx.tls.is_none() || self.leaves.contains_key(&id));
            let Some(mut proxy) = Proxy::new(id, r) else {
                continue;
            };
            match services {
                Some(services) if patchable => patch.push((proxy, services.clone())),
                // Other endpoints may change any type (a service's protocol comes from them).
                Some(_) => proxies.push(proxy),
                None => {
                    proxy.types = types;
                    proxies.push(proxy);
                }
            }
        }
        let mut pushed = 0;
        if !patch.is_empty() {
            let (patched, diverged) =
                generate::patch_endpoints(ctx.clone(), self.cache.clone(), self.metrics.clone(), patch).await;
            pushed += patched;
            proxies.extend(diverged);
        }
        if proxies.is_empty() {
            return pushed;
        }
        let ca = match &ctx.tls {
            None => None,
            Some(tls) => match self.mesh_ca(mesh, tls).await {
                Ok(Some(ca)) => Some(ca),
                Ok(None) => {
                    if let Some(wanted) = &self.ca_wanted {
                        // Asked again on each retry: the job makes it once.
                        let _ = wanted.send((mesh.to_owned(), tls.backend.clone()));
                    }
                    if self.waiting.insert(mesh.to_owned()) {
                        info!(
                            mesh,
                            "mTLS is on but the mesh CA is not there yet; proxies keep their config"
                        );
                    }
                    return pushed;
                }
                Err(e) => {
                    warn!(mesh, error = %e, "the mesh CA is not usable; proxies keep their config");
                    self.waiting.insert(mesh.to_owned());
                    return pushed;
                }
            },
        };
        match (&ca, &ctx.tls) {
            (Some(ca), Some(tls)) => {
                let leaves = self.leaves(mesh, &proxies, ca, tls).await;
                for (p, leaf) in proxies.iter_mut().zip(leaves) {
                    p.leaf = leaf;
                }
                // A proxy whose certificate could not be issued keeps what it has.
                proxies.retain(|p| p.leaf.is_some());
            }
            _ => {
                for p in &proxies {
                    self.leaves.remove(&p.id);
                }
            }
        }
        let generation = Generation {
            ctx,
            ca_cert: ca.map(|ca| ca.cert),
            cache: self.cache.clone(),
            metrics: self.metrics.clone(),
        };
        pushed + generation.run(proxies).await
    }
}
