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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use meridian_model::matching::{ProxyView, ToPolicy, selects};
use meridian_model::policies::dataplane::{DataplaneSpec, SERVICE_TAG};
use meridian_model::targetref::TargetRefKind;
use meridian_model::{Kind, Resource, ResourceKey, Spec};
use meridian_store::{Change, Store, StoreError};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::xds::cache::{ProxyId, SnapshotCache};
use crate::xds::metrics::XdsMetrics;
use crate::xds::translate::{MeshContext, proxy_snapshot};

const BATCH: u32 = 1000;

/// The zone's resources, by mesh then kind and name.
#[derive(Default)]
pub struct ZoneView {
    meshes: BTreeMap<String, BTreeMap<(Kind, String), Resource>>,
}

fn dataplane(r: &Resource) -> Option<&DataplaneSpec> {
    match &r.spec {
        Spec::Dataplane(d) => Some(d),
        _ => None,
    }
}

fn served(dp: &DataplaneSpec) -> impl Iterator<Item = &String> {
    dp.networking
        .inbound
        .iter()
        .flatten()
        .filter_map(|i| i.tags.get(SERVICE_TAG))
}

impl ZoneView {
    fn get(&self, key: &ResourceKey) -> Option<&Resource> {
        let mesh = if key.kind == Kind::Mesh {
            &key.name
        } else {
            &key.mesh
        };
        self.meshes.get(mesh)?.get(&(key.kind, key.name.clone()))
    }

    fn apply(&mut self, change: &Change) {
        match change {
            Change::Upsert(stored) => {
                let r = &stored.resource;
                let mesh = if r.kind() == Kind::Mesh { &r.name } else { &r.mesh };
                self.meshes
                    .entry(mesh.clone())
                    .or_default()
                    .insert((r.kind(), r.name.clone()), r.clone());
            }
            Change::Delete { key, .. } => {
                let mesh = if key.kind == Kind::Mesh {
                    &key.name
                } else {
                    &key.mesh
                };
                if let Some(m) = self.meshes.get_mut(mesh) {
                    m.remove(&(key.kind, key.name.clone()));
                }
            }
        }
    }

    fn dataplanes<'a>(&'a self, mesh: &str) -> impl Iterator<Item = &'a Resource> + 'a {
        self.meshes
            .get(mesh)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|r| r.kind() == Kind::Dataplane)
    }

    /// Proxies a change can affect, judged against the view before the change is applied.
    fn affected(&self, change: &Change, out: &mut BTreeMap<String, Option<BTreeSet<String>>>) {
        let key = change_key(change);
        match key.kind {
            Kind::Mesh => {
                out.insert(key.name.clone(), None);
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
                let mut names = BTreeSet::from([key.name.clone()]);
                for r in self.dataplanes(&key.mesh) {
                    let Some(dp) = dataplane(r) else { continue };
                    if dp
                        .networking
                        .outbound
                        .iter()
                        .flatten()
                        .any(|o| o.service().is_some_and(|s| services.contains(&s.to_owned())))
                    {
                        names.insert(r.name.clone());
                    }
                }
                // `None` means the whole mesh is regenerated anyway.
                if let Some(set) = out
                    .entry(key.mesh.clone())
                    .or_insert_with(|| Some(BTreeSet::new()))
                {
                    set.extend(names);
                }
            }
            _ => {
                // A policy touches the proxies its top-level targetRef selects, before or after
                // the change; a mesh-wide one (or an older kind without targetRef), all of them.
                let mut targets = Vec::new();
                for version in [self.get(&key), upserted(change)].into_iter().flatten() {
                    match ToPolicy::new(version).map(|p| p.top) {
                        Some(t) if t.kind != TargetRefKind::Mesh => targets.push(t),
                        _ => {
                            out.insert(key.mesh.clone(), None);
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
                if let Some(set) = out
                    .entry(key.mesh.clone())
                    .or_insert_with(|| Some(BTreeSet::new()))
                {
                    set.extend(names);
                }
            }
        }
    }
}

/// Whether proxies are generated from this resource: not from other zones' inventory or
/// ingresses, which only cross-zone routing will use.
fn translated(key: &ResourceKey) -> bool {
    key.kind != Kind::ZoneIngress && key.synced_zone().is_none()
}

fn change_key(change: &Change) -> ResourceKey {
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

pub struct Reconciler {
    store: Arc<dyn Store>,
    cache: SnapshotCache,
    metrics: Arc<XdsMetrics>,
    view: ZoneView,
    applied: i64,
}

impl Reconciler {
    pub fn new(store: Arc<dyn Store>, cache: SnapshotCache, metrics: Arc<XdsMetrics>) -> Self {
        Self {
            store,
            cache,
            metrics,
            view: ZoneView::default(),
            applied: 0,
        }
    }

    /// Runs until `shutdown` fires; returns an error only when the store fails for good.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), StoreError> {
        let mut commits = self.store.watch();
        self.catch_up().await?;
        info!(revision = self.applied, "proxy snapshots generated");
        loop {
            tokio::select! {
                changed = commits.changed() => if changed.is_err() { return Ok(()) },
                _ = shutdown.changed() => return Ok(()),
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
            let mut affected = BTreeMap::new();
            let mut removed = Vec::new();
            for change in &changes {
                if !translated(&change_key(change)) {
                    self.applied = change.revision();
                    continue;
                }
                self.view.affected(change, &mut affected);
                self.view.apply(change);
                self.applied = change.revision();
                if let Change::Delete { key, .. } = change
                    && key.kind == Kind::Dataplane
                {
                    removed.push(ProxyId::new(key.mesh.clone(), key.name.clone()));
                }
            }
            for (mesh, names) in affected {
                self.regenerate(&mesh, names.as_ref());
            }
            for id in removed.iter().filter(|id| {
                self.view
                    .get(&ResourceKey::new(Kind::Dataplane, &id.mesh, &id.name))
                    .is_none()
            }) {
                self.cache.remove(id);
            }
        }
    }

    fn regenerate(&self, mesh: &str, only: Option<&BTreeSet<String>>) {
        let resources = self.view.meshes.get(mesh);
        let ctx = MeshContext::new(resources.into_iter().flat_map(|m| m.values()));
        for r in self.view.dataplanes(mesh) {
            if only.is_some_and(|names| !names.contains(&r.name)) {
                continue;
            }
            let Some(dp) = dataplane(r) else { continue };
            let id = ProxyId::new(mesh, r.name.clone());
            let changed = self.cache.set(&id, proxy_snapshot(&ctx, &r.name, &r.labels, dp));
            self.metrics.generations.inc();
            debug!(proxy = %id, changed, "snapshot regenerated");
        }
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

    fn affected(v: &ZoneView, c: &Change) -> BTreeMap<String, Option<BTreeSet<String>>> {
        let mut out = BTreeMap::new();
        v.affected(c, &mut out);
        out
    }

    fn only(names: &[&str]) -> BTreeMap<String, Option<BTreeSet<String>>> {
        BTreeMap::from([(
            "default".to_owned(),
            Some(names.iter().map(|n| n.to_string()).collect()),
        )])
    }

    #[test]
    fn a_dataplane_affects_itself_and_its_callers() {
        let v = view();
        let c = change(
            "type: Dataplane\nname: reg-2\nnetworking:\n  address: 127.0.0.2\n  inbound:\n  - port: 10001\n    tags: {kuma.io/service: reg-server}\n",
        );
        assert_eq!(affected(&v, &c), only(&["demo-1", "reg-2"]));
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
            BTreeMap::from([("default".to_owned(), None)])
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
