//! Zone control plane HA: real zone-cp processes forming a Raft cluster.

use std::time::{Duration, Instant};

use meridian_e2e::{ZoneCp, http_get, meshctl, ok};
use meridian_testing::wait_until;

fn raft(node: &ZoneCp) -> Option<serde_json::Value> {
    let (code, body, _) = http_get(&format!("{}/raft", node.api_url));
    (code == 200).then(|| serde_json::from_str(&body).expect("json"))
}

/// The index of the node that every reachable node names as leader, once they agree.
fn agreed_leader(nodes: &[&ZoneCp]) -> Option<usize> {
    let views: Vec<serde_json::Value> = nodes.iter().map(|n| raft(n)).collect::<Option<_>>()?;
    let leader = views[0]["leader"].as_u64()?;
    views
        .iter()
        .all(|v| v["leader"].as_u64() == Some(leader))
        .then(|| {
            views
                .iter()
                .position(|v| v["node_id"].as_u64() == Some(leader) && v["role"] == "leader")
        })
        .flatten()
}

fn timeout(name: &str, value: &str) -> String {
    format!(
        "type: MeshTimeout\nname: {name}\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {{kind: Mesh}}\n    default: {{connectionTimeout: {value}}}\n"
    )
}

fn has(node: &ZoneCp, name: &str) -> bool {
    http_get(&format!("{}/meshes/default/meshtimeouts/{name}", node.api_url)).0 == 200
}

#[test]
fn three_nodes_replicate_every_write_and_elect_a_new_leader_when_one_dies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes = ZoneCp::start_cluster("zone-1", dir.path(), 3).expect("cluster");
    let all: Vec<&ZoneCp> = nodes.iter().collect();
    wait_until("a leader all agree on", Duration::from_secs(20), || {
        agreed_leader(&all).is_some()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let leader = agreed_leader(&all).expect("leader");
    let status = raft(all[0]).expect("status");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3), "{status}");
    let (_, metrics, _) = http_get(&format!("{}/metrics", all[leader].api_url));
    assert!(metrics.contains("meridian_raft_leader 1"), "{metrics}");
    assert!(metrics.contains("meridian_raft_voters 3"), "{metrics}");

    // A write on a follower is forwarded, and every node ends up with it.
    let follower = (leader + 1) % 3;
    ok(meshctl(
        &all[follower].api_url,
        &["apply", "-f", "-"],
        Some(&timeout("before", "1s")),
    )
    .expect("meshctl"));
    assert!(has(all[follower], "before"), "the writer reads its own write");
    wait_until("every node has it", Duration::from_secs(10), || {
        all.iter().all(|n| has(n, "before"))
    })
    .unwrap_or_else(|e| panic!("{e}"));

    // Kill the leader: the other two elect one and keep taking writes.
    nodes[leader].kill_9().expect("kill leader");
    let killed_at = Instant::now();
    let survivors: Vec<&ZoneCp> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, n)| n)
        .collect();
    wait_until("a new leader", Duration::from_secs(10), || {
        agreed_leader(&survivors).is_some()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "new leader agreed {:.2}s after the old one was killed",
        killed_at.elapsed().as_secs_f64()
    );
    ok(meshctl(
        &survivors[0].api_url,
        &["apply", "-f", "-"],
        Some(&timeout("after", "2s")),
    )
    .expect("meshctl"));
    wait_until("both survivors have it", Duration::from_secs(10), || {
        survivors.iter().all(|n| has(n, "after"))
    })
    .unwrap_or_else(|e| panic!("{e}"));

    // The killed node comes back from its disk and catches up.
    let back = nodes.remove(leader).restart().expect("restart");
    wait_until("the restarted node catches up", Duration::from_secs(20), || {
        has(&back, "before") && has(&back, "after")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let status = raft(&back).expect("status");
    assert_eq!(status["role"], "follower", "{status}");
}

#[test]
fn members_are_added_and_removed_through_any_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = ZoneCp::start_cluster("zone-1", dir.path(), 3).expect("cluster");
    let all: Vec<&ZoneCp> = nodes.iter().collect();
    wait_until("a leader", Duration::from_secs(20), || {
        agreed_leader(&all).is_some()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    ok(meshctl(
        &all[0].api_url,
        &["apply", "-f", "-"],
        Some(&timeout("existing", "1s")),
    )
    .expect("meshctl"));

    // Replace node 3 by node 4: add the new one, then remove the old.
    let fourth = ZoneCp::start_joining("zone-1", &dir.path().join("node-4"), 4).expect("node 4");
    let added = ok(meshctl(
        &all[1].api_url,
        &[
            "zone",
            "members",
            "add",
            "--id",
            "4",
            "--address",
            &fourth.raft_address(),
        ],
        None,
    )
    .expect("meshctl"));
    assert_eq!(added.lines().count(), 5, "a header and four members:\n{added}");
    wait_until("node 4 has the existing policy", Duration::from_secs(10), || {
        has(&fourth, "existing")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let removed =
        ok(meshctl(&fourth.api_url, &["zone", "members", "remove", "--id", "3"], None).expect("meshctl"));
    assert!(!removed.lines().any(|l| l.starts_with("3 ")), "{removed}");
    let status = raft(&fourth).expect("status");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3), "{status}");

    // Bad requests name the field.
    let bad = meshctl(
        &all[0].api_url,
        &["zone", "members", "add", "--id", "0", "--address", "x:1"],
        None,
    )
    .expect("meshctl");
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        meridian_e2e::stderr(&bad).contains("id"),
        "{}",
        meridian_e2e::stderr(&bad)
    );
    let bad = meshctl(&all[0].api_url, &["zone", "members", "remove", "--id", "9"], None).expect("meshctl");
    assert!(
        meridian_e2e::stderr(&bad).contains("not a voting member"),
        "{}",
        meridian_e2e::stderr(&bad)
    );
}
