//! Drills from an attacker's side: each says what an outsider (or a local user who is not the
//! control plane's owner) can reach, and asserts they get nothing.

use std::path::Path;
use std::time::Duration;

use meridian_e2e::{ZoneCp, http_get, meshctl, ok, stdout};
use meridian_proto::raft::RaftPayload;
use meridian_proto::raft_service::zone_raft_client::ZoneRaftClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A write that, unauthenticated, would hand out the zone's user-token signing key: a
/// `secret` write through `Forward` answers with the stored value.
const STEAL_KEY: &str =
    r#"{"write":{"atMs":0,"write":{"op":"secret","name":"user-token","candidate":"x","replace":false}}}"#;
/// A fake voter, which would cost the zone its majority.
const ADD_FAKE_VOTER: &str = r#"{"addMember":{"id":9,"address":"127.0.0.1:9"}}"#;

/// What an outsider gets from `Forward` with `payload`: the gRPC error, or the answer.
async fn forward(endpoint: Endpoint, payload: &str) -> Result<String, String> {
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let reply = ZoneRaftClient::new(channel)
        .forward(RaftPayload {
            json: payload.as_bytes().to_vec(),
        })
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    Ok(String::from_utf8_lossy(&reply.get_ref().json).into_owned())
}

fn tls(ca: &Path, identity: Option<(&Path, &Path)>, name: &str) -> ClientTlsConfig {
    let read = |p: &Path| std::fs::read(p).expect("read");
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)))
        .domain_name(name);
    if let Some((cert, key)) = identity {
        config = config.identity(Identity::from_pem(read(cert), read(key)));
    }
    config
}

fn endpoint(scheme: &str, addr: &str) -> Endpoint {
    Endpoint::from_shared(format!("{scheme}://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
}

fn raft_status(cp: &ZoneCp) -> serde_json::Value {
    let (_, body, _) = http_get(&format!("{}/raft", cp.api_url));
    serde_json::from_str(&body).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outsider_on_the_raft_port_can_neither_read_nor_write_nor_change_membership() {
    install_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = ZoneCp::start_cluster("zone-1", dir.path(), 3).expect("cluster");
    let leader_or_any = &nodes[0];
    meridian_testing::wait_until("a leader", Duration::from_secs(20), || {
        raft_status(leader_or_any)["leader"].is_u64()
    })
    .expect("leader");
    let target = nodes[0].raft_address();
    let certs = dir.path().join("peer-tls");
    let node_name = "node-1.zone-1.raft.meridian";

    // Plain text, as before this port had TLS.
    let plain = forward(endpoint("http", &target), STEAL_KEY).await;
    assert!(plain.is_err(), "plain text got an answer: {plain:?}");

    // TLS, trusting the zone's CA, but with no certificate of its own.
    let anonymous = endpoint("https", &target)
        .tls_config(tls(&certs.join("ca.crt"), None, node_name))
        .expect("tls");
    for payload in [STEAL_KEY, ADD_FAKE_VOTER] {
        let got = forward(anonymous.clone(), payload).await;
        assert!(got.is_err(), "no client certificate got an answer: {got:?}");
    }

    // A certificate for the right name, from a CA of the outsider's own.
    let own = tempfile::tempdir().expect("tempdir");
    let made = std::process::Command::new(meridian_e2e::bin("zone-cp").expect("bin"))
        .args([
            "generate",
            "peer-certs",
            "--zone",
            "zone-1",
            "--nodes",
            "1",
            "--dir",
        ])
        .arg(own.path())
        .output()
        .expect("generate");
    assert!(made.status.success());
    let forged = endpoint("https", &target)
        .tls_config(tls(
            &certs.join("ca.crt"),
            Some((&own.path().join("node-1.crt"), &own.path().join("node-1.key"))),
            node_name,
        ))
        .expect("tls");
    for payload in [STEAL_KEY, ADD_FAKE_VOTER] {
        let got = forward(forged.clone(), payload).await;
        assert!(
            got.is_err(),
            "a certificate from another CA got an answer: {got:?}"
        );
    }

    // A member speaking for another member: node 2's certificate claiming to be leader 1.
    let node2 = endpoint("https", &target)
        .tls_config(tls(
            &certs.join("ca.crt"),
            Some((&certs.join("node-2.crt"), &certs.join("node-2.key"))),
            node_name,
        ))
        .expect("tls")
        .connect()
        .await
        .expect("node 2 connects");
    let impersonated = ZoneRaftClient::new(node2)
        .append_entries(RaftPayload {
            json: br#"{"vote":{"leader_id":{"term":99,"node_id":1},"committed":true},"prev_log_id":null,"entries":[],"leader_commit":null}"#.to_vec(),
        })
        .await;
    let code = impersonated.map(drop).map_err(|s| s.code());
    assert_eq!(
        code,
        Err(tonic::Code::PermissionDenied),
        "node 2 spoke for node 1"
    );

    // Nothing changed: three members, and the zone still takes an admin's writes.
    let status = raft_status(&nodes[1]);
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3), "{status}");
    let written = ok(meshctl(
        &nodes[1].api_url,
        &["apply", "-f", "-"],
        Some("type: MeshTimeout\nname: after-attack\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 2s}\n"),
    )
    .expect("meshctl"));
    assert!(written.contains("created"), "{written}");
}

#[test]
fn a_zone_of_one_node_serves_no_raft_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two single-node zones on one host: they used to collide on 127.0.0.1:5690.
    let one = ZoneCp::start("zone-1", &dir.path().join("one")).expect("zone 1");
    let two = ZoneCp::start("zone-2", &dir.path().join("two")).expect("zone 2");
    for cp in [&one, &two] {
        let out = std::process::Command::new("ss")
            .args(["-ltnpH"])
            .output()
            .expect("ss");
        let pid = format!("pid={},", cp.pid());
        let listening: Vec<String> = stdout(&out)
            .lines()
            .filter(|l| l.contains(&pid))
            .map(str::to_owned)
            .collect();
        assert_eq!(listening.len(), 2, "only REST and xDS: {listening:#?}");
    }
}

/// Every file and directory under `root`, depth first.
fn walk(root: &Path, out: &mut Vec<std::path::PathBuf>) {
    out.push(root.to_owned());
    if root.is_dir() {
        for entry in std::fs::read_dir(root).expect("read_dir") {
            walk(&entry.expect("entry").path(), out);
        }
    }
}

#[test]
fn a_local_user_who_is_not_the_owner_reads_nothing_in_any_data_dir() {
    use std::os::unix::fs::PermissionsExt;
    if !meridian_testing::running_as_root() {
        eprintln!("skipped: needs root to act as another local user (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Everyone may walk up to the data dirs: only their own permissions stand in the way.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // A data dir left readable by an older release: tightened at start.
    let zone_dir = dir.path().join("zone");
    std::fs::create_dir_all(zone_dir.join("node-1")).expect("dirs");
    std::fs::write(zone_dir.join("node-1/old-notes"), "secret").expect("file");
    for (path, mode) in [(zone_dir.clone(), 0o755), (zone_dir.join("node-1"), 0o755), (zone_dir.join("node-1/old-notes"), 0o644)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    std::fs::set_permissions(&zone_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let global = meridian_e2e::GlobalCp::start(dir.path(), None).expect("global-cp");
    let nodes = ZoneCp::start_cluster("zone-1", &zone_dir, 3).expect("cluster");
    let applied = ok(meshctl(
        &nodes[0].api_url,
        &["apply", "-f", "-"],
        Some("type: MeshTimeout\nname: t1\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 2s}\n"),
    )
    .expect("meshctl"));
    assert!(applied.contains("created"), "{applied}");
    nodes[0].admin_token().expect("the zone's admin token");
    global.admin_token().expect("global's admin token");

    let mut paths = Vec::new();
    for data in [dir.path().join(".meridian"), zone_dir.join("node-1"), zone_dir.join("node-2")] {
        walk(&data, &mut paths);
    }
    let files: Vec<_> = paths.iter().filter(|p| p.is_file()).collect();
    for name in ["meridian.db", "meridian.db-wal", "raft.db", "raft.db-wal", "admin-token", "old-notes"] {
        assert!(
            files.iter().any(|f| f.file_name().is_some_and(|n| n == name)),
            "{name} is among the files checked: {files:#?}"
        );
    }
    for path in &paths {
        let mode = std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777;
        let allowed = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode & !allowed, 0, "{} is {mode:o}", path.display());
        let program = if path.is_dir() { "ls" } else { "cat" };
        let read = meridian_testing::unprivileged(program, true)
            .arg(path)
            .output()
            .expect("run as nobody");
        assert!(
            !read.status.success() && read.stdout.is_empty(),
            "nobody read {}: {}",
            path.display(),
            stdout(&read)
        );
    }
}
