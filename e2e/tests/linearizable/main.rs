//! Jepsen-style drills: clients read, write and compare-and-set (`version`) a few resources
//! through every replica while a nemesis kills (-9), freezes (SIGSTOP) and cuts off replicas.
//! The recorded history is checked for linearizability (`meridian_testing::linearizable`),
//! and every creation that was acknowledged must be on every replica at the end.
//!
//! Two systems: a 3-node zone (Raft; partitions through a chaos proxy on every link) and two
//! global replicas on one Postgres (a chaos proxy on each replica's database link).

mod drill;

use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use drill::{drill, pause};
use meridian_e2e::{GlobalCp, ZoneCp, http_get};
use meridian_testing::{ChaosProxy, Postgres, free_port, wait_until};
use serde_json::Value;

/// Three zone nodes, with a chaos proxy on each directed link: `links[i][j]` carries node
/// `i`'s Raft calls to node `j`.
struct Zone {
    nodes: Vec<Option<ZoneCp>>,
    links: Vec<Vec<Option<ChaosProxy>>>,
}

impl Zone {
    fn start(dir: &std::path::Path) -> Self {
        let real: Vec<u16> = (0..3).map(|_| free_port().expect("port")).collect();
        let addr = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let links: Vec<Vec<Option<ChaosProxy>>> = (0..3)
            .map(|i| {
                (0..3)
                    .map(|j| (i != j).then(|| ChaosProxy::start(addr(real[j])).expect("proxy")))
                    .collect()
            })
            .collect();
        let peers: Vec<String> = real
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect();
        let nodes = (0..3)
            .map(|i| {
                let dial: Vec<String> = links[i]
                    .iter()
                    .enumerate()
                    .filter_map(|(j, l)| l.as_ref().map(|l| format!("{}=127.0.0.1:{}", j + 1, l.port)))
                    .collect();
                let mut flags = vec![
                    "--node-id".to_owned(),
                    (i + 1).to_string(),
                    "--peers".to_owned(),
                    peers.join(","),
                    "--raft-dial".to_owned(),
                    dial.join(","),
                ];
                flags.extend(meridian_e2e::peer_tls_flags("zone-1", dir, i as u64 + 1).expect("certs"));
                Some(
                    ZoneCp::start_node("zone-1", &dir.join(format!("node-{}", i + 1)), real[i], flags)
                        .expect("node"),
                )
            })
            .collect();
        Self { nodes, links }
    }

    fn node(&self, i: usize) -> &ZoneCp {
        self.nodes[i].as_ref().expect("node running")
    }

    fn apis(&self) -> Vec<String> {
        (0..3).map(|i| self.node(i).api_url.clone()).collect()
    }

    /// The leader's index, as the first node that answers names it.
    fn leader(&self) -> Option<usize> {
        self.nodes.iter().flatten().find_map(|n| {
            let (code, body, _) = http_get(&format!("{}/raft", n.api_url));
            let status: Value = (code == 200).then(|| serde_json::from_str(&body).ok())??;
            status["leader"].as_u64().map(|id| id as usize - 1)
        })
    }

    fn isolate(&self, k: usize, cut: bool) {
        for j in (0..3).filter(|j| *j != k) {
            for link in [&self.links[k][j], &self.links[j][k]].into_iter().flatten() {
                if cut { link.cut() } else { link.restore() }
            }
        }
    }

    fn kill(&mut self, i: usize) {
        self.nodes[i].as_mut().expect("node").kill_9().expect("kill -9");
    }

    fn restart(&mut self, i: usize) {
        let node = self.nodes[i].take().expect("node");
        self.nodes[i] = Some(node.restart().expect("restart"));
    }

    /// What the nemesis did, in order. Each fault lasts about 3 s, with 1.5 s of calm between.
    fn nemesis(&mut self, stop: &AtomicBool) -> Vec<String> {
        let mut events = Vec::new();
        let mut round = 0;
        while pause(stop, Duration::from_millis(1500)) {
            // Every kind of fault meets every node in turn: 4 kinds, 3 nodes.
            let target = round % 3;
            match round % 4 {
                0 => {
                    let leader = self.leader().unwrap_or(target);
                    events.push(format!("kill -9 leader {}", leader + 1));
                    self.kill(leader);
                    pause(stop, Duration::from_secs(2));
                    self.restart(leader);
                }
                1 => {
                    events.push(format!("SIGSTOP {}", target + 1));
                    self.node(target).freeze().expect("freeze");
                    pause(stop, Duration::from_secs(3));
                    self.node(target).thaw().expect("thaw");
                }
                2 => {
                    events.push(format!("partition {} away", target + 1));
                    self.isolate(target, true);
                    pause(stop, Duration::from_secs(3));
                    self.isolate(target, false);
                }
                _ => {
                    events.push(format!("kill -9 {}", target + 1));
                    self.kill(target);
                    pause(stop, Duration::from_secs(1));
                    self.restart(target);
                }
            }
            round += 1;
        }
        events
    }
}

#[test]
fn a_three_node_zone_stays_linearizable_through_kills_freezes_and_partitions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let zone = Zone::start(dir.path());
    wait_until("a leader and the default mesh", Duration::from_secs(30), || {
        zone.leader().is_some()
            && (0..3).all(|i| http_get(&format!("{}/meshes/default", zone.node(i).api_url)).0 == 200)
    })
    .expect("ready");
    let apis = zone.apis();
    let zone = Mutex::new(zone);
    drill(
        "zone (3 nodes)",
        apis.clone(),
        |stop| zone.lock().expect("lock").nemesis(stop),
        || {
            wait_until("a leader again", Duration::from_secs(30), || {
                zone.lock().expect("lock").leader().is_some()
            })
            .expect("leader");
        },
    );
}

#[test]
fn two_global_replicas_on_postgres_stay_linearizable_through_kills_freezes_and_lost_database_links() {
    let pg = Postgres::start().expect("postgres");
    let dir = tempfile::tempdir().expect("tempdir");
    let to_pg = std::net::SocketAddr::from(([127, 0, 0, 1], pg.port()));
    let db_links: Vec<ChaosProxy> = (0..2).map(|_| ChaosProxy::start(to_pg).expect("proxy")).collect();
    let mut replicas: Vec<Option<GlobalCp>> = db_links
        .iter()
        .enumerate()
        .map(|(i, link)| {
            let workdir = dir.path().join(format!("replica-{i}"));
            std::fs::create_dir_all(&workdir).expect("dir");
            let url = pg
                .url()
                .replace(&format!(":{}/", pg.port()), &format!(":{}/", link.port));
            Some(GlobalCp::start_with(&workdir, Some(&url), &[]).expect("replica"))
        })
        .collect();
    let apis: Vec<String> = replicas.iter().flatten().map(|r| r.api_url.clone()).collect();
    for api in &apis {
        wait_until("the default mesh", Duration::from_secs(30), || {
            http_get(&format!("{api}/meshes/default")).0 == 200
        })
        .expect("ready");
    }
    let replicas_ref = &mut replicas;
    let links = &db_links;
    drill(
        "global (2 replicas, Postgres)",
        apis,
        move |stop| {
            let mut events = Vec::new();
            let mut round = 0;
            while pause(stop, Duration::from_millis(1500)) {
                // Each kind of fault meets each replica in turn: 3 kinds, 2 replicas.
                let i = (round / 3) % 2;
                match round % 3 {
                    0 => {
                        events.push(format!("kill -9 replica {i}"));
                        replicas_ref[i].as_mut().expect("replica").kill_9().expect("kill");
                        pause(stop, Duration::from_secs(1));
                        let r = replicas_ref[i].take().expect("replica");
                        replicas_ref[i] = Some(r.restart().expect("restart"));
                    }
                    1 => {
                        events.push(format!("SIGSTOP replica {i}"));
                        let r = replicas_ref[i].as_ref().expect("replica");
                        r.freeze().expect("freeze");
                        pause(stop, Duration::from_secs(3));
                        r.thaw().expect("thaw");
                    }
                    _ => {
                        events.push(format!("cut replica {i} from Postgres"));
                        links[i].cut();
                        pause(stop, Duration::from_secs(3));
                        links[i].restore();
                    }
                }
                round += 1;
            }
            events
        },
        || {},
    );
}
