//! Listing: pages in name order, and reading every page.

use meridian_model::Kind;

use super::{futures_join_all, mk_mesh, mk_trace, put, sqlite};
use crate::{Page, Store, keys, list_all};

pub(super) async fn lists_page_in_name_order(store: &dyn Store) {
    put(store, mk_mesh("default")).await;
    put(store, mk_mesh("other")).await;
    for name in ["e", "c", "a", "d", "b"] {
        put(store, mk_trace("default", name, "a:4317")).await;
    }
    put(store, mk_trace("other", "z", "a:4317")).await;
    let page = |size, offset| Page { size, offset };
    let first = store
        .list(Kind::MeshTrace, Some("default"), page(2, 0))
        .await
        .expect("list");
    assert_eq!(first.total, 5);
    let names: Vec<&str> = first.items.iter().map(|s| s.resource.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let last = store
        .list(Kind::MeshTrace, Some("default"), page(2, 4))
        .await
        .expect("list");
    assert_eq!(last.items.len(), 1);
    assert_eq!(last.items[0].resource.name, "e");
    let all = store
        .list(Kind::MeshTrace, None, page(100, 0))
        .await
        .expect("list");
    assert_eq!(all.total, 6);
    let meshes = store
        .list(Kind::Mesh, Some("ignored"), page(100, 0))
        .await
        .expect("list");
    assert_eq!(meshes.total, 2);
}

#[tokio::test]
async fn list_all_reads_past_one_page() {
    let fixture = sqlite().await;
    let store = &*fixture.store;
    put(store, mk_mesh("default")).await;
    let names: Vec<String> = (0..2345).map(|i| format!("t{i:05}")).collect();
    for chunk in names.chunks(200) {
        futures_join_all(chunk.iter().map(|n| put(store, mk_trace("default", n, "a:4317")))).await;
    }
    let all = list_all(store, Kind::MeshTrace, Some("default"))
        .await
        .expect("list");
    let listed: Vec<&str> = all.iter().map(|s| s.resource.name.as_str()).collect();
    assert_eq!(listed, names, "every one, once, in name order");
    assert_eq!(keys(store, Kind::MeshTrace).await.expect("keys").len(), 2345);
}

/// Dataplanes named `ZONE.NAME` (a zone's inventory on global) count per zone; local ones,
/// other kinds and other meshes' names do not mix in.
pub(super) async fn zones_inventories_are_counted_by_name(store: &crate::SqlStore) {
    put(store, mk_mesh("default")).await;
    put(store, mk_mesh("other")).await;
    let dataplane = |mesh: &str, name: &str, zone: Option<&str>| {
        let labels = zone.map_or(String::new(), |z| format!("labels: {{kuma.io/zone: {z}}}\n"));
        super::mk(&format!(
            "type: Dataplane\nmesh: {mesh}\nname: {name}\n{labels}networking:\n  address: 127.0.0.1\n  inbound:\n  - port: 1\n    tags: {{kuma.io/service: s}}\n"
        ))
    };
    for (mesh, name, zone) in [
        ("default", "zone-1.a", Some("zone-1")),
        ("default", "zone-1.b", Some("zone-1")),
        ("other", "zone-1.a", Some("zone-1")),
        ("default", "zone-2.c", Some("zone-2")),
        ("default", "local", None),
    ] {
        put(store, dataplane(mesh, name, zone)).await;
    }
    put(store, mk_trace("default", "t", "a:4317")).await;
    let counts = store.count_by_zone(Kind::Dataplane).await.expect("count");
    let expected: std::collections::BTreeMap<String, u64> =
        [("zone-1".to_owned(), 3), ("zone-2".to_owned(), 1)].into();
    assert_eq!(counts, expected);
    assert!(
        store
            .count_by_zone(Kind::MeshTrace)
            .await
            .expect("count")
            .is_empty()
    );
}
