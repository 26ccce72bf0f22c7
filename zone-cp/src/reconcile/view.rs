//! The zone's view of its resources, and invalidation: which proxies a change can affect.

use std::collections::{BTreeMap, BTreeSet};

use meridian_model::policies::dataplane::{DataplaneSpec, SERVICE_TAG};
use meridian_model::policies::zone_ingress::ZoneIngressSpec;
use meridian_model::resolve::{ProxyView, selects, top_target};
use meridian_model::targetref::TargetRefKind;
use meridian_model::{Kind, Resource, ResourceKey, Spec};
use meridian_store::Change;

/// The zone's resources, by mesh then kind and name.
#[derive(Default)]
pub struct ZoneView {
    pub(super) meshes: BTreeMap<String, BTreeMap<(Kind, String), Resource>>,
    /// Which of this zone's Dataplanes call each service, by mesh then service: what a
    /// Dataplane change invalidates, without scanning every Dataplane.
    callers: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

/// What a batch of changes touches in one mesh's proxies.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Touched {
    /// Every proxy, translated in full.
    All,
    Some {
        /// Proxies translated in full.
        whole: BTreeSet<String>,
        /// Proxies whose only change is in the instances of services they call (named here):
        /// they get those outbounds translated alone, and their endpoints patched when nothing
        /// else differs.
        endpoints: BTreeMap<String, BTreeSet<String>>,
    },
}

impl Touched {
    /// The named proxies, in full.
    pub(super) fn proxies(names: impl IntoIterator<Item = String>) -> Self {
        Self::Some {
            whole: names.into_iter().collect(),
            endpoints: BTreeMap::new(),
        }
    }

    pub(super) fn add_whole(&mut self, names: impl IntoIterator<Item = String>) {
        if let Self::Some { whole, .. } = self {
            whole.extend(names);
        }
    }

    fn add_endpoints(&mut self, name: &str, services: &BTreeSet<&String>) {
        if let Self::Some { endpoints, .. } = self {
            let entry = endpoints.entry(name.to_owned()).or_default();
            entry.extend(services.iter().map(|s| s.to_string()));
        }
    }
}

/// The entry of `mesh` in `out`, touching nothing yet.
fn touched<'a>(out: &'a mut BTreeMap<String, Touched>, mesh: &str) -> &'a mut Touched {
    out.entry(mesh.to_owned()).or_insert_with(|| Touched::proxies([]))
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
    pub(super) fn get(&self, key: &ResourceKey) -> Option<&Resource> {
        let mesh = if key.kind == Kind::Mesh {
            &key.name
        } else {
            &key.mesh
        };
        self.meshes.get(mesh)?.get(&(key.kind, key.name.clone()))
    }

    pub(super) fn apply(&mut self, change: &Change) {
        let key = change_key(change);
        let mesh = if key.kind == Kind::Mesh {
            &key.name
        } else {
            &key.mesh
        };
        let old = match change {
            Change::Upsert(stored) => self
                .meshes
                .entry(mesh.clone())
                .or_default()
                .insert((key.kind, key.name.clone()), stored.resource.clone()),
            Change::Delete { .. } => self
                .meshes
                .get_mut(mesh)
                .and_then(|m| m.remove(&(key.kind, key.name.clone()))),
        };
        if let Some(old) = old {
            self.index_calls(&old, false);
        }
        if let Change::Upsert(stored) = change {
            self.index_calls(&stored.resource, true);
        }
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

    /// This zone's Dataplanes in `mesh` (not other zones', which only feed cross-zone endpoints).
    pub(super) fn dataplanes<'a>(&'a self, mesh: &str) -> impl Iterator<Item = &'a Resource> + 'a {
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
                Spec::ZoneIngress(z) => Some((r, z)),
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
                    out.insert(mesh, Touched::All);
                }
            }
            Kind::Mesh => {
                out.insert(key.name.clone(), Touched::All);
            }
            Kind::Dataplane => {
                let mut services: BTreeSet<&String> = BTreeSet::new();
                if let Some(old) = self.get(&key).and_then(dataplane) {
                    services.extend(served(old));
                }
                if let Change::Upsert(s) = change
                    && let Some(new) = dataplane(&s.resource)
                {
                    services.extend(served(new));
                }
                // The Dataplane itself, in full; its services' callers see other endpoints.
                let entry = touched(out, &key.mesh);
                entry.add_whole([key.name.clone()]);
                let mut calls: BTreeMap<&String, BTreeSet<&String>> = BTreeMap::new();
                if let Some(callers) = self.callers.get(&key.mesh) {
                    for service in services {
                        for caller in callers.get(service).into_iter().flatten() {
                            calls.entry(caller).or_default().insert(service);
                        }
                    }
                }
                for (caller, services) in calls {
                    entry.add_endpoints(caller, &services);
                }
            }
            _ => {
                // A policy touches the proxies its top-level targetRef selects, before or after
                // the change; a mesh-wide one (or an older kind without targetRef), all of them.
                let mut targets = Vec::new();
                for version in [self.get(&key), upserted(change)].into_iter().flatten() {
                    match top_target(&version.spec) {
                        Some(t) if t.kind != TargetRefKind::Mesh => targets.push(t),
                        _ => {
                            out.insert(key.mesh.clone(), Touched::All);
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
                touched(out, &key.mesh).add_whole(names);
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
mod tests {
    use meridian_model::{Format, Stored, parse_one};

    use super::*;

    fn change(yaml: &str) -> Change {
        let resource = parse_one(yaml, Format::Yaml).expect("valid").resource;
        Change::Upsert(Box::new(Stored {
            resource,
            version: 1,
            revision: 1,
            creation_time_ms: 0,
            modification_time_ms: 0,
            trace: None,
        }))
    }

    fn view() -> ZoneView {
        let mut v = ZoneView::default();
        for (name, service, outbound) in [
            ("demo-1", "demo", "reg-server"),
            ("reg-1", "reg-server", "db"),
            ("db-1", "db", ""),
        ] {
            let out = if outbound.is_empty() {
                String::new()
            } else {
                format!("  outbound:\n  - port: 20001\n    tags: {{kuma.io/service: {outbound}}}\n")
            };
            v.apply(&change(&format!(
                "type: Dataplane\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    tags: {{kuma.io/service: {service}}}\n{out}"
            )));
        }
        v
    }

    fn affected(v: &ZoneView, c: &Change) -> BTreeMap<String, Touched> {
        let mut out = BTreeMap::new();
        v.affected(c, &mut out);
        out
    }

    fn only(names: &[&str]) -> BTreeMap<String, Touched> {
        BTreeMap::from([(
            "default".to_owned(),
            Touched::proxies(names.iter().map(|n| n.to_string())),
        )])
    }

    #[test]
    fn a_dataplane_affects_itself_and_the_endpoints_of_its_callers() {
        let v = view();
        let c = change(
            "type: Dataplane\nname: reg-2\nnetworking:\n  address: 127.0.0.2\n  inbound:\n  - port: 10001\n    tags: {kuma.io/service: reg-server}\n",
        );
        let expected = Touched::Some {
            whole: BTreeSet::from(["reg-2".to_owned()]),
            endpoints: BTreeMap::from([("demo-1".to_owned(), BTreeSet::from(["reg-server".to_owned()]))]),
        };
        assert_eq!(
            affected(&v, &c),
            BTreeMap::from([("default".to_owned(), expected)])
        );
    }

    #[test]
    fn a_policy_affects_the_proxies_it_selects() {
        let v = view();
        let c = change(
            "type: MeshTimeout\nname: t\nspec:\n  targetRef: {kind: MeshService, name: reg-server}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 1s}\n",
        );
        assert_eq!(affected(&v, &c), only(&["reg-1"]));
        let mesh_wide = change(
            "type: MeshTimeout\nname: t\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 1s}\n",
        );
        assert_eq!(
            affected(&v, &mesh_wide),
            BTreeMap::from([("default".to_owned(), Touched::All)])
        );
    }

    #[test]
    fn a_retargeted_policy_affects_old_and_new_targets() {
        let mut v = view();
        v.apply(&change("type: MeshTimeout\nname: t\nspec:\n  targetRef: {kind: MeshService, name: reg-server}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 1s}\n"));
        let moved = change(
            "type: MeshTimeout\nname: t\nspec:\n  targetRef: {kind: MeshService, name: db}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 1s}\n",
        );
        assert_eq!(affected(&v, &moved), only(&["db-1", "reg-1"]));
    }
}
