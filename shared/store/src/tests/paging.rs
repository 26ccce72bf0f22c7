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
