//! The logged-write path: the log's time, group commit, request ids, and snapshots.

use meridian_model::{Format, Kind, parse_one};

use super::*;

async fn store() -> (SqlStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqlStore::open_sqlite(dir.path()).await.expect("open");
    store.migrate().await.expect("migrate");
    (store, dir)
}

fn submission(yaml: &str) -> Submission {
    parse_one(yaml, Format::Yaml).expect("valid")
}

const TRACE: &str = "type: MeshTrace\nname: t\nspec:\n  backends:\n  - name: o\n    type: open_telemetry\n    conf: {endpoint: 'a:4317'}\n";

#[tokio::test]
async fn logged_writes_take_the_logs_time_and_move_the_marker_even_when_refused() {
    let (store, _dir) = store().await;
    assert_eq!(store.applied_marker().await.expect("marker"), "");
    // No mesh yet: refused, and the marker still moves.
    let refused = store
        .apply_logged(Some(Write::Put(Box::new(submission(TRACE)))), 1_000, "1-1")
        .await
        .expect("store works");
    assert!(matches!(refused, Err(StoreError::NotFound(_))), "{refused:?}");
    assert_eq!(store.applied_marker().await.expect("marker"), "1-1");
    assert_eq!(store.revision().await.expect("revision"), 0);

    let mesh = Write::Put(Box::new(submission("type: Mesh\nname: default\n")));
    store
        .apply_logged(Some(mesh), 2_000, "1-2")
        .await
        .expect("works")
        .expect("put");
    let put = store
        .apply_logged(Some(Write::Put(Box::new(submission(TRACE)))), 3_000, "1-3")
        .await
        .expect("works")
        .expect("put");
    let Written::Put(outcome) = put else {
        panic!("{put:?}")
    };
    let PutOutcome::Created(stored) = *outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!((stored.creation_time_ms, stored.revision), (3_000, 2));
    store
        .apply_logged(None, 4_000, "2-4")
        .await
        .expect("works")
        .expect("nothing");
    assert_eq!(store.applied_marker().await.expect("marker"), "2-4");
    assert_eq!(store.revision().await.expect("revision"), 2);
}

#[tokio::test]
async fn a_batch_commits_together_and_a_refused_write_is_undone_alone() {
    let (store, _dir) = store().await;
    let put = |yaml: &str| Some(Write::Put(Box::new(submission(yaml))));
    let stale = Submission {
        expected_version: Some(7),
        ..submission(&TRACE.replace("name: t", "name: t2"))
    };
    let outcomes = store
        .apply_logged_batch(
            [
                (put(TRACE), 1_000),
                (put("type: Mesh\nname: default\n"), 2_000),
                (None, 2_500),
                (put(TRACE), 3_000),
                (Some(Write::Put(Box::new(stale))), 4_000),
                (put(&TRACE.replace("name: t", "name: t3")), 5_000),
            ]
            .into_iter()
            .map(|(write, at_ms)| logged(write, at_ms, None))
            .collect(),
            "1-6",
            |_| String::new(),
        )
        .await
        .expect("store works");
    let words: Vec<String> = outcomes
        .iter()
        .map(|o| match o {
            Logged::Applied(o) => o,
            Logged::Repeated(r) => panic!("no request ids, yet repeated: {r}"),
        })
        .map(|o| match o {
            Ok(Written::Put(p)) => format!("{} at {}", p.word(), p.stored().revision),
            Ok(Written::Nothing) => "nothing".into(),
            Ok(other) => format!("{other:?}"),
            Err(StoreError::NotFound(_)) => "not found".into(),
            Err(StoreError::Conflict(_)) => "conflict".into(),
            Err(other) => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        words,
        [
            "not found",
            "created at 1",
            "nothing",
            "created at 2",
            "conflict",
            "created at 3"
        ]
    );
    assert_eq!(store.applied_marker().await.expect("marker"), "1-6");
    assert_eq!(store.revision().await.expect("revision"), 3);
    assert_eq!(*store.watch().borrow(), 3, "watchers hear of the last revision");
    let changes = store.changes_since(0, 100).await.expect("changes");
    assert_eq!(changes.len(), 3);
}

fn logged(write: Option<Write>, at_ms: i64, request: Option<&str>) -> LoggedWrite {
    LoggedWrite {
        write,
        at_ms,
        request: request.map(str::to_owned),
    }
}

/// What a put answered, as a test records it.
fn word(outcome: &Result<Written, StoreError>) -> String {
    match outcome {
        Ok(Written::Put(p)) => format!("{} v{}", p.word(), p.stored().version),
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn a_request_applied_before_is_answered_as_then_and_not_applied_again() {
    let (store, _dir) = store().await;
    let put = |yaml: &str| Some(Write::Put(Box::new(submission(yaml))));
    let other = TRACE.replace("a:4317", "b:4317");
    let apply = |writes: Vec<LoggedWrite>, marker: &'static str| {
        let store = store.clone();
        async move {
            let logged = store
                .apply_logged_batch(writes, marker, word)
                .await
                .expect("store works");
            logged
                .into_iter()
                .map(|l| match l {
                    Logged::Applied(o) => word(&o),
                    Logged::Repeated(r) => format!("again: {r}"),
                })
                .collect::<Vec<_>>()
        }
    };
    let first = apply(
        vec![
            logged(put("type: Mesh\nname: default\n"), 1_000, Some("m")),
            logged(put(TRACE), 1_000, Some("a")),
            // The same request twice in one batch: applied once.
            logged(put(TRACE), 1_000, Some("a")),
        ],
        "1-3",
    )
    .await;
    assert_eq!(first, ["created v1", "created v1", "again: created v1"]);
    // Someone else changes it; then request "a" comes again, its first answer lost. It must
    // not put the old value back.
    let second = apply(
        vec![
            logged(put(&other), 2_000, Some("b")),
            logged(put(TRACE), 2_000, Some("a")),
        ],
        "1-5",
    )
    .await;
    assert_eq!(second, ["updated v2", "again: created v1"]);
    let key = submission(TRACE).resource.key();
    let stored = store.get(&key).await.expect("stored");
    assert_eq!(
        (stored.version, stored.resource),
        (2, submission(&other).resource)
    );
    // A minute later by the log's clock, "a" is forgotten: a new write like any other.
    let later = apply(
        vec![logged(put(TRACE), 2_000 + REQUEST_MEMORY_MS + 1, Some("c"))],
        "1-6",
    )
    .await;
    assert_eq!(later, ["updated v3"]);
    let forgotten = apply(
        vec![logged(put(&other), 2_000 + REQUEST_MEMORY_MS + 2, Some("a"))],
        "1-7",
    )
    .await;
    assert_eq!(forgotten, ["updated v4"]);
    // The record travels in snapshots, so a node restored from one answers repeats alike.
    let (restored, _d) = super::tests::store().await;
    let (_, dump) = store.dump().await.expect("dump");
    restored.restore(&dump, "1-7").await.expect("restore");
    let again = restored
        .apply_logged_batch(
            vec![logged(put(TRACE), 2_000 + REQUEST_MEMORY_MS + 3, Some("c"))],
            "1-8",
            word,
        )
        .await
        .expect("works");
    assert!(
        matches!(&again[..], [Logged::Repeated(r)] if r == "updated v3"),
        "{again:?}"
    );
}

/// Nodes cut the same log into different batches: what counts as a repeat must not depend
/// on the cut, or their states would part. Here a retry comes after an entry stamped past the
/// memory (a node with a skewed clock), both as one batch and as two.
#[tokio::test]
async fn what_counts_as_a_repeat_does_not_depend_on_how_the_log_is_batched() {
    let put = |yaml: &str| Some(Write::Put(Box::new(submission(yaml))));
    let other = TRACE.replace("a:4317", "b:4317");
    let log = || {
        vec![
            logged(put("type: Mesh\nname: default\n"), 1_000, Some("m")),
            logged(put(TRACE), 2_000, Some("a")),
            logged(put(&other), 2_001 + REQUEST_MEMORY_MS, Some("b")),
            logged(put(TRACE), 2_000, Some("a")),
            logged(put(&other), 2_002 + REQUEST_MEMORY_MS, Some("b")),
        ]
    };
    let answers = |logged: Vec<Logged>| -> Vec<String> {
        logged
            .into_iter()
            .map(|l| match l {
                Logged::Applied(o) => word(&o),
                Logged::Repeated(r) => format!("again: {r}"),
            })
            .collect()
    };
    let mut states = Vec::new();
    for cut in [5, 3, 1] {
        let (store, _dir) = store().await;
        let mut all = Vec::new();
        let mut entries = log();
        let rest = entries.split_off(cut.min(entries.len()));
        all.extend(answers(
            store
                .apply_logged_batch(entries, "1-1", word)
                .await
                .expect("works"),
        ));
        if !rest.is_empty() {
            all.extend(answers(
                store.apply_logged_batch(rest, "1-2", word).await.expect("works"),
            ));
        }
        let (_, dump) = store.dump().await.expect("dump");
        states.push((cut, all, String::from_utf8(dump).expect("utf-8")));
    }
    for (cut, answers, dump) in &states[1..] {
        assert_eq!(
            (answers, dump),
            (&states[0].1, &states[0].2),
            "cut after {cut} entries"
        );
    }
    // The retry of "a" came when its record was past the memory: applied again (the skewed
    // clock's price), alike on every node. The retry of "b" within it is answered as then.
    assert_eq!(states[0].1[3], "updated v3");
    assert_eq!(states[0].1[4], "again: updated v2");
}

/// Secrets and statuses apply twice as once: no record of them, so no secret value is copied.
#[tokio::test]
async fn idempotent_writes_leave_no_record_and_no_copy_of_a_secret() {
    let (store, _dir) = store().await;
    let secret = Write::Secret {
        name: "k".into(),
        candidate: Sensitive("the-key".into()),
        replace: false,
    };
    let status = Write::Status {
        name: "s".into(),
        value: "v".into(),
    };
    for _ in 0..2 {
        let logged = store
            .apply_logged_batch(
                vec![
                    logged(Some(secret.clone()), 1_000, Some("x")),
                    logged(Some(status.clone()), 1_000, Some("y")),
                ],
                "1-1",
                word,
            )
            .await
            .expect("works");
        assert!(
            logged.iter().all(|l| matches!(l, Logged::Applied(Ok(_)))),
            "{logged:?}"
        );
    }
    let (_, dump) = store.dump().await.expect("dump");
    let tables: Map<String, Value> = serde_json::from_slice(&dump).expect("json");
    assert_eq!(tables["meridian_requests"], Value::Array(Vec::new()));
    assert_eq!(store.secret("k", "other").await.expect("secret"), "the-key");
}

#[tokio::test]
async fn a_restored_dump_is_the_same_state_with_the_same_change_feed() {
    let (a, _da) = store().await;
    a.put(submission("type: Mesh\nname: default\n"))
        .await
        .expect("mesh");
    a.put(submission(TRACE)).await.expect("trace");
    let gone = submission(&TRACE.replace("name: t", "name: gone"));
    a.put(gone.clone()).await.expect("gone");
    a.delete(&gone.resource.key(), DeleteOptions::default())
        .await
        .expect("delete");
    a.apply_synced(Vec::new(), Some(17)).await.expect("position");
    a.put_status("s", "v").await.expect("status");
    a.secret("k", "secret").await.expect("secret");

    let (b, _db) = store().await;
    b.put(submission("type: Mesh\nname: other\n"))
        .await
        .expect("replaced");
    let (marker, dump) = a.dump().await.expect("dump");
    assert_eq!(marker, "");
    b.restore(&dump, "3-9").await.expect("restore");
    assert_eq!(b.snapshot().await.expect("b"), a.snapshot().await.expect("a"));
    assert_eq!(
        b.changes_since(0, 100).await.expect("b"),
        a.changes_since(0, 100).await.expect("a")
    );
    assert_eq!(b.sync_position().await.expect("position"), 17);
    assert_eq!(b.secret("k", "other").await.expect("secret"), "secret");
    assert_eq!(b.statuses("").await.expect("statuses").len(), 1);
    assert_eq!(b.applied_marker().await.expect("marker"), "3-9");
    assert_eq!(*b.watch().borrow(), a.revision().await.expect("revision"));
    assert!(b.get(&ResourceKey::new(Kind::Mesh, "", "other")).await.is_err());
    assert!(
        b.restore(b"{}", "x")
            .await
            .is_err_and(|e| e.to_string().contains("no table"))
    );
    // A snapshot from before the request record existed restores with none.
    let mut old: Map<String, Value> = serde_json::from_slice(&dump).expect("json");
    old.remove("meridian_requests");
    b.restore(&serde_json::to_vec(&old).expect("json"), "3-10")
        .await
        .expect("an older snapshot");
}
