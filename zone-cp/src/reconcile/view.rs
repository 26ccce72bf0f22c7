//! The zone's view of its resources, kept up to date as changes are applied: each mesh's
//! translation context, rebuilt only in the parts a change touches; and invalidation, which
//! proxies a change can affect.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use meridian_model::policies::dataplane::{DataplaneSpec, SERVICE_TAG};
use meridian_model::policies::zone_ingress::ZoneIngressSpec;
use meridian_model::resolve::{ProxyView, selects, top_target};
use meridian_model::targetref::TargetRefKind;
use meridian_model::{Kind, Resource, ResourceKey, Spec};
use meridian_store::Change;

use crate::xds::cache::Types;
use crate::xds::crosszone::Zones;
use crate::xds::policies;
use crate::xds::translate::MeshContext;

/// The zone's resources, by mesh then kind and name.
#[derive(Default)]
pub struct ZoneView {
    pub(super) meshes: BTreeMap<String, BTreeMap<(Kind, String), Arc<Resource>>>,
    /// Which of this zone's Dataplanes call each service, by mesh then service: what a
    /// Dataplane change invalidates, without scanning every Dataplane.
    callers: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// Which Dataplanes (of every zone) serve each service, by mesh then service: what a
    /// service's part of the context is rebuilt from.
    providers: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// This zone's transparently proxied Dataplanes, by mesh: they may call any service, so
    /// every service's instances, the mesh's permissions and its virtual IPs concern them.
    transparent: BTreeMap<String, BTreeSet<String>>,
    contexts: BTreeMap<String, Kept>,
}

/// A mesh's last context, and what changed since it was built.
#[derive(Default)]
struct Kept {
    context: Option<Arc<MeshContext>>,
    /// Kinds other than Dataplane (the Mesh, a kind of policy, Secrets) that changed.
    kinds: BTreeSet<Kind>,
    /// Services whose Dataplanes changed.
    services: BTreeSet<String>,
}

/// What a batch of changes touches in one mesh's proxies, and in which resource types.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Touched {
    /// Every proxy of the mesh is translated in these types (none: only those named below).
    pub(super) all: Types,
    /// Proxies translated in these types (beyond `all`).
    pub(super) whole: BTreeMap<String, Types>,
    /// Proxies whose only change is in the instances of services they call (named here): they
    /// get those outbounds translated alone, and their endpoints patched when nothing else
    /// differs.
    pub(super) endpoints: BTreeMap<String, BTreeSet<String>>,
}

impl Touched {
    /// Every proxy, in full.
    pub(super) fn everything() -> Self {
        Self {
            all: Types::ALL,
            ..Self::default()
        }
    }

    /// Every proxy, in `types`.
    pub(super) fn add_all(&mut self, types: Types) {
        self.all = self.all.union(types);
    }

    /// The named proxies, in `types`.
    pub(super) fn add_whole(&mut self, names: impl IntoIterator<Item = String>, types: Types) {
        for name in names {
            let t = self.whole.entry(name).or_insert(Types::NONE);
            *t = t.union(types);
        }
    }

    fn add_endpoints(&mut self, name: &str, services: &BTreeSet<&String>) {
        let entry = self.endpoints.entry(name.to_owned()).or_default();
        entry.extend(services.iter().map(|s| s.to_string()));
    }

    /// Whether every proxy of the mesh is looked at, not just those named.
    pub(super) fn is_mesh_wide(&self) -> bool {
        self.all != Types::NONE
    }

    /// The types to translate `name` in, beyond an endpoints patch.
    pub(super) fn types_of(&self, name: &str) -> Types {
        self.whole.get(name).map_or(self.all, |t| t.union(self.all))
    }
}

/// The entry of `mesh` in `out`, touching nothing yet.
fn touched<'a>(out: &'a mut BTreeMap<String, Touched>, mesh: &str) -> &'a mut Touched {
    out.entry(mesh.to_owned()).or_default()
}

pub(super) fn dataplane(r: &Resource) -> Option<&DataplaneSpec> {
    match &r.spec {
        Spec::Dataplane(d) => Some(d),
        _ => None,
    }
}

pub(super) fn served(dp: &DataplaneSpec) -> impl Iterator<Item = &String> {
    dp.networking
        .inbound
        .iter()
        .flatten()
        .filter_map(|i| i.tags.get(SERVICE_TAG))
}

impl ZoneView {
    pub(super) fn get(&self, key: &ResourceKey) -> Option<&Arc<Resource>> {
        let mesh = if key.kind == Kind::Mesh {
            &key.name
        } else {
            &key.mesh
        };
        self.meshes.get(mesh)?.get(&(key.kind, key.name.clone()))
    }

    /// Takes in a change. Applied after [`ZoneView::affected`] has judged it.
    pub(super) fn apply(&mut self, change: Change) {
        let key = change_key(&change);
        let mesh = if key.kind == Kind::Mesh {
            key.name.clone()
        } else {
            key.mesh.clone()
        };
        // The old version is forgotten before the new one is indexed: both may name the
        // same services.
        let resources = self.meshes.entry(mesh.clone()).or_default();
        if let Some(old) = resources.remove(&(key.kind, key.name.clone())) {
            self.index(&old, false);
        }
        if let Change::Upsert(stored) = change {
            let new = Arc::new(stored.resource);
            self.index(&new, true);
            self.meshes
                .entry(mesh.clone())
                .or_default()
                .insert((key.kind, key.name.clone()), new);
        }
        if key.kind != Kind::Dataplane {
            self.contexts.entry(mesh).or_default().kinds.insert(key.kind);
        }
    }

    /// Records (or forgets) what a Dataplane serves and calls, and marks its services' part
    /// of the context to be rebuilt.
    fn index(&mut self, r: &Resource, present: bool) {
        let Some(dp) = dataplane(r) else { return };
        self.index_calls(r, present);
        if dp.networking.transparent_proxying.is_some() && r.key().synced_zone().is_none() {
            let names = self.transparent.entry(r.mesh.clone()).or_default();
            if present {
                names.insert(r.name.clone());
            } else {
                names.remove(&r.name);
            }
        }
        let providers = self.providers.entry(r.mesh.clone()).or_default();
        let kept = self.contexts.entry(r.mesh.clone()).or_default();
        for service in served(dp) {
            kept.services.insert(service.clone());
            let names = providers.entry(service.clone()).or_default();
            if present {
                names.insert(r.name.clone());
            } else {
                names.remove(&r.name);
                if names.is_empty() {
                    providers.remove(service);
                }
            }
        }
    }

    /// The translation context of `mesh`, seeing the other zones as `zones`: the last one
    /// built, with only what changed since rebuilt (in place, when no generation still holds
    /// it).
    pub(super) fn context(&mut self, mesh: &str, zones: Zones) -> Arc<MeshContext> {
        let resources = self.meshes.get(mesh);
        let kept = self.contexts.entry(mesh.to_owned()).or_default();
        let mut ctx = match kept.context.take() {
            Some(last) if kept.kinds.is_empty() && kept.services.is_empty() && last.zones == zones => {
                kept.context = Some(last.clone());
                return last;
            }
            Some(last) => {
                let mut ctx = Arc::try_unwrap(last).unwrap_or_else(|shared| (*shared).clone());
                for &kind in &kept.kinds {
                    // A mesh's resources are kept by kind then name: one kind is one range.
                    let group = meridian_model::resolve::MeshPolicies::group(kind);
                    let of_kind = group.into_iter().flat_map(|kind| {
                        resources.into_iter().flat_map(move |m| {
                            m.range((kind, String::new())..)
                                .take_while(move |((k, _), _)| *k == kind)
                                .map(|(_, r)| &**r)
                        })
                    });
                    ctx.set_kind(kind, of_kind);
                }
                let providers = self.providers.get(mesh);
                for service in &kept.services {
                    let names = providers.and_then(|p| p.get(service)).into_iter().flatten();
                    let dataplanes = names
                        .filter_map(|name| resources?.get(&(Kind::Dataplane, name.clone())))
                        .map(|r| &**r);
                    ctx.set_service(service, dataplanes);
                }
                ctx
            }
            None => MeshContext::new(resources.into_iter().flat_map(|m| m.values()).map(|r| &**r)),
        };
        kept.kinds.clear();
        kept.services.clear();
        ctx.zones = zones;
        let ctx = Arc::new(ctx);
        kept.context = Some(ctx.clone());
        ctx
    }

    /// Records (or forgets) which services a Dataplane of this zone calls.
    fn index_calls(&mut self, r: &Resource, calls: bool) {
        let Some(dp) = dataplane(r) else { return };
        if r.key().synced_zone().is_some() {
            return;
        }
        let services = self.callers.entry(r.mesh.clone()).or_default();
        for service in dp
            .networking
            .outbound
            .iter()
            .flatten()
            .filter_map(|o| o.service())
        {
            if calls {
                services
                    .entry(service.to_owned())
                    .or_default()
                    .insert(r.name.clone());
            } else if let Some(names) = services.get_mut(service) {
                names.remove(&r.name);
                if names.is_empty() {
                    services.remove(service);
                }
            }
        }
    }

    /// This zone's transparently proxied Dataplanes in `mesh`.
    pub(super) fn transparent(&self, mesh: &str) -> impl Iterator<Item = &String> {
        self.transparent.get(mesh).into_iter().flatten()
    }

    /// This zone's Dataplanes in `mesh` (not other zones', which only feed cross-zone endpoints).
    pub(super) fn dataplanes<'a>(&'a self, mesh: &str) -> impl Iterator<Item = &'a Arc<Resource>> + 'a {
        self.meshes
            .get(mesh)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|r| r.kind() == Kind::Dataplane && r.key().synced_zone().is_none())
    }

    /// Every zone ingress known here: this zone's and (named `ZONE.NAME`) the others'.
    pub(super) fn ingresses(&self) -> impl Iterator<Item = (&Resource, &ZoneIngressSpec)> {
        self.meshes
            .get("")
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|r| match &r.spec {
                Spec::ZoneIngress(z) => Some((&**r, z)),
                _ => None,
            })
    }

    /// Mesh names (resources without a mesh, such as ingresses, are kept under "").
    pub(super) fn mesh_names(&self) -> Vec<String> {
        self.meshes.keys().filter(|m| !m.is_empty()).cloned().collect()
    }

    /// Proxies a change can affect, judged against the view before the change is applied.
    pub(super) fn affected(&self, change: &Change, out: &mut BTreeMap<String, Touched>) {
        let key = change_key(change);
        match key.kind {
            // Where other zones are reached: every mesh's cross-zone endpoints.
            Kind::ZoneIngress => {
                for mesh in self.mesh_names() {
                    touched(out, &mesh).add_all(Types::ALL);
                }
            }
            Kind::Mesh => touched(out, &key.name).add_all(Types::ALL),
            Kind::Dataplane => {
                let mut services: BTreeSet<&String> = BTreeSet::new();
                if let Some(old) = self.get(&key).and_then(|r| dataplane(r)) {
                    services.extend(served(old));
                }
                if let Change::Upsert(s) = change
                    && let Some(new) = dataplane(&s.resource)
                {
                    services.extend(served(new));
                }
                // Services whose routes send to these: their callers hold these clusters too.
                let routes = self.meshes.get(&key.mesh).into_iter().flat_map(|m| {
                    [Kind::MeshHTTPRoute, Kind::MeshTCPRoute, Kind::TrafficRoute]
                        .into_iter()
                        .flat_map(move |kind| {
                            m.range((kind, String::new())..)
                                .take_while(move |((k, _), _)| *k == kind)
                        })
                });
                let mut routed: BTreeSet<String> = BTreeSet::new();
                for (_, r) in routes {
                    // An older TrafficRoute routes as the routes it converts to.
                    let specs: Vec<Spec> = match meridian_model::policies::legacy::converted(&r.spec) {
                        Some(converted) => converted.into_iter().flatten().map(|c| c.spec).collect(),
                        None => vec![r.spec.clone()],
                    };
                    for spec in &specs {
                        let backends: Vec<(&str, &str)> = match spec {
                            Spec::MeshHTTPRoute(route) => {
                                route.backends().map(|(f, b)| (f, b.name.as_str())).collect()
                            }
                            Spec::MeshTCPRoute(route) => {
                                route.backends().map(|(f, b)| (f, b.name.as_str())).collect()
                            }
                            _ => Vec::new(),
                        };
                        for (from, backend) in backends {
                            if from != backend && services.iter().any(|s| s.as_str() == backend) {
                                routed.insert(from.to_owned());
                            }
                        }
                    }
                }
                let services: BTreeSet<&String> = services.into_iter().chain(routed.iter()).collect();
                // The Dataplane itself, in full; its services' callers see other endpoints.
                let entry = touched(out, &key.mesh);
                entry.add_whole([key.name.clone()], Types::ALL);
                let mut calls: BTreeMap<&String, BTreeSet<&String>> = BTreeMap::new();
                if let Some(callers) = self.callers.get(&key.mesh) {
                    for service in &services {
                        for caller in callers.get(*service).into_iter().flatten() {
                            calls.entry(caller).or_default().insert(service);
                        }
                    }
                }
                for (caller, services) in calls {
                    entry.add_endpoints(caller, &services);
                }
                // Transparent proxies may call any of them.
                for caller in self.transparent(&key.mesh) {
                    entry.add_endpoints(caller, &services);
                }
            }
            // What transparent proxies reach, and where: their outbounds.
            Kind::VirtualIPs => {
                let names: Vec<String> = self.transparent(&key.mesh).cloned().collect();
                touched(out, &key.mesh).add_whole(names, Types::ALL);
            }
            _ => {
                // A policy touches the proxies its top-level targetRef selects, before or after
                // the change; a mesh-wide one (or an older kind without targetRef), all of them;
                // in the resource types its plugin shapes (all of them for other kinds).
                let types = policies::shapes(key.kind);
                if matches!(key.kind, Kind::MeshTrafficPermission | Kind::TrafficPermission) {
                    // Who may call what: which outbounds transparent proxies get.
                    let names: Vec<String> = self.transparent(&key.mesh).cloned().collect();
                    touched(out, &key.mesh).add_whole(names, Types::ALL);
                }
                let mut targets = Vec::new();
                for version in [self.get(&key).map(|r| &**r), upserted(change)]
                    .into_iter()
                    .flatten()
                {
                    // A policy on a MeshHTTPRoute's rules touches the proxies that route selects.
                    let top = top_target(&version.spec).map(|t| match t.kind {
                        TargetRefKind::MeshHTTPRoute => {
                            let route = ResourceKey::new(
                                Kind::MeshHTTPRoute,
                                &key.mesh,
                                t.name.as_deref().unwrap_or_default(),
                            );
                            self.get(&route).and_then(|r| top_target(&r.spec))
                        }
                        _ => Some(t),
                    });
                    match top {
                        // It names no route there is: nothing takes it.
                        Some(None) => {}
                        Some(Some(t)) if t.kind != TargetRefKind::Mesh => targets.push(t),
                        _ => {
                            touched(out, &key.mesh).add_all(types);
                            return;
                        }
                    }
                }
                let mut names = BTreeSet::new();
                for r in self.dataplanes(&key.mesh) {
                    let Some(dp) = dataplane(r) else { continue };
                    let view = ProxyView {
                        name: &r.name,
                        labels: &r.labels,
                        dataplane: dp,
                    };
                    if targets.iter().any(|t| selects(t, &view)) {
                        names.insert(r.name.clone());
                    }
                }
                touched(out, &key.mesh).add_whole(names, types);
            }
        }
    }
}

pub(super) fn change_key(change: &Change) -> ResourceKey {
    match change {
        Change::Upsert(s) => s.resource.key(),
        Change::Delete { key, .. } => key.clone(),
    }
}

fn upserted(change: &Change) -> Option<&Resource> {
    match change {
        Change::Upsert(s) => Some(&s.resource),
        Change::Delete { .. } => None,
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
