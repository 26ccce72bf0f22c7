//! Zone control plane HA: real zone-cp processes forming a Raft cluster.

use std::time::{Duration, Instant};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use meridian_e2e::{DemoPair, GlobalCp, ZoneCp, http_get, meshctl, ok};
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

/// Waits for a leader and for the default mesh it creates on a standalone zone.
fn ready(nodes: &[&ZoneCp]) {
    wait("a leader and the default mesh", 20, || {
        agreed_leader(nodes).is_some()
            && nodes
                .iter()
                .all(|n| http_get(&format!("{}/meshes/default", n.api_url)).0 == 200)
    });
}

/// Every node but the one at `skip`.
fn except<'a>(nodes: impl IntoIterator<Item = &'a ZoneCp>, skip: usize) -> Vec<&'a ZoneCp> {
    nodes
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != skip)
        .map(|(_, n)| n)
        .collect()
}

/// `meshctl apply` of `doc` against `api_url`; it must succeed.
fn apply(api_url: &str, doc: &str) {
    ok(meshctl(api_url, &["apply", "-f", "-"], Some(doc)).expect("meshctl"));
}

/// Waits up to `secs` for `check`, failing the test with `what` otherwise.
fn wait(what: &str, secs: u64, check: impl FnMut() -> bool) {
    wait_until(what, Duration::from_secs(secs), check).unwrap_or_else(|e| panic!("{e}"));
}

fn has(node: &ZoneCp, name: &str) -> bool {
    http_get(&format!("{}/meshes/default/meshtimeouts/{name}", node.api_url)).0 == 200
}

#[test]
fn three_nodes_replicate_every_write_and_elect_a_new_leader_when_one_dies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes = ZoneCp::start_cluster("zone-1", dir.path(), 3).expect("cluster");
    let all: Vec<&ZoneCp> = nodes.iter().collect();
    ready(&all);
    let leader = agreed_leader(&all).expect("leader");
    let status = raft(all[0]).expect("status");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3), "{status}");
    let (_, metrics, _) = http_get(&format!("{}/metrics", all[leader].api_url));
    assert!(metrics.contains("meridian_raft_leader 1"), "{metrics}");
    assert!(metrics.contains("meridian_raft_voters 3"), "{metrics}");

    // A write on a follower is forwarded, and every node ends up with it.
    let follower = (leader + 1) % 3;
    apply(&all[follower].api_url, &timeout("before", "1s"));
    assert!(has(all[follower], "before"), "the writer reads its own write");
    wait("every node has it", 10, || all.iter().all(|n| has(n, "before")));

    // Kill the leader: the other two elect one and keep taking writes.
    nodes[leader].kill_9().expect("kill leader");
    let killed_at = Instant::now();
    let survivors: Vec<&ZoneCp> = except(&nodes, leader);
    wait("a new leader", 10, || agreed_leader(&survivors).is_some());
    eprintln!(
        "new leader agreed {:.2}s after the old one was killed",
        killed_at.elapsed().as_secs_f64()
    );
    apply(&survivors[0].api_url, &timeout("after", "2s"));
    wait("both survivors have it", 10, || {
        survivors.iter().all(|n| has(n, "after"))
    });

    // The killed node comes back from its disk and catches up.
    let back = nodes.remove(leader).restart().expect("restart");
    wait("the restarted node catches up", 20, || {
        has(&back, "before") && has(&back, "after")
    });
    let status = raft(&back).expect("status");
    assert_eq!(status["role"], "follower", "{status}");
}

#[test]
fn members_are_added_and_removed_through_any_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = vec!["--raft-snapshot-every".to_owned(), "20".to_owned()];
    let nodes = ZoneCp::start_cluster_with("zone-1", dir.path(), 3, flags).expect("cluster");
    let all: Vec<&ZoneCp> = nodes.iter().collect();
    ready(&all);
    apply(&all[0].api_url, &timeout("existing", "1s"));
    // Enough writes that the log the new node needs was snapshotted and discarded: it gets
    // the state as a snapshot.
    for i in 0..40 {
        apply(&all[i % 3].api_url, &timeout(&format!("t{i}"), "1s"));
    }
    wait("a snapshot on every node", 10, || {
        all.iter()
            .all(|n| raft(n).is_some_and(|s| s["snapshot_index"].as_u64() >= Some(20)))
    });

    // Replace a node by node 4: add the new one, then remove the old.
    let fourth = ZoneCp::start_joining("zone-1", dir.path(), 4).expect("node 4");
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
    wait("node 4 has the existing policies", 10, || {
        has(&fourth, "existing") && has(&fourth, "t39")
    });
    let joined = raft(&fourth).expect("status");
    assert!(
        joined["snapshot_index"].as_u64() >= Some(20),
        "node 4 was sent a snapshot: {joined}"
    );
    // The old node to remove is the leader: the hard case, where the node that commits the
    // change is the one it removes, and a new leader must take over before the call answers.
    let old = agreed_leader(&all).expect("leader");
    let old_id = raft(all[old]).expect("status")["node_id"].to_string();
    let removed = ok(meshctl(
        &fourth.api_url,
        &["zone", "members", "remove", "--id", &old_id],
        None,
    )
    .expect("meshctl"));
    assert!(
        !removed.lines().any(|l| l.starts_with(&format!("{old_id} "))),
        "{removed}"
    );
    let status = raft(&fourth).expect("status");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3), "{status}");
    let rest: Vec<&ZoneCp> = (0..3)
        .filter(|i| *i != old)
        .map(|i| all[i])
        .chain([&fourth])
        .collect();
    wait("the remaining three to agree on a leader", 10, || {
        agreed_leader(&rest).is_some()
    });
    apply(&rest[0].api_url, &timeout("after-removal", "2s"));
    wait("the remaining three to have a write made after", 10, || {
        rest.iter().all(|n| has(n, "after-removal"))
    });

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
    // Asked of a follower, the leader's refusal comes back as it is, not retried.
    let follower = rest
        .iter()
        .find(|n| raft(n).is_some_and(|s| s["role"] == "follower"))
        .expect("a follower");
    let asked = std::time::Instant::now();
    let bad = meshctl(
        &follower.api_url,
        &["zone", "members", "remove", "--id", "9"],
        None,
    )
    .expect("meshctl");
    assert!(
        meridian_e2e::stderr(&bad).contains("(404 Not Found): node 9 is not a voting member"),
        "{}",
        meridian_e2e::stderr(&bad)
    );
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(5),
        "a refusal is final: {:?}",
        asked.elapsed()
    );
}

/// A MeshTimeout for a service no proxy calls: it travels and is stored like any policy,
/// without changing the proxies' config under the traffic.
fn ghost_timeout(name: &str) -> String {
    format!(
        "type: MeshTimeout\nname: {name}\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {{kind: MeshService, name: {name}}}\n    default: {{connectionTimeout: 3s}}\n"
    )
}

#[test]
fn killing_the_leader_of_a_federated_zone_loses_no_request_and_no_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let global = GlobalCp::start(dir.path(), None).expect("global-cp");
    let mut nodes =
        ZoneCp::start_cluster_federated("zone-1", &dir.path().join("zone-1"), 3, &global).expect("cluster");
    let all: Vec<&ZoneCp> = nodes.iter().collect();
    ready(&all);
    wait("the default mesh from global", 20, || {
        all.iter()
            .all(|n| http_get(&format!("{}/meshes/default", n.api_url)).0 == 200)
    });
    let pair = DemoPair::start_on(&all).expect("demo pair");

    // Clients call reg-server through demo's sidecar the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            let url = format!("http://127.0.0.1:{}/", pair.outbound);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    if http_get(&url).0 != 200 {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // Policies are written on global before, during and after the kill.
    let writer = {
        let api = global.api_url.clone();
        std::thread::spawn(move || {
            for i in 0..30 {
                ok(meshctl(
                    &api,
                    &["apply", "-f", "-"],
                    Some(&ghost_timeout(&format!("during-{i}"))),
                )
                .expect("meshctl"));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let leader = agreed_leader(&all).expect("leader");
    nodes[leader].kill_9().expect("kill the leader");
    let killed_at = Instant::now();
    let survivors: Vec<&ZoneCp> = except(&nodes, leader);
    wait("a new leader", 10, || agreed_leader(&survivors).is_some());
    let elected = killed_at.elapsed();
    writer.join().expect("writer");

    // The proxies that were on the killed node reconnect elsewhere and take the next change.
    apply(&global.api_url, &timeout("after-kill", "7s"));
    wait("demo's Envoy has the change made after the kill", 30, || {
        pair.demo_config_dump().contains("\"connect_timeout\": \"7s\"")
    });
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    let names: Vec<String> = (0..30).map(|i| format!("during-{i}")).collect();
    wait("every policy on both survivors", 20, || {
        survivors
            .iter()
            .all(|n| names.iter().all(|name| has(n, name)) && has(n, "after-kill"))
    });
    let zone =
        serde_json::from_str::<serde_json::Value>(&http_get(&format!("{}/zones/zone-1", global.api_url)).1)
            .expect("zone json");
    assert_eq!(
        zone["state"], "Online",
        "the new leader holds the sync stream: {zone}"
    );
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "leader killed: new leader agreed after {:.2}s; {sent} requests sent through the sidecars, {failed} failed",
        elected.as_secs_f64()
    );
    assert_eq!(failed, 0, "of {sent} requests");
}

#[test]
fn proxies_move_to_another_node_when_theirs_dies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes = ZoneCp::start_cluster("zone-1", dir.path(), 3).expect("cluster");
    let all: Vec<&ZoneCp> = nodes.iter().collect();
    ready(&all);
    let pair = DemoPair::start_on(&all).expect("demo pair");
    let connected = |node: &ZoneCp| {
        let (code, body, _) = http_get(&format!(
            "{}/meshes/default/dataplanes/demo-1/_config",
            node.api_url
        ));
        code == 200 && serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| v["connected"] == true)
    };
    wait("demo's Envoy on some node", 10, || {
        all.iter().any(|n| connected(n))
    });
    let theirs = all.iter().position(|n| connected(n)).expect("a node");
    nodes[theirs].kill_9().expect("kill");
    let others: Vec<&ZoneCp> = except(&nodes, theirs);
    wait("demo's Envoy on another node", 30, || {
        others.iter().any(|n| connected(n))
    });
    wait("a leader among the others", 10, || {
        agreed_leader(&others).is_some()
    });
    apply(&others[0].api_url, &timeout("next", "9s"));
    wait("the next change reaches demo's Envoy", 30, || {
        pair.demo_config_dump().contains("\"connect_timeout\": \"9s\"")
    });
    assert_eq!(http_get(&pair.demo_url).0, 200);
}

#[test]
fn a_whole_zone_restarts_from_its_disks_while_global_is_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut global = GlobalCp::start(dir.path(), None).expect("global-cp");
    let nodes =
        ZoneCp::start_cluster_federated("zone-1", &dir.path().join("zone-1"), 3, &global).expect("cluster");
    let all: Vec<&ZoneCp> = nodes.iter().collect();
    ready(&all);
    apply(&global.api_url, &timeout("kept", "1s"));
    let dataplane = "type: Dataplane\nname: web-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    tags: {kuma.io/service: web}\n";
    apply(&all[0].api_url, dataplane);
    wait("every node has both", 20, || all.iter().all(|n| has(n, "kept")));

    // Everything stops; the zone comes back without global.
    global.kill_9().expect("kill global");
    let mut stopped = nodes;
    for node in &mut stopped {
        node.kill_9().expect("kill node");
    }
    let nodes: Vec<ZoneCp> = stopped
        .into_iter()
        .map(|n| n.restart().expect("restart"))
        .collect();
    let all: Vec<&ZoneCp> = nodes.iter().collect();
    wait("a leader again", 20, || agreed_leader(&all).is_some());
    for node in &all {
        assert!(has(node, "kept"), "the policy is back from disk");
        let (code, body, _) = http_get(&format!(
            "{}/meshes/default/dataplanes/web-1/_config",
            node.api_url
        ));
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains("inbound"),
            "xDS config is generated from the persisted state: {body}"
        );
    }

    // Global returns: the sync resumes from the stored revision, rewriting nothing.
    let global = global.restart().expect("restart global");
    apply(&global.api_url, &timeout("new", "2s"));
    wait("the new policy on every node", 20, || {
        all.iter().all(|n| has(n, "new"))
    });
    for node in &all {
        let (_, body, _) = http_get(&format!("{}/meshes/default/meshtimeouts/kept", node.api_url));
        let kept: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(kept["version"], 1, "not rewritten on resume: {kept}");
    }
}

#[test]
fn a_frozen_leader_is_replaced_and_steps_down_when_it_wakes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = ZoneCp::start_cluster("zone-1", dir.path(), 3).expect("cluster");
    let all: Vec<&ZoneCp> = nodes.iter().collect();
    ready(&all);
    let old = agreed_leader(&all).expect("leader");
    let old_term = raft(all[old]).expect("status")["term"].as_u64().expect("term");
    all[old].freeze().expect("SIGSTOP");
    let others: Vec<&ZoneCp> = except(all.iter().copied(), old);
    let frozen_at = Instant::now();
    wait("another leader while it sleeps", 10, || {
        agreed_leader(&others).is_some()
    });
    eprintln!(
        "new leader {:.2}s after the old one froze",
        frozen_at.elapsed().as_secs_f64()
    );
    apply(&others[0].api_url, &timeout("while-frozen", "4s"));
    // Frozen for 10 s in all.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(frozen_at.elapsed()));
    all[old].thaw().expect("SIGCONT");
    wait(
        "the old leader follows the new one and has what was written",
        10,
        || {
            raft(all[old]).is_some_and(|s| s["role"] == "follower" && s["term"].as_u64() > Some(old_term))
                && has(all[old], "while-frozen")
        },
    );
    let leader = agreed_leader(&all).expect("one leader for all three");
    assert_ne!(leader, old, "the woken node did not take over again");
    // Writes through the woken node go to the real leader.
    apply(&all[old].api_url, &timeout("after-wake", "5s"));
    wait("everyone has it", 10, || all.iter().all(|n| has(n, "after-wake")));
}

#[test]
fn a_node_cut_off_commits_nothing_and_catches_up_when_healed() {
    use meridian_testing::{ChaosProxy, free_port};
    let dir = tempfile::tempdir().expect("tempdir");
    let real: Vec<u16> = (0..3).map(|_| free_port().expect("port")).collect();
    let addr = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // Everyone reaches node N through a proxy in front of it; node 3 reaches the others
    // through proxies of its own, so that cutting three proxies isolates it both ways.
    let inbound: Vec<ChaosProxy> = real
        .iter()
        .map(|p| ChaosProxy::start(addr(*p)).expect("proxy"))
        .collect();
    let from3: Vec<ChaosProxy> = real[..2]
        .iter()
        .map(|p| ChaosProxy::start(addr(*p)).expect("proxy"))
        .collect();
    let peers: Vec<String> = inbound
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{}", i + 1, p.port))
        .collect();
    let peers = peers.join(",");
    let nodes: Vec<ZoneCp> = (0..3)
        .map(|i| {
            let mut flags = vec![
                "--node-id".to_owned(),
                (i + 1).to_string(),
                "--peers".to_owned(),
                peers.clone(),
            ];
            if i == 2 {
                flags.extend([
                    "--raft-dial".to_owned(),
                    format!("1=127.0.0.1:{},2=127.0.0.1:{}", from3[0].port, from3[1].port),
                ]);
            }
            flags.extend(meridian_e2e::peer_tls_flags("zone-1", dir.path(), i as u64 + 1).expect("certs"));
            ZoneCp::start_node(
                "zone-1",
                &dir.path().join(format!("node-{}", i + 1)),
                real[i],
                flags,
            )
            .expect("node")
        })
        .collect();
    let all: Vec<&ZoneCp> = nodes.iter().collect();
    ready(&all);

    inbound[2].cut();
    for p in &from3 {
        p.cut();
    }
    let majority = [all[0], all[1]];
    wait("the majority has a leader", 10, || {
        agreed_leader(&majority).is_some()
    });
    apply(&all[0].api_url, &timeout("majority", "1s"));
    wait("both nodes of the majority have it", 10, || {
        has(all[1], "majority")
    });
    let refused = meshctl(
        &all[2].api_url,
        &["apply", "-f", "-"],
        Some(&timeout("minority", "1s")),
    )
    .expect("meshctl");
    assert!(!refused.status.success(), "the cut-off node cannot commit");
    assert!(!has(all[2], "majority") && !has(all[2], "minority"));

    inbound[2].restore();
    for p in &from3 {
        p.restore();
    }
    wait("the healed node catches up", 30, || has(all[2], "majority"));
    wait("one leader for all three", 10, || agreed_leader(&all).is_some());
    assert!(
        all.iter().all(|n| !has(n, "minority")),
        "what the cut-off node could not commit never appears"
    );
}
