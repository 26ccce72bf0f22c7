//! Applying global's batches to a real zone store, and parsing global's address.

use meridian_model::{Format, parse_one};
use meridian_store::prelude::*;
use meridian_store::{Page, SqlStore};

use super::*;

async fn zone_store() -> (SqlStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqlStore::open_sqlite(dir.path()).await.expect("open");
    store.migrate().await.expect("migrate");
    (store, dir)
}

fn upsert(revision: i64, yaml: &str) -> WireChange {
    WireChange::upsert(revision, &parse_one(yaml, Format::Yaml).expect("valid").resource)
}

fn dataplane(name: &str, labels: &str) -> String {
    format!(
        "type: Dataplane\nname: {name}\n{labels}networking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    tags: {{kuma.io/service: a}}\n"
    )
}

fn trace(name: &str, endpoint: &str) -> String {
    format!(
        "type: MeshTrace\nname: {name}\nspec:\n  backends:\n  - name: o\n    type: open_telemetry\n    conf:\n      endpoint: {endpoint}\n"
    )
}

const VIPS: &str = "type: VirtualIPs\nname: default\nmesh: default\nservices: {web: 240.0.0.9}\n";

fn batch(to: i64, snapshot: bool, changes: Vec<WireChange>) -> Batch {
    Batch {
        secrets: Vec::new(),
        from_revision: 0,
        to_revision: to,
        snapshot,
        changes,
    }
}

#[tokio::test]
async fn batches_apply_idempotently_and_move_the_position() {
    let (store, _dir) = zone_store().await;
    let b = batch(
        3,
        false,
        vec![
            upsert(1, "type: Mesh\nname: default\n"),
            upsert(3, &trace("t", "a:4317")),
        ],
    );
    assert_eq!(
        apply(&store, "zone-1", &b).await.map_err(|e| e.to_string()),
        Ok(SyncedOutcome {
            written: 2,
            unchanged: 0,
            deleted: 0
        })
    );
    assert_eq!(store.sync_position().await.expect("position"), 3);
    // The same batch again (a crash before the ACK): nothing is rewritten.
    assert_eq!(
        apply(&store, "zone-1", &b).await.map_err(|e| e.to_string()),
        Ok(SyncedOutcome {
            written: 0,
            unchanged: 2,
            deleted: 0
        })
    );
    let t = store
        .get(&ResourceKey::new(Kind::MeshTrace, "default", "t"))
        .await
        .expect("there");
    assert_eq!(t.version, 1);
}

#[tokio::test]
async fn a_mesh_changed_after_its_policies_is_written_before_them() {
    let (store, _dir) = zone_store().await;
    // Global lists each resource at its latest revision: the mesh, updated last, comes last.
    let in_other = trace("t", "a:4317").replace("name: t\n", "name: t\nmesh: other\n");
    let b = batch(
        5,
        false,
        vec![upsert(2, &in_other), upsert(5, "type: Mesh\nname: other\n")],
    );
    assert_eq!(
        apply(&store, "zone-1", &b)
            .await
            .map_err(|e| e.to_string())
            .map(|o| o.written),
        Ok(2)
    );
}

#[tokio::test]
async fn a_snapshot_replaces_global_resources_and_keeps_the_zones_own() {
    let (store, _dir) = zone_store().await;
    apply(
        &store,
        "zone-1",
        &batch(
            5,
            false,
            vec![
                upsert(1, "type: Mesh\nname: default\n"),
                upsert(2, &trace("kept", "a:4317")),
                upsert(3, &trace("gone", "a:4317")),
                upsert(4, &dataplane("zone-2.gone", "labels: {kuma.io/zone: zone-2}\n")),
            ],
        ),
    )
    .await
    .expect("apply");
    store
        .put(parse_one(&dataplane("dp-1", ""), Format::Yaml).expect("valid"))
        .await
        .expect("zone's own dataplane");
    // The zone's own virtual IPs: what users lost on a resync in Kuma (kumahq/kuma#13592).
    store
        .put(parse_one(VIPS, Format::Yaml).expect("valid"))
        .await
        .expect("virtual IPs");
    let snap = batch(
        9,
        true,
        vec![
            upsert(1, "type: Mesh\nname: default\n"),
            upsert(2, &trace("kept", "a:4317")),
            upsert(8, &trace("new", "b:4317")),
        ],
    );
    assert_eq!(
        apply(&store, "zone-1", &snap).await.map_err(|e| e.to_string()),
        Ok(SyncedOutcome {
            written: 1,
            unchanged: 2,
            deleted: 2
        })
    );
    let names: Vec<String> = store
        .list(Kind::MeshTrace, None, Page { size: 10, offset: 0 })
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|s| s.resource.name)
        .collect();
    assert_eq!(names, ["kept", "new"]);
    store
        .get(&ResourceKey::new(Kind::Dataplane, "default", "dp-1"))
        .await
        .expect("the zone's Dataplane stays");
    let vips = store
        .get(&ResourceKey::new(Kind::VirtualIPs, "default", "default"))
        .await
        .expect("the zone's virtual IPs stay");
    assert_eq!(vips.version, 1, "untouched");
    assert!(
        store
            .get(&ResourceKey::new(Kind::Dataplane, "default", "zone-2.gone"))
            .await
            .is_err(),
        "what zone-2 no longer reports goes"
    );
    assert_eq!(store.sync_position().await.expect("position"), 9);
}

#[tokio::test]
async fn a_batch_with_a_bad_resource_is_refused_whole() {
    let (store, _dir) = zone_store().await;
    let mut bad = upsert(2, &trace("t", "a:4317"));
    bad.resource = bad.resource.replace("a:4317", "no-port");
    let b = batch(2, false, vec![upsert(1, "type: Mesh\nname: default\n"), bad]);
    let err = apply(&store, "zone-1", &b)
        .await
        .map_err(|e| e.to_string())
        .expect_err("refused");
    assert!(err.contains("spec.backends[0].conf.endpoint"), "{err}");
    assert_eq!(
        store.revision().await.expect("revision"),
        0,
        "nothing was written"
    );
    assert_eq!(store.sync_position().await.expect("position"), 0);
    // Global never sends a zone its own inventory, nor its virtual IPs.
    for own in [
        dataplane("web", ""),
        dataplane("zone-1.web", "labels: {kuma.io/zone: zone-1}\n"),
        VIPS.to_owned(),
    ] {
        let err = apply(&store, "zone-1", &batch(3, false, vec![upsert(3, &own)]))
            .await
            .expect_err("refused");
        assert!(matches!(err, ApplyError::NotGlobals { .. }), "{err}");
    }
}

#[test]
fn global_addresses() {
    let plain = GlobalEndpoint::parse("grpc://127.0.0.1:5685", None).expect("valid");
    assert_eq!(plain.url, "http://127.0.0.1:5685");
    let tls = GlobalEndpoint::parse("grpcs://global.example:5685", Some(b"ca".to_vec())).expect("valid");
    assert_eq!(tls.url, "https://global.example:5685");
    assert!(
        GlobalEndpoint::parse("grpcs://global.example:5685", None)
            .is_err_and(|e| e.to_string().contains("--global-ca-file"))
    );
    assert!(GlobalEndpoint::parse("grpc://127.0.0.1:5685", Some(b"ca".to_vec())).is_err());
    assert!(GlobalEndpoint::parse("http://127.0.0.1:5685", None).is_err());
    assert!(GlobalEndpoint::parse("grpc://", None).is_err());
}

#[tokio::test]
async fn the_inventory_is_the_zones_own_resources_and_their_changes() {
    let (store, _dir) = zone_store().await;
    apply(
        &store,
        "zone-1",
        &batch(
            2,
            false,
            vec![
                upsert(1, "type: Mesh\nname: default\n"),
                upsert(2, &dataplane("zone-2.web", "labels: {kuma.io/zone: zone-2}\n")),
            ],
        ),
    )
    .await
    .expect("apply");
    let mine = parse_one(&dataplane("web", ""), Format::Yaml).expect("valid");
    store.put(mine.clone()).await.expect("put");
    store
        .put(parse_one(VIPS, Format::Yaml).expect("valid"))
        .await
        .expect("virtual IPs");
    let (at, full) = full_inventory(&store).await.expect("inventory");
    assert!(full.full);
    let names: Vec<&str> = full.changes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["web"],
        "not the mesh, not zone-2's Dataplane, not the virtual IPs"
    );

    assert_eq!(inventory_since(&store, at).await.expect("since"), (at, None));
    store
        .delete(&mine.resource.key(), Default::default())
        .await
        .expect("delete");
    let (now, delta) = inventory_since(&store, at).await.expect("since");
    let delta = delta.expect("a change");
    assert!(!delta.full);
    assert_eq!(delta.changes, [WireChange::delete(now, &mine.resource.key())]);
}
