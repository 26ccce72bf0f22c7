//! Traces kept with the writes they belong to: on the row and its tombstone, through a
//! synced batch and a cascade, and only for as long as someone may still continue them.

use meridian_model::SpanContext;

use super::{mk_mesh, mk_trace, put, trace_key};
use crate::{Change, DeleteOptions, Store, SyncedOp, TRACE_MEMORY_MS};

fn span(n: u8) -> SpanContext {
    SpanContext {
        trace_id: [n; 16],
        span_id: [n; 8],
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn changes_after(store: &dyn Store, after: i64) -> Vec<Change> {
    store.changes_since(after, 100).await.expect("changes")
}

pub(super) async fn writes_keep_their_trace(store: &dyn Store) {
    put(store, mk_mesh("default")).await;
    let before = store.revision().await.expect("revision");
    let mut traced = mk_trace("default", "t", "a:4317");
    traced.trace = Some(span(1));
    let stored = put(store, traced).await.stored().clone();
    assert_eq!(stored.trace, Some(span(1)));
    assert_eq!(
        store.get(&trace_key("default", "t")).await.expect("get").trace,
        Some(span(1))
    );
    let changes = changes_after(store, before).await;
    assert_eq!(changes.len(), 1);
    assert_eq!(
        changes[0].trace(now_ms()),
        Some(span(1)),
        "the change carries its trace"
    );
    assert_eq!(
        changes[0].trace(now_ms() + TRACE_MEMORY_MS),
        None,
        "a trace long finished is not continued"
    );

    // An untraced write replaces the trace: the change it makes belongs to no trace.
    let before = store.revision().await.expect("revision");
    put(store, mk_trace("default", "t", "b:4317")).await;
    assert_eq!(changes_after(store, before).await[0].trace(now_ms()), None);

    // A traced delete leaves its trace on the tombstone.
    let before = store.revision().await.expect("revision");
    let options = DeleteOptions {
        trace: Some(span(2)),
        ..DeleteOptions::default()
    };
    store
        .delete(&trace_key("default", "t"), options)
        .await
        .expect("delete");
    let changes = changes_after(store, before).await;
    assert!(matches!(changes[..], [Change::Delete { .. }]), "{changes:?}");
    assert_eq!(changes[0].trace(now_ms()), Some(span(2)));

    // A synced batch keeps each write's own trace; a cascade gives every delete its trace.
    let before = store.revision().await.expect("revision");
    let mut a = mk_trace("default", "a", "a:4317");
    a.trace = Some(span(3));
    let ops = vec![
        SyncedOp::Put(Box::new(a)),
        SyncedOp::Put(Box::new(mk_trace("default", "b", "a:4317"))),
    ];
    store.apply_synced(ops, None).await.expect("synced");
    let traces: Vec<_> = changes_after(store, before)
        .await
        .iter()
        .map(|c| c.trace(now_ms()))
        .collect();
    assert_eq!(traces, [Some(span(3)), None]);
    let before = store.revision().await.expect("revision");
    let ops = vec![SyncedOp::Delete {
        key: meridian_model::ResourceKey::new(meridian_model::Kind::Mesh, "", "default"),
        trace: Some(span(4)),
    }];
    store.apply_synced(ops, None).await.expect("cascade");
    let changes = changes_after(store, before).await;
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert!(
        changes.iter().all(|c| c.trace(now_ms()) == Some(span(4))),
        "{changes:?}"
    );
}
