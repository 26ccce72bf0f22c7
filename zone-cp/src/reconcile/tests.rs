//! The reconciler against a real store: what a readiness flip patches and what it translates.

use std::sync::Arc;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use meridian_model::{Format, parse_one};
use meridian_store::{SqlStore, put_with_defaults};
use prost::Message;

use super::view::dataplane;
use super::*;
use crate::xds::cache::{CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot};
use crate::xds::translate::{Identity, proxy_snapshot};

struct Zone {
    store: Arc<SqlStore>,
    reconciler: Reconciler,
    cache: SnapshotCache,
    metrics: Arc<XdsMetrics>,
    _dir: tempfile::TempDir,
}

fn dp_yaml(name: &str, service: &str, protocol: &str, ready: bool, calls: &[&str]) -> String {
    let outbound: String = calls
        .iter()
        .enumerate()
        .map(|(i, s)| format!("  - port: {}\n    tags: {{kuma.io/service: {s}}}\n", 20001 + i))
        .collect();
    let outbound = if outbound.is_empty() {
        String::new()
    } else {
        format!("  outbound:\n{outbound}")
    };
    format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    servicePort: 8080\n    tags: {{kuma.io/service: {service}, kuma.io/protocol: {protocol}}}\n    health: {{ready: {ready}}}\n{outbound}"
    )
}

impl Zone {
    async fn new(mesh: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SqlStore::open_sqlite(dir.path()).await.expect("open"));
        store.migrate().await.expect("migrate");
        let (cache, metrics) = (SnapshotCache::default(), Arc::new(XdsMetrics::default()));
        let reconciler = Reconciler::new(store.clone(), cache.clone(), metrics.clone());
        let mut zone = Zone {
            store,
            reconciler,
            cache,
            metrics,
            _dir: dir,
        };
        zone.put(mesh).await;
        zone.put(&dp_yaml("backend-1", "backend", "http", true, &[]))
            .await;
        for i in 1..=3 {
            let name = format!("web-{i}");
            zone.put(&dp_yaml(&name, "web", "http", true, &["backend", "db"]))
                .await;
        }
        zone
    }

    /// Writes `yaml` and lets the reconciler catch up; returns how many proxies it translated
    /// in full and how many it patched.
    async fn put(&mut self, yaml: &str) -> (u64, u64) {
        let submission = parse_one(yaml, Format::Yaml).expect("valid");
        put_with_defaults(&*self.store, submission).await.expect("put");
        // What the standalone zone's CA job would have done by now, once asked.
        if yaml.contains("enabledBackend: ca-1") {
            super::cas::ensure(&*self.store, "default", "ca-1")
                .await
                .expect("mesh CA");
        }
        let (full, patched) = (
            self.metrics.generations.get(),
            self.metrics.endpoint_patches.get(),
        );
        self.reconciler.catch_up().await.expect("catch up");
        (
            self.metrics.generations.get() - full,
            self.metrics.endpoint_patches.get() - patched,
        )
    }

    fn snapshot(&self, name: &str) -> Arc<Snapshot> {
        self.cache
            .snapshot(&ProxyId::new("default", name))
            .expect("a snapshot")
    }

    /// What a full translation of `name` makes of the zone as it is now.
    async fn translated(&self, name: &str) -> Snapshot {
        let r = &self.reconciler;
        let resources = r.view.meshes.get("default").expect("mesh");
        let mut ctx = MeshContext::new(resources.values().map(|r| &**r));
        ctx.zones = r.zones();
        let ca = match &ctx.tls {
            Some(tls) => Some(
                super::cas::MeshCas::default()
                    .get(&*r.store, "default", &tls.backend)
                    .await
                    .expect("CA")
                    .expect("a CA"),
            ),
            None => None,
        };
        let dp = r
            .view
            .dataplanes("default")
            .find(|d| d.name == name)
            .expect("dataplane");
        let leaf = r
            .leaves
            .get(&ProxyId::new("default", name))
            .map(|i| i.leaf.clone());
        assert_eq!(
            leaf.is_some(),
            ca.is_some(),
            "a certificate exactly when mTLS is on"
        );
        let identity = ca.as_ref().zip(leaf.as_ref()).map(|(ca, leaf)| Identity {
            ca_cert: &ca.cert,
            cert: &leaf.cert,
            key: &leaf.key,
        });
        proxy_snapshot(&ctx, name, &dp.labels, dataplane(dp).expect("spec"), identity)
    }

    /// Each of the three callers' snapshots is what a full translation makes of the zone now.
    async fn callers_hold_what_a_full_translation_makes(&self) {
        for caller in ["web-1", "web-2", "web-3"] {
            let held = self.snapshot(caller).digest();
            assert_eq!(held, self.translated(caller).await.digest(), "{caller}");
        }
    }

    fn health(&self, caller: &str, service: &str) -> Vec<i32> {
        let snap = self.snapshot(caller);
        let cla = &snap.of_type(ENDPOINT).expect("endpoints")[service];
        let cla = ClusterLoadAssignment::decode(cla.resource.value.as_slice()).expect("decodes");
        cla.endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .map(|e| e.health_status)
            .collect()
    }
}

fn versions(snap: &Snapshot, type_url: &str) -> Vec<(String, String)> {
    let items = snap.of_type(type_url).into_iter().flatten();
    items.map(|(n, v)| (n.clone(), v.version.clone())).collect()
}

async fn flip_patches_only_the_callers_endpoints(mesh: &str) {
    let mut zone = Zone::new(mesh).await;
    let before = zone.snapshot("web-1");
    let healthy = envoy_types::pb::envoy::config::core::v3::HealthStatus::Healthy as i32;
    assert_eq!(zone.health("web-1", "backend"), [healthy]);

    let counts = zone
        .put(&dp_yaml("backend-1", "backend", "http", false, &[]))
        .await;
    assert_eq!(counts, (1, 3), "backend-1 in full, its three callers patched");
    let after = zone.snapshot("web-1");
    assert_ne!(
        zone.health("web-1", "backend"),
        [healthy],
        "the caller sees it unready"
    );
    for type_url in [CLUSTER, LISTENER, ROUTE] {
        assert_eq!(
            versions(&before, type_url),
            versions(&after, type_url),
            "{type_url}"
        );
    }
    zone.callers_hold_what_a_full_translation_makes().await;
    let counts = zone
        .put(&dp_yaml("backend-1", "backend", "http", false, &[]))
        .await;
    assert_eq!(counts, (0, 0), "an unchanged write touches nothing");
}

#[tokio::test]
async fn a_readiness_flip_patches_only_the_callers_endpoints() {
    flip_patches_only_the_callers_endpoints("type: Mesh\nname: default\n").await;
}

#[tokio::test]
async fn with_mtls_a_readiness_flip_patches_only_the_callers_endpoints() {
    let mesh = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n";
    flip_patches_only_the_callers_endpoints(mesh).await;
}

#[tokio::test]
async fn callers_whose_clusters_change_are_translated_in_full() {
    let mut zone = Zone::new("type: Mesh\nname: default\n").await;
    // With no instance, `db` is taken for HTTP; its first instance says TCP, which changes
    // the callers' cluster, route and listener, not only their endpoints.
    let counts = zone.put(&dp_yaml("db-1", "db", "tcp", true, &[])).await;
    assert_eq!(counts, (4, 0), "db-1 and its three callers in full");
    assert!(
        zone.snapshot("web-1")
            .of_type(ROUTE)
            .is_none_or(|r| !r.contains_key("outbound:db")),
        "db is TCP now"
    );
    zone.callers_hold_what_a_full_translation_makes().await;
    // A second TCP instance changes endpoints only.
    assert_eq!(zone.put(&dp_yaml("db-2", "db", "tcp", true, &[])).await, (1, 3));
}

const MTLS: &str = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n";

/// A mesh-wide MeshTrafficPermission that keeps `from` out (the mesh's default lets all in).
fn deny(from: &str) -> String {
    format!(
        "type: MeshTrafficPermission\nmesh: default\nname: deny\nspec:\n  targetRef: {{kind: Mesh}}\n  from:\n  - targetRef: {{kind: MeshService, name: {from}}}\n    default: {{action: Deny}}\n"
    )
}

#[tokio::test]
async fn a_policy_change_translates_only_the_types_its_kind_can_alter() {
    let mut zone = Zone::new(MTLS).await;
    let (web, backend) = (zone.snapshot("web-1"), zone.snapshot("backend-1"));
    let partial = zone.metrics.partial_generations.get();
    assert_eq!(zone.put(&deny("web")).await, (0, 0), "nothing in full");
    assert_eq!(
        zone.metrics.partial_generations.get() - partial,
        4,
        "every proxy, in its listeners"
    );
    assert_ne!(
        versions(&backend, LISTENER),
        versions(&zone.snapshot("backend-1"), LISTENER),
        "backend-1 keeps web out"
    );
    for type_url in [CLUSTER, ENDPOINT, ROUTE] {
        let now = zone.snapshot("web-1");
        assert_eq!(versions(&web, type_url), versions(&now, type_url), "{type_url}");
    }
    zone.callers_hold_what_a_full_translation_makes().await;
    assert_eq!(
        zone.snapshot("backend-1").digest(),
        zone.translated("backend-1").await.digest()
    );
}

#[tokio::test]
async fn a_policy_change_in_a_batch_with_other_endpoints_translates_those_callers_in_full() {
    let mut zone = Zone::new(MTLS).await;
    // Both committed before the reconciler looks: one batch.
    for yaml in [deny("web"), dp_yaml("backend-1", "backend", "http", false, &[])] {
        let submission = parse_one(&yaml, Format::Yaml).expect("valid");
        put_with_defaults(&*zone.store, submission).await.expect("put");
    }
    let (full, partial) = (
        zone.metrics.generations.get(),
        zone.metrics.partial_generations.get(),
    );
    zone.reconciler.catch_up().await.expect("catch up");
    assert_eq!(
        (
            zone.metrics.generations.get() - full,
            zone.metrics.partial_generations.get() - partial
        ),
        (4, 0),
        "backend-1 and its callers in full"
    );
    zone.callers_hold_what_a_full_translation_makes().await;
}
