//! The snapshot cache: for each proxy, the latest consistent set of Envoy resources, and what
//! the proxy has done with them (connected, ACKed, NACKed). Kept apart from the protocol
//! server, which only reads snapshots and reports status.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use envoy_types::pb::google::protobuf::Any;
use tokio::sync::watch;

use super::consistency::{self, Inconsistent};

pub use super::resource_types::{CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, SECRET, Types};

/// Identifies a proxy: its mesh and Dataplane name (Envoy's node id is `mesh.name`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProxyId {
    pub mesh: String,
    pub name: String,
}

impl ProxyId {
    pub fn new(mesh: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            mesh: mesh.into(),
            name: name.into(),
        }
    }

    /// Parses Envoy's node id, `mesh.name`: a mesh (or the ingresses' `_ingress`) and a
    /// Dataplane name, both DNS-1123 labels, so an id is short and holds nothing but
    /// lowercase letters, digits, `-` and the one dot.
    pub fn from_node_id(id: &str) -> Option<Self> {
        use meridian_model::policies::zone_ingress::INGRESS_NODE_MESH;
        use meridian_model::validate::dns1123_label;
        if id.len() > 2 * 63 + 1 {
            return None;
        }
        let (mesh, name) = id.split_once('.')?;
        let mesh_ok = mesh == INGRESS_NODE_MESH || dns1123_label(mesh).is_ok();
        (mesh_ok && dns1123_label(name).is_ok()).then(|| Self::new(mesh, name))
    }

    pub fn node_id(&self) -> String {
        format!("{}.{}", self.mesh, self.name)
    }
}

impl std::fmt::Display for ProxyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.mesh, self.name)
    }
}

/// One resource with the hash of its content as its version. The resource is shared, so a
/// snapshot made from another (an endpoints patch) copies no encoded bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned {
    pub version: String,
    pub resource: Arc<Any>,
}

impl Versioned {
    pub fn new(resource: Any) -> Self {
        Self {
            version: content_hash(&resource.value),
            resource: Arc::new(resource),
        }
    }
}

/// A 64-bit FNV-1a hash in hex: stable across processes and releases, unlike std's hasher.
pub fn content_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The resources of one type, by name.
pub type Resources = BTreeMap<String, Versioned>;

/// Everything one proxy should have, by type URL and resource name. Each type's resources are
/// shared, so a snapshot made from another (an endpoints patch, a policy change in some types)
/// copies only the types it changes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub resources: BTreeMap<&'static str, Arc<Resources>>,
}

impl Snapshot {
    pub fn insert(&mut self, type_url: &'static str, name: String, resource: Any) {
        let items = self.resources.entry(type_url).or_default();
        Arc::make_mut(items).insert(name, Versioned::new(resource));
    }

    pub fn of_type(&self, type_url: &str) -> Option<&Resources> {
        self.resources.get(type_url).map(|items| &**items)
    }

    /// A hash of every resource's type, name and version: equal digests, equal snapshots.
    pub fn digest(&self) -> u64 {
        let mut h = DefaultHasher::new();
        for (type_url, items) in &self.resources {
            type_url.hash(&mut h);
            for (name, r) in items.iter() {
                name.hash(&mut h);
                r.version.hash(&mut h);
            }
        }
        h.finish()
    }

    /// The version of a whole type, for state-of-the-world: a hash of its resources' versions.
    pub fn type_version(&self, type_url: &str) -> String {
        let mut all = Vec::new();
        for (name, r) in self.of_type(type_url).into_iter().flatten() {
            all.extend_from_slice(name.as_bytes());
            all.push(0);
            all.extend_from_slice(r.version.as_bytes());
        }
        content_hash(&all)
    }
}

/// What [`SnapshotCache::patch_endpoints`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patch {
    /// The assignments are in the snapshot; `true` when that changed it (and so is pushed).
    Patched(bool),
    /// The proxy has no snapshot, or `partial` differs from it beyond endpoints: it needs a
    /// full translation.
    Diverged,
}

/// A rejected push, as Envoy reported it.
#[derive(Clone, Debug, PartialEq)]
pub struct Nack {
    pub type_url: String,
    pub message: String,
    pub at: SystemTime,
}

/// What a proxy has done with its config: shown by inspect and metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyStatus {
    /// Open xDS streams (normally 0 or 1).
    pub streams: u32,
    pub connected_since: Option<SystemTime>,
    pub disconnected_at: Option<SystemTime>,
    /// Last version ACKed, per type URL (a type version, or a resource count for delta).
    pub acked: BTreeMap<String, String>,
    pub nacks: u64,
    pub last_nack: Option<Nack>,
}

struct Entry {
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// The snapshot's [`Snapshot::digest`], so a new one is compared without walking both.
    digest: u64,
    status: ProxyStatus,
    /// Whether the reconciler made this entry's snapshot (the proxy's Dataplane exists); an
    /// entry only a stream made goes when its last stream does.
    registered: bool,
}

/// Proxies are spread over this many locks, so streams and the generator rarely wait on each
/// other.
const SHARDS: usize = 16;

type Shard = Mutex<HashMap<ProxyId, Entry>>;

/// All proxies' snapshots and statuses.
#[derive(Clone)]
pub struct SnapshotCache {
    shards: Arc<[Shard]>,
}

impl Default for SnapshotCache {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }
}

impl SnapshotCache {
    fn shard(&self, id: &ProxyId) -> std::sync::MutexGuard<'_, HashMap<ProxyId, Entry>> {
        let mut h = DefaultHasher::new();
        id.hash(&mut h);
        let shard = &self.shards[(h.finish() % SHARDS as u64) as usize];
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_entry<R>(&self, id: &ProxyId, f: impl FnOnce(&mut Entry) -> R) -> R {
        let mut map = self.shard(id);
        let entry = map.entry(id.clone()).or_insert_with(|| Entry {
            snapshot: watch::Sender::new(Arc::new(Snapshot::default())),
            digest: Snapshot::default().digest(),
            status: ProxyStatus::default(),
            registered: false,
        });
        f(entry)
    }

    /// Replaces a proxy's snapshot once it is found consistent; watchers wake only when it
    /// differs. Returns whether it did; an inconsistent snapshot is refused and the proxy keeps
    /// the one it has. The check and the digest are computed before any lock is taken.
    pub fn set(&self, id: &ProxyId, snapshot: Snapshot) -> Result<bool, Inconsistent> {
        consistency::check(&snapshot)?;
        let digest = snapshot.digest();
        let replaced = self.with_entry(id, |e| {
            e.registered = true;
            if e.digest == digest {
                return None;
            }
            e.digest = digest;
            Some(e.snapshot.send_replace(Arc::new(snapshot)))
        });
        // The old snapshot (often its last owner) is dropped here, outside the shard's lock.
        Ok(replaced.is_some())
    }

    /// Replaces the resources of `types` in the proxy's snapshot with those of `partial` (what
    /// a translation of those types alone made), keeping the rest, once the result is found
    /// consistent. `None` when the proxy has no snapshot to start from (or another write came
    /// first): it needs a full translation.
    pub fn set_types(
        &self,
        id: &ProxyId,
        partial: Snapshot,
        types: Types,
    ) -> Result<Option<bool>, Inconsistent> {
        let current = self.registered(id);
        let Some((current, base)) = current else {
            return Ok(None);
        };
        let mut merged = Snapshot {
            resources: current
                .resources
                .iter()
                .filter(|(type_url, _)| !types.contains(type_url))
                .map(|(type_url, items)| (*type_url, items.clone()))
                .collect(),
        };
        for (type_url, items) in partial.resources {
            if types.contains(type_url) {
                merged.resources.insert(type_url, items);
            }
        }
        consistency::check(&merged)?;
        Ok(self.replace_from(id, base, merged))
    }

    /// Puts the endpoint assignments of `partial` into the proxy's snapshot, when `partial`
    /// agrees with it in everything else: each of its other resources is in the snapshot at the
    /// same version, and each assignment replaces one the snapshot holds. `partial` is what
    /// translation makes of some of the proxy's outbounds; when they agree, a full translation
    /// would differ from the snapshot in those assignments alone, and no name changes, so the
    /// patched snapshot stays consistent without checking it again.
    pub fn patch_endpoints(&self, id: &ProxyId, partial: &Snapshot) -> Patch {
        let current = self.registered(id);
        let Some((current, base)) = current else {
            return Patch::Diverged;
        };
        let agrees = partial.resources.iter().all(|(type_url, items)| {
            let held = current.of_type(type_url);
            items.iter().all(|(name, r)| {
                let same = held.and_then(|h| h.get(name));
                match *type_url {
                    ENDPOINT => same.is_some(),
                    _ => same.is_some_and(|s| s.version == r.version),
                }
            })
        });
        if !agrees {
            return Patch::Diverged;
        }
        let changed: Vec<(&String, &Versioned)> = match (partial.of_type(ENDPOINT), current.of_type(ENDPOINT))
        {
            (Some(assignments), Some(held)) => assignments
                .iter()
                .filter(|(name, r)| held.get(*name).is_some_and(|h| h.version != r.version))
                .collect(),
            _ => Vec::new(),
        };
        if changed.is_empty() {
            return Patch::Patched(false);
        }
        // The other types stay shared with the snapshot patched.
        let mut patched = (*current).clone();
        if let Some(held) = patched.resources.get_mut(ENDPOINT) {
            let held = Arc::make_mut(held);
            for (name, r) in changed {
                held.insert(name.clone(), r.clone());
            }
        }
        match self.replace_from(id, base, patched) {
            Some(changed) => Patch::Patched(changed),
            None => Patch::Diverged,
        }
    }

    /// The snapshot of a proxy the reconciler made, and its digest: what a partial write
    /// starts from.
    fn registered(&self, id: &ProxyId) -> Option<(Arc<Snapshot>, u64)> {
        let map = self.shard(id);
        let e = map.get(id).filter(|e| e.registered)?;
        Some((e.snapshot.borrow().clone(), e.digest))
    }

    /// Replaces the snapshot whose digest was `base` with `snapshot`; returns whether that
    /// changed it, or `None` when another write came first (what was made from `base` is
    /// stale). Only the reconciler writes snapshots, so that is not expected.
    fn replace_from(&self, id: &ProxyId, base: u64, snapshot: Snapshot) -> Option<bool> {
        let digest = snapshot.digest();
        let replaced = self.with_entry(id, |e| {
            if e.digest != base {
                return None;
            }
            if e.digest == digest {
                return Some(None);
            }
            e.digest = digest;
            Some(Some(e.snapshot.send_replace(Arc::new(snapshot))))
        });
        // The old snapshot (often its last owner) is dropped here, outside the shard's lock.
        replaced.map(|old| old.is_some())
    }

    /// Drops a proxy whose Dataplane is gone; its stream, if any, sees an empty snapshot.
    pub fn remove(&self, id: &ProxyId) {
        let mut map = self.shard(id);
        if let Some(entry) = map.get_mut(id) {
            entry.registered = false;
            entry.digest = Snapshot::default().digest();
            entry.snapshot.send_replace(Arc::new(Snapshot::default()));
            if entry.status.streams == 0 {
                map.remove(id);
            }
        }
    }

    /// A stream of the proxy ended: counted off, and the proxy forgotten if that was its last
    /// stream and it has no Dataplane.
    pub fn stream_ended(&self, id: &ProxyId) {
        let mut map = self.shard(id);
        if let Some(entry) = map.get_mut(id) {
            entry.status.streams = entry.status.streams.saturating_sub(1);
            entry.status.disconnected_at = Some(SystemTime::now());
            if entry.status.streams == 0 && !entry.registered {
                map.remove(id);
            }
        }
    }

    /// How many proxies the cache holds (registered, or with a stream open).
    pub fn len(&self) -> usize {
        let shards = self.shards.iter();
        shards
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn watch(&self, id: &ProxyId) -> watch::Receiver<Arc<Snapshot>> {
        self.with_entry(id, |e| e.snapshot.subscribe())
    }

    pub fn snapshot(&self, id: &ProxyId) -> Option<Arc<Snapshot>> {
        self.shard(id).get(id).map(|e| e.snapshot.borrow().clone())
    }

    pub fn status(&self, id: &ProxyId) -> Option<ProxyStatus> {
        self.shard(id).get(id).map(|e| e.status.clone())
    }

    pub fn update_status(&self, id: &ProxyId, f: impl FnOnce(&mut ProxyStatus)) {
        self.with_entry(id, |e| f(&mut e.status));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(bytes: &[u8]) -> Any {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;
        use prost::Message;
        let cluster = Cluster {
            alt_stat_name: String::from_utf8_lossy(bytes).into_owned(),
            ..Default::default()
        };
        Any {
            type_url: CLUSTER.into(),
            value: cluster.encode_to_vec(),
        }
    }

    #[test]
    fn versions_follow_content() {
        assert_eq!(
            Versioned::new(any(b"a")).version,
            Versioned::new(any(b"a")).version
        );
        assert_ne!(
            Versioned::new(any(b"a")).version,
            Versioned::new(any(b"b")).version
        );
    }

    #[test]
    fn watchers_wake_only_on_change() {
        let cache = SnapshotCache::default();
        let id = ProxyId::new("default", "dp-1");
        let mut rx = cache.watch(&id);
        let mut snap = Snapshot::default();
        snap.insert(CLUSTER, "c".into(), any(b"1"));
        assert_eq!(cache.set(&id, snap.clone()), Ok(true));
        assert!(rx.has_changed().unwrap_or(false));
        rx.borrow_and_update();
        assert_eq!(cache.set(&id, snap), Ok(false), "the same content is no change");
        assert!(!rx.has_changed().unwrap_or(true));
    }

    #[test]
    fn an_inconsistent_snapshot_is_refused_and_the_last_good_one_stays() {
        use crate::xds::translate::{eds_cluster, pack};
        let cache = SnapshotCache::default();
        let id = ProxyId::new("default", "dp-1");
        let mut good = Snapshot::default();
        good.insert(CLUSTER, "c".into(), any(b"1"));
        cache.set(&id, good.clone()).expect("consistent");
        let mut rx = cache.watch(&id);
        rx.borrow_and_update();
        // A cluster whose endpoints come over EDS, with no assignment for it.
        let mut bad = good.clone();
        bad.insert(CLUSTER, "web".into(), pack(&eds_cluster("web")));
        assert!(matches!(
            cache.set(&id, bad.clone()),
            Err(Inconsistent::Missing { .. })
        ));
        let clusters = Types::of(&[CLUSTER]);
        assert!(matches!(
            cache.set_types(&id, bad, clusters),
            Err(Inconsistent::Missing { .. })
        ));
        assert_eq!(
            *cache.snapshot(&id).expect("held"),
            good,
            "the last good one stays"
        );
        assert!(!rx.has_changed().unwrap_or(true), "no stream woke");
    }

    #[test]
    fn a_partial_snapshot_replaces_its_types_whole_and_keeps_the_rest() {
        let cache = SnapshotCache::default();
        let id = ProxyId::new("default", "dp-1");
        let clusters = Types::of(&[CLUSTER]);
        let mut partial = Snapshot::default();
        partial.insert(CLUSTER, "b".into(), any(b"2"));
        assert_eq!(
            cache.set_types(&id, partial.clone(), clusters),
            Ok(None),
            "no snapshot to keep the rest of"
        );
        let mut full = Snapshot::default();
        full.insert(CLUSTER, "a".into(), any(b"1"));
        full.insert(LISTENER, "l".into(), any(b"listener"));
        cache.set(&id, full.clone()).expect("consistent");
        assert_eq!(cache.set_types(&id, partial.clone(), clusters), Ok(Some(true)));
        let held = cache.snapshot(&id).expect("held");
        let names: Vec<&String> = held
            .of_type(CLUSTER)
            .into_iter()
            .flatten()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["b"], "clusters replaced as a whole: \"a\" is gone");
        assert_eq!(held.of_type(LISTENER), full.of_type(LISTENER), "listeners kept");
        assert_eq!(
            cache.set_types(&id, partial, clusters),
            Ok(Some(false)),
            "no change"
        );
    }

    #[test]
    fn endpoints_are_patched_only_into_a_snapshot_that_agrees() {
        let cache = SnapshotCache::default();
        let id = ProxyId::new("default", "dp-1");
        let mut full = Snapshot::default();
        full.insert(CLUSTER, "backend".into(), any(b"cluster"));
        full.insert(ENDPOINT, "backend".into(), any(b"one endpoint"));
        full.insert(LISTENER, "inbound".into(), any(b"listener"));
        let mut partial = Snapshot::default();
        partial.insert(CLUSTER, "backend".into(), any(b"cluster"));
        partial.insert(ENDPOINT, "backend".into(), any(b"two endpoints"));
        assert_eq!(
            cache.patch_endpoints(&id, &partial),
            Patch::Diverged,
            "no snapshot yet"
        );
        cache.set(&id, full.clone()).expect("consistent");
        let mut rx = cache.watch(&id);
        rx.borrow_and_update();

        assert_eq!(cache.patch_endpoints(&id, &partial), Patch::Patched(true));
        assert!(rx.has_changed().unwrap_or(false), "the stream wakes");
        let mut expected = full.clone();
        expected.insert(ENDPOINT, "backend".into(), any(b"two endpoints"));
        assert_eq!(
            *cache.snapshot(&id).expect("held"),
            expected,
            "the rest as it was"
        );
        rx.borrow_and_update();
        assert_eq!(cache.patch_endpoints(&id, &partial), Patch::Patched(false));
        assert!(!rx.has_changed().unwrap_or(true), "no change, no wake");

        let mut other_cluster = partial.clone();
        other_cluster.insert(CLUSTER, "backend".into(), any(b"another cluster"));
        let mut new_name = partial.clone();
        new_name.insert(ENDPOINT, "db".into(), any(b"db endpoints"));
        let mut new_listener = partial.clone();
        new_listener.insert(LISTENER, "outbound".into(), any(b"listener"));
        for diverged in [other_cluster, new_name, new_listener] {
            assert_eq!(cache.patch_endpoints(&id, &diverged), Patch::Diverged);
        }
        assert_eq!(
            *cache.snapshot(&id).expect("held"),
            expected,
            "nothing half-patched"
        );
        cache.remove(&id);
        assert_eq!(cache.patch_endpoints(&id, &partial), Patch::Diverged, "removed");
    }

    #[test]
    fn a_proxy_only_a_stream_made_goes_with_its_last_stream() {
        let cache = SnapshotCache::default();
        let stray = ProxyId::new("default", "nobody");
        let _rx = cache.watch(&stray);
        cache.update_status(&stray, |s| s.streams += 1);
        cache.stream_ended(&stray);
        assert!(cache.is_empty(), "nothing kept for a proxy with no Dataplane");
        let known = ProxyId::new("default", "dp-1");
        cache.set(&known, Snapshot::default()).expect("consistent");
        cache.update_status(&known, |s| s.streams += 1);
        cache.stream_ended(&known);
        assert_eq!(
            cache.len(),
            1,
            "a registered proxy keeps its snapshot for its next stream"
        );
        cache.remove(&known);
        assert!(cache.is_empty());
    }

    #[test]
    fn node_ids() {
        assert_eq!(
            ProxyId::from_node_id("default.demo-1"),
            Some(ProxyId::new("default", "demo-1"))
        );
        assert_eq!(
            ProxyId::from_node_id("_ingress.ingress-1"),
            Some(ProxyId::new("_ingress", "ingress-1"))
        );
        for bad in [
            "nodot",
            "default.web\nforged",
            "Default.web",
            "a.b.c",
            &format!("default.{}", "x".repeat(1 << 20)),
        ] {
            assert_eq!(ProxyId::from_node_id(bad), None, "{bad:.40}");
        }
        assert_eq!(ProxyId::new("m", "n").node_id(), "m.n");
    }
}
