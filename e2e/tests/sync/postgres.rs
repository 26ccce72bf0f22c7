//! Global on Postgres: replicas sharing one database, its compaction of tombstones, and a
//! database restart.

use meridian_testing::Postgres;

use super::*;

/// Two global-cp replicas (`a` and `b`, in `dir`) on `pg`, with the settings `env` gives.
fn replicas(pg: &Postgres, dir: &std::path::Path, env: &[(&str, &str)]) -> (GlobalCp, GlobalCp) {
    let start = |name: &str| {
        let workdir = dir.join(name);
        std::fs::create_dir_all(&workdir).expect("dir");
        GlobalCp::start_with(&workdir, Some(&pg.url()), env).expect("replica")
    };
    (start("a"), start("b"))
}

#[test]
fn two_replicas_on_one_postgres_feed_zones_connected_to_either() {
    let (pg, dir) = (
        Postgres::start().expect("postgres"),
        tempfile::tempdir().expect("tempdir"),
    );
    let (mut a, b) = replicas(&pg, dir.path(), &[]);
    // A token issued by one replica is good on the other: the key is in the shared store.
    let z1 = ZoneCp::start_with_token(
        "zone-1",
        &dir.path().join("z1"),
        &a.sync_url,
        &b.zone_token("zone-1").expect("token"),
    )
    .expect("zone-1 on a");
    let z2 = ZoneCp::start_federated("zone-2", &dir.path().join("z2"), &b).expect("zone-2 on b");
    for (via, name) in [(&a, "via-a"), (&b, "via-b")] {
        apply(&via.api_url, &trace(name, "a:4317"));
        for zone in [&z1, &z2] {
            wait_until(
                &format!("{name} on {}", zone.zone),
                Duration::from_secs(20),
                || on_zone(zone, "meshtrace", name).is_some(),
            )
            .expect("reached");
        }
    }
    // Either replica reports both zones, whichever one holds their stream.
    for replica in [&a, &b] {
        wait_until(
            "both zones online on either replica",
            Duration::from_secs(10),
            || {
                ["zone-1", "zone-2"].iter().all(|z| {
                    get(&replica.api_url, &format!("/zones/{z}")).is_some_and(|v| v["state"] == "Online")
                })
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    // A replica that dies (killed, so it records nothing on the way out) takes its zones'
    // streams with it: once its word is 10 s old, the other replica reports them offline.
    a.kill_9().expect("kill replica a");
    wait_until("zone-1 offline on b", Duration::from_secs(15), || {
        get(&b.api_url, "/zones/zone-1").is_some_and(|v| v["state"] == "Offline")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        get(&b.api_url, "/zones/zone-2").expect("zone-2")["state"],
        "Online"
    );
}

#[test]
fn a_zone_away_past_the_tombstone_retention_catches_up_by_snapshot() {
    let (pg, dir) = (
        Postgres::start().expect("postgres"),
        tempfile::tempdir().expect("tempdir"),
    );
    let (a, b) = replicas(&pg, dir.path(), &[("MERIDIAN_TOMBSTONE_RETENTION", "1s")]);
    let mut zone = ZoneCp::start_federated("zone-1", &dir.path().join("z1"), &a).expect("zone");
    for name in ["kept", "deleted"] {
        apply(&a.api_url, &trace(name, "a:4317"));
    }
    wait_on_zone(&zone, "deleted arrives", |t| t.is_some());
    zone.kill_9().expect("kill zone");

    ok(meshctl(&a.api_url, &["delete", "meshtrace", "deleted"], None).expect("delete"));
    apply(&a.api_url, &trace("created", "c:4317"));
    // Past the retention, the replica holding the lease compacts the deletion away: the
    // changes since the zone's position are gone, so it can only catch up by snapshot.
    let compacted = |cp: &GlobalCp| metric(&cp.api_url, "meridian_tombstones_compacted_total");
    wait_until("the tombstone compacted", Duration::from_secs(20), || {
        compacted(&a) + compacted(&b) >= 1.0
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        compacted(&a) * compacted(&b),
        0.0,
        "one replica compacts, not both"
    );

    let zone = zone.restart().expect("restart zone");
    wait_on_zone(&zone, "created arrives", |t| t.is_some());
    wait_on_zone(&zone, "deleted goes", |t| t.is_none());
    assert!(on_zone(&zone, "meshtrace", "kept").is_some(), "kept stays");
}

#[test]
fn global_rides_out_a_postgres_restart() {
    let mut pg = Postgres::start().expect("postgres");
    let dir = tempfile::tempdir().expect("tempdir");
    let global = GlobalCp::start(dir.path(), Some(&pg.url())).expect("global-cp");
    let zone = ZoneCp::start_federated("zone-1", &dir.path().join("z1"), &global).expect("zone");
    apply(&global.api_url, &trace("before", "a:4317"));
    wait_on_zone(&zone, "before arrives", |t| t.is_some());
    pg.restart().expect("restart postgres");
    // The first request after the restart may meet a dead pooled connection (503); retrying works.
    wait_until("writes to work again", Duration::from_secs(30), || {
        meshctl(
            &global.api_url,
            &["apply", "-f", "-"],
            Some(&trace("after", "a:4317")),
        )
        .is_ok_and(|o| o.status.success())
    })
    .expect("global serves again");
    wait_on_zone(&zone, "after arrives", |t| t.is_some());
    assert_eq!(http_get(&format!("{}/healthz", global.api_url)).0, 200);
}
