//! The store conformance suite: every test runs against SQLite and a throwaway Postgres.

use crate::prelude::*;
use std::sync::Arc;

use meridian_model::{Format, Kind, ResourceKey, Submission, parse_one};
use meridian_testing::Postgres;

use super::{Change, DeleteOptions, PutOutcome, SqlStore, Store, StoreError, SyncedOp, SyncedOutcome};

/// A store and whatever must outlive it (a temp dir, a Postgres cluster).
struct Fixture {
    store: Arc<SqlStore>,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<Postgres>,
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqlStore::open_sqlite(dir.path()).await.expect("open sqlite");
    store.migrate().await.expect("migrate");
    Fixture {
        store: Arc::new(store),
        _dir: Some(dir),
        _pg: None,
    }
}

async fn postgres() -> Fixture {
    let pg = Postgres::start().expect("start postgres");
    let store = SqlStore::connect(&pg.url()).await.expect("connect");
    store.migrate().await.expect("migrate");
    Fixture {
        store: Arc::new(store),
        _dir: None,
        _pg: Some(pg),
    }
}

mod paging;
mod replicas;
mod traces;
use paging::{lists_page_in_name_order, zones_inventories_are_counted_by_name};
use traces::writes_keep_their_trace;

macro_rules! conformance {
    ($($name:ident),+ $(,)?) => {
        mod sqlite_store {
            $(#[tokio::test] async fn $name() { super::$name(&*super::sqlite().await.store).await; })+
        }
        mod postgres_store {
            $(#[tokio::test] async fn $name() { super::$name(&*super::postgres().await.store).await; })+
        }
    };
}

conformance!(
    create_update_and_unchanged,
    stale_versions_conflict,
    resources_need_their_mesh,
    deletes_leave_tombstones,
    non_empty_mesh_is_kept_unless_cascade,
    lists_page_in_name_order,
    changes_resume_from_a_revision,
    compacted_tombstones_need_a_snapshot,
    concurrent_writes_get_distinct_revisions,
    sync_position_is_kept,
    the_first_secret_wins,
    snapshots_hold_everything_at_their_revision,
    synced_batches_apply_whole_or_not_at_all,
    writes_that_change_nothing_announce_nothing,
    statuses_are_kept_by_name_and_take_no_revision,
    zones_inventories_are_counted_by_name,
    writes_keep_their_trace,
);

fn mk(yaml: &str) -> Submission {
    parse_one(yaml, Format::Yaml).expect("valid test resource")
}

fn mk_mesh(name: &str) -> Submission {
    mk(&format!("type: Mesh\nname: {name}\n"))
}

fn mk_trace(mesh: &str, name: &str, endpoint: &str) -> Submission {
    mk(&format!(
        "type: MeshTrace\nname: {name}\nmesh: {mesh}\nspec:\n  backends:\n  - name: otel\n    type: open_telemetry\n    conf:\n      endpoint: {endpoint}\n"
    ))
}

fn trace_key(mesh: &str, name: &str) -> ResourceKey {
    ResourceKey::new(Kind::MeshTrace, mesh, name)
}

async fn put(store: &dyn Store, s: Submission) -> PutOutcome {
    store.put(s).await.expect("put")
}

async fn create_update_and_unchanged(store: &dyn Store) {
    put(store, mk_mesh("default")).await;
    let created = put(store, mk_trace("default", "t", "a:4317")).await;
    assert!(matches!(created, PutOutcome::Created(_)), "{created:?}");
    assert_eq!(created.stored().version, 1);
    let rev = store.revision().await.expect("revision");
    assert_eq!(created.stored().revision, rev);
    let mut watch = store.watch();
    assert_eq!(*watch.borrow_and_update(), rev, "watchers see each commit");

    let again = put(store, mk_trace("default", "t", "a:4317")).await;
    assert!(matches!(again, PutOutcome::Unchanged(_)), "{again:?}");
    assert_eq!(
        store.revision().await.expect("revision"),
        rev,
        "an unchanged put takes no revision"
    );

    let updated = put(store, mk_trace("default", "t", "b:4317")).await;
    assert!(matches!(updated, PutOutcome::Updated(_)), "{updated:?}");
    assert_eq!(updated.stored().version, 2);
    assert!(updated.stored().revision > rev);
    assert_eq!(
        updated.stored().creation_time_ms,
        created.stored().creation_time_ms
    );

    let got = store.get(&trace_key("default", "t")).await.expect("get");
    assert_eq!(got, *updated.stored());
}

async fn stale_versions_conflict(store: &dyn Store) {
    put(store, mk_mesh("default")).await;
    let mut create_only = mk_trace("default", "t", "a:4317");
    create_only.expected_version = Some(0);
    put(store, create_only.clone()).await;
    put(store, mk_trace("default", "t", "b:4317")).await;

    let mut stale = mk_trace("default", "t", "c:4317");
    stale.expected_version = Some(1);
    let err = store.put(stale).await.expect_err("stale version must be refused");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(err.to_string().contains("current version is 2"), "{err}");

    let err = store
        .put(create_only)
        .await
        .expect_err("version 0 means create only");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    let mut fresh = mk_trace("default", "t", "c:4317");
    fresh.expected_version = Some(2);
    assert_eq!(put(store, fresh).await.stored().version, 3);

    let err = store
        .delete(
            &trace_key("default", "t"),
            DeleteOptions {
                cascade: false,
                expected_version: Some(2),
                trace: None,
            },
        )
        .await
        .expect_err("stale delete");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    store.get(&trace_key("default", "t")).await.expect("still there");
}

async fn resources_need_their_mesh(store: &dyn Store) {
    let before = store.revision().await.expect("revision");
    let err = store
        .put(mk_trace("nope", "t", "a:4317"))
        .await
        .expect_err("no mesh");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert!(err.to_string().contains("mesh \"nope\" not found"), "{err}");
    assert_eq!(
        store.revision().await.expect("revision"),
        before,
        "a refused write leaves nothing behind"
    );
    let err = store.get(&trace_key("nope", "t")).await.expect_err("not stored");
    assert!(matches!(err, StoreError::NotFound(_)));
}

async fn deletes_leave_tombstones(store: &dyn Store) {
    put(store, mk_mesh("default")).await;
    put(store, mk_trace("default", "t", "a:4317")).await;
    let before = store.revision().await.expect("revision");
    let deleted_at = store
        .delete(&trace_key("default", "t"), DeleteOptions::default())
        .await
        .expect("delete");
    assert!(deleted_at > before);
    assert!(matches!(
        store.get(&trace_key("default", "t")).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store
            .delete(&trace_key("default", "t"), DeleteOptions::default())
            .await,
        Err(StoreError::NotFound(_))
    ));

    let changes = store.changes_since(before, 100).await.expect("changes");
    let [Change::Delete { key, revision, .. }] = changes.as_slice() else {
        panic!("expected one delete, got {changes:?}");
    };
    assert_eq!((key, *revision), (&trace_key("default", "t"), deleted_at));

    // Re-creating replaces the tombstone: a reader sees only the newest state.
    let recreated = put(store, mk_trace("default", "t", "a:4317")).await;
    assert_eq!(recreated.stored().version, 1);
    let changes = store.changes_since(before, 100).await.expect("changes");
    assert_eq!(
        changes,
        vec![Change::Upsert(Box::new(recreated.stored().clone()))]
    );
}

async fn non_empty_mesh_is_kept_unless_cascade(store: &dyn Store) {
    put(store, mk_mesh("m1")).await;
    put(store, mk_trace("m1", "a", "a:4317")).await;
    put(store, mk_trace("m1", "b", "a:4317")).await;
    let mesh = ResourceKey::new(Kind::Mesh, "", "m1");
    let err = store
        .delete(&mesh, DeleteOptions::default())
        .await
        .expect_err("non-empty mesh");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(err.to_string().contains("2 MeshTrace"), "{err}");
    store.get(&trace_key("m1", "a")).await.expect("nothing deleted");

    let before = store.revision().await.expect("revision");
    store
        .delete(
            &mesh,
            DeleteOptions {
                cascade: true,
                expected_version: None,
                trace: None,
            },
        )
        .await
        .expect("cascade");
    for key in [trace_key("m1", "a"), trace_key("m1", "b"), mesh.clone()] {
        assert!(
            matches!(store.get(&key).await, Err(StoreError::NotFound(_))),
            "{key}"
        );
    }
    let changes = store.changes_since(before, 100).await.expect("changes");
    assert_eq!(changes.len(), 3, "{changes:?}");
    let revisions: Vec<i64> = changes.iter().map(Change::revision).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
}

async fn changes_resume_from_a_revision(store: &dyn Store) {
    put(store, mk_mesh("default")).await;
    let start = store.revision().await.expect("revision");
    let mut written = Vec::new();
    for i in 0..6 {
        written.push(
            put(store, mk_trace("default", &format!("t{i}"), "a:4317"))
                .await
                .stored()
                .revision,
        );
    }
    let all = store.changes_since(start, 100).await.expect("changes");
    assert_eq!(all.iter().map(Change::revision).collect::<Vec<_>>(), written);
    let tail = store.changes_since(written[2], 100).await.expect("changes");
    assert_eq!(
        tail.iter().map(Change::revision).collect::<Vec<_>>(),
        written[3..]
    );
    let limited = store.changes_since(start, 2).await.expect("changes");
    assert_eq!(
        limited.iter().map(Change::revision).collect::<Vec<_>>(),
        written[..2]
    );
    assert!(
        store
            .changes_since(written[5], 100)
            .await
            .expect("changes")
            .is_empty()
    );
}

async fn compacted_tombstones_need_a_snapshot(store: &SqlStore) {
    put(store, mk_mesh("default")).await;
    put(store, mk_trace("default", "t", "a:4317")).await;
    let before = store.revision().await.expect("revision");
    let deleted_at = store
        .delete(&trace_key("default", "t"), DeleteOptions::default())
        .await
        .expect("delete");
    assert_eq!(store.compact_tombstones(deleted_at).await.expect("compact"), 1);
    let err = store
        .changes_since(before, 100)
        .await
        .expect_err("behind the horizon");
    assert!(
        matches!(err, StoreError::TooOld { horizon, .. } if horizon == deleted_at),
        "{err:?}"
    );
    assert!(
        store
            .changes_since(deleted_at, 100)
            .await
            .expect("at the horizon")
            .is_empty()
    );
}

async fn concurrent_writes_get_distinct_revisions(store: &dyn Store) {
    put(store, mk_mesh("default")).await;
    let start = store.revision().await.expect("revision");
    let writes = (0..24).map(|i| store.put(mk_trace("default", &format!("t{i}"), "a:4317")));
    let outcomes = futures_join_all(writes).await;
    let mut revisions: Vec<i64> = outcomes
        .into_iter()
        .map(|o| o.expect("put").stored().revision)
        .collect();
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(revisions.len(), 24, "every write has its own revision");
    assert_eq!(store.revision().await.expect("revision"), start + 24);
    assert_eq!(store.changes_since(start, 100).await.expect("changes").len(), 24);
}

/// Runs futures concurrently on the current task (a small join_all, to avoid a dependency).
async fn futures_join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[tokio::test]
async fn sqlite_keeps_writes_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = SqlStore::open_sqlite(dir.path()).await.expect("open");
        store.migrate().await.expect("migrate");
        store.put(mk_mesh("default")).await.expect("put");
        store.put(mk_trace("default", "t", "a:4317")).await.expect("put");
    }
    let store = SqlStore::open_sqlite(dir.path()).await.expect("reopen");
    store.migrate().await.expect("migrations are idempotent");
    store.get(&trace_key("default", "t")).await.expect("survived");
    assert_eq!(store.revision().await.expect("revision"), 2);
}

#[tokio::test]
async fn store_urls_are_checked() {
    let err = SqlStore::connect("mysql://u:secret@h/db")
        .await
        .expect_err("unsupported");
    assert!(err.to_string().contains("expected postgres://"), "{err}");
    assert!(
        !err.to_string().contains("secret"),
        "passwords are not echoed: {err}"
    );
}

async fn sync_position_is_kept(store: &dyn Store) {
    assert_eq!(store.sync_position().await.expect("position"), 0);
    store.apply_synced(Vec::new(), Some(42)).await.expect("set");
    assert_eq!(store.sync_position().await.expect("position"), 42);
}

async fn the_first_secret_wins(store: &dyn Store) {
    assert_eq!(
        store.secret("zone-token", "first").await.expect("secret"),
        "first"
    );
    assert_eq!(
        store.secret("zone-token", "second").await.expect("secret"),
        "first"
    );
    assert_eq!(store.secret("other", "x").await.expect("secret"), "x");
    assert_eq!(store.stored_secret("none").await.expect("read"), None);
    // Put replaces: a zone takes its mesh CAs from global, whatever it had.
    store.put_secret("zone-token", "third").await.expect("put");
    assert_eq!(
        store.stored_secret("zone-token").await.expect("read").as_deref(),
        Some("third")
    );
    store.put_secret("new", "y").await.expect("put");
    assert_eq!(store.secret("new", "z").await.expect("secret"), "y");
    // Listed by prefix, in name order; `%` and `_` are not wildcards.
    for name in ["keys/b", "keys/a", "keys%", "keyz", "keys_x"] {
        store.put_secret(name, name).await.expect("put");
    }
    let listed: Vec<String> = store
        .secrets("keys/")
        .await
        .expect("list")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(listed, ["keys/a", "keys/b"]);
    assert_eq!(store.secrets("keys%").await.expect("list").len(), 1);
}

async fn snapshots_hold_everything_at_their_revision(store: &dyn Store) {
    put(store, mk_mesh("default")).await;
    put(store, mk_trace("default", "a", "a:4317")).await;
    put(store, mk_trace("default", "b", "a:4317")).await;
    store
        .delete(&trace_key("default", "b"), DeleteOptions::default())
        .await
        .expect("delete");
    let (revision, items) = store.snapshot().await.expect("snapshot");
    assert_eq!(revision, store.revision().await.expect("revision"));
    let names: Vec<&str> = items.iter().map(|s| s.resource.name.as_str()).collect();
    assert_eq!(names, ["default", "a"], "meshes and traces, not the deleted one");
}

async fn synced_batches_apply_whole_or_not_at_all(store: &dyn Store) {
    let ops = vec![
        SyncedOp::Put(Box::new(mk_mesh("default"))),
        SyncedOp::Put(Box::new(mk_trace("default", "a", "a:4317"))),
    ];
    let done = store.apply_synced(ops, Some(7)).await.expect("apply");
    assert_eq!(
        done,
        SyncedOutcome {
            written: 2,
            unchanged: 0,
            deleted: 0
        }
    );
    assert_eq!(store.sync_position().await.expect("position"), 7);
    let revision = store.revision().await.expect("revision");

    // The second write fails (its mesh does not exist): the first is not kept either.
    let ops = vec![
        SyncedOp::delete(trace_key("default", "a")),
        SyncedOp::Put(Box::new(mk_trace("nope", "b", "a:4317"))),
    ];
    assert!(matches!(
        store.apply_synced(ops, Some(9)).await,
        Err(StoreError::NotFound(_))
    ));
    store
        .get(&trace_key("default", "a"))
        .await
        .expect("the delete was rolled back");
    assert_eq!(store.sync_position().await.expect("position"), 7);
    assert_eq!(store.revision().await.expect("revision"), revision);

    // Nothing changed: the position moves, no revision is taken, deletes of missing are fine.
    let ops = vec![
        SyncedOp::Put(Box::new(mk_trace("default", "a", "a:4317"))),
        SyncedOp::delete(trace_key("default", "gone")),
    ];
    let done = store.apply_synced(ops, Some(11)).await.expect("apply");
    assert_eq!(
        done,
        SyncedOutcome {
            written: 0,
            unchanged: 1,
            deleted: 0
        }
    );
    assert_eq!(store.sync_position().await.expect("position"), 11);
    assert_eq!(
        store.revision().await.expect("revision"),
        revision,
        "no gap, no new revision"
    );

    // Without a position (global applying a zone's inventory) the position stays.
    let ops = vec![SyncedOp::Put(Box::new(mk_trace("default", "c", "a:4317")))];
    let done = store.apply_synced(ops, None).await.expect("apply");
    assert_eq!(done.written, 1);
    assert_eq!(store.sync_position().await.expect("position"), 11);
}

/// A watcher woken for a revision that does not exist (yet) reads nothing, and is not woken
/// again when that revision really commits: no-op writes must stay silent.
async fn writes_that_change_nothing_announce_nothing(store: &dyn Store) {
    put(store, mk_mesh("default")).await;
    put(store, mk_trace("default", "a", "a:4317")).await;
    let revision = store.revision().await.expect("revision");
    let watch = store.watch();
    let ops = vec![
        SyncedOp::Put(Box::new(mk_trace("default", "a", "a:4317"))),
        SyncedOp::delete(trace_key("default", "gone")),
    ];
    store.apply_synced(ops, None).await.expect("no-op");
    store
        .put(mk_trace("default", "a", "a:4317"))
        .await
        .expect("unchanged");
    // Notifications arrive within milliseconds; give a phantom one time to show.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(300);
    while tokio::time::Instant::now() < deadline {
        assert!(
            *watch.borrow() <= revision,
            "announced revision {} after no-op writes, but the store is at {revision}",
            *watch.borrow()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(store.revision().await.expect("revision"), revision);
}

async fn statuses_are_kept_by_name_and_take_no_revision(store: &dyn Store) {
    let revision = store.revision().await.expect("revision");
    store.put_status("zone/a/1", "one").await.expect("put");
    store.put_status("zone/a/2", "two").await.expect("put");
    store.put_status("other", "x").await.expect("put");
    store.put_status("zone/a/1", "one again").await.expect("put");
    let got: Vec<(String, String)> = store
        .statuses("zone/")
        .await
        .expect("statuses")
        .into_iter()
        .map(|s| (s.name, s.value))
        .collect();
    assert_eq!(
        got,
        [
            ("zone/a/1".to_owned(), "one again".to_owned()),
            ("zone/a/2".to_owned(), "two".to_owned())
        ]
    );
    assert_eq!(store.revision().await.expect("revision"), revision);
}
