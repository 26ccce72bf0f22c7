//! Replicas sharing one store: commits announced to all of them, and a job's lease held by
//! one at a time.

use crate::prelude::*;
use meridian_testing::Postgres;

use super::{mk_mesh, mk_trace, sqlite};
use crate::SqlStore;

#[tokio::test]
async fn postgres_commits_reach_every_replica() {
    let pg = Postgres::start().expect("postgres");
    let a = SqlStore::connect(&pg.url()).await.expect("replica a");
    a.migrate().await.expect("migrate");
    let b = SqlStore::connect(&pg.url()).await.expect("replica b");
    b.migrate().await.expect("migrate");
    let mut watch = b.watch();
    watch.borrow_and_update();
    a.put(mk_mesh("default")).await.expect("put on a");
    let written = a
        .put(mk_trace("default", "t", "a:4317"))
        .await
        .expect("put on a")
        .stored()
        .revision;
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while *watch.borrow_and_update() < written {
            watch.changed().await.expect("watch");
        }
    })
    .await
    .expect("replica b hears of replica a's commit");
}

#[tokio::test]
async fn one_postgres_replica_at_a_time_holds_a_lease_and_a_lost_holder_frees_it() {
    use crate::TOMBSTONE_COMPACTION as JOB;
    let pg = Postgres::start().expect("postgres");
    let a = SqlStore::connect(&pg.url()).await.expect("replica a");
    let b = SqlStore::connect(&pg.url()).await.expect("replica b");
    let mut held = a.try_lease(JOB).await.expect("ask").expect("a gets it");
    assert!(held.holds().await);
    assert!(b.try_lease(JOB).await.expect("ask").is_none(), "b waits");
    assert!(
        a.try_lease(JOB).await.expect("ask").is_none(),
        "even a's other connections"
    );
    assert!(
        b.try_lease(JOB + 1).await.expect("ask").is_some(),
        "another job is free"
    );
    // The holder goes (a crash closes its connection just the same).
    drop(held);
    let mut taken = None;
    for _ in 0..100 {
        taken = b.try_lease(JOB).await.expect("ask");
        if taken.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(taken.expect("b takes over").holds().await);
}

#[tokio::test]
async fn the_embedded_store_always_grants_a_lease() {
    let fixture = sqlite().await;
    let mut lease = fixture
        .store
        .try_lease(crate::TOMBSTONE_COMPACTION)
        .await
        .expect("ask");
    assert!(lease.as_mut().expect("granted").holds().await);
}
