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

/// A write that, unauthenticated, would hand out the zone's signing key: a `secret` write
/// through `Forward` answers with the stored value.
const STEAL_KEY: &str = r#"{"authority":"node","call":{"write":{"atMs":0,"write":{"op":"secret","name":"signing-key/user/1","candidate":"x","replace":false}}}}"#;
/// A fake voter, which would cost the zone its majority.
const ADD_FAKE_VOTER: &str = r#"{"authority":"node","call":{"addMember":{"id":9,"address":"127.0.0.1:9"}}}"#;

/// A forwarded put of a MeshTimeout on behalf of `authority` (JSON).
fn forwarded_put(authority: &str) -> String {
    let resource = r#"{"type":"MeshTimeout","name":"forged","mesh":"default","spec":{"targetRef":{"kind":"Mesh"},"to":[{"targetRef":{"kind":"Mesh"},"default":{"connectionTimeout":"1s"}}]}}"#;
    format!(
        r#"{{"authority":{authority},"call":{{"write":{{"atMs":0,"write":{{"op":"put","resource":{resource},"expectedVersion":null}}}}}}}}"#
    )
}

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
    meridian_testing::wait_until("the default mesh", Duration::from_secs(20), || {
        http_get(&format!("{}/meshes/default", nodes[1].api_url)).0 == 200
    })
    .expect("mesh");
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

    // A member forwarding a write carries its caller's authority, which is checked again:
    // forwarding is no way around the REST API's rules.
    let admin = nodes[0].admin_token().expect("admin token");
    let reader = ok(meshctl(
        &nodes[0].api_url,
        &["--token", &admin, "generate", "user-token", "--name", "reader"],
        None,
    )
    .expect("meshctl"));
    let member = endpoint("https", &target)
        .tls_config(tls(
            &certs.join("ca.crt"),
            Some((&certs.join("node-2.crt"), &certs.join("node-2.key"))),
            node_name,
        ))
        .expect("tls");
    for authority in [
        r#""anonymous""#.to_owned(),
        r#"{"token":"garbage"}"#.to_owned(),
        format!(r#"{{"token":"{}"}}"#, reader.trim()),
    ] {
        let answer = forward(member.clone(), &forwarded_put(&authority))
            .await
            .expect("an answer");
        assert!(answer.contains(r#"{"Err":{"denied""#), "{authority}: {answer}");
    }
    assert_eq!(
        http_get(&format!(
            "{}/meshes/default/meshtimeouts/forged",
            nodes[1].api_url
        ))
        .0,
        404,
        "no forged write"
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
    for (path, mode) in [
        (zone_dir.clone(), 0o755),
        (zone_dir.join("node-1"), 0o755),
        (zone_dir.join("node-1/old-notes"), 0o644),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    std::fs::set_permissions(&zone_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let global = meridian_e2e::GlobalCp::start(dir.path(), None).expect("global-cp");
    let nodes = ZoneCp::start_cluster("zone-1", &zone_dir, 3).expect("cluster");
    meridian_testing::wait_until("the default mesh", Duration::from_secs(20), || {
        http_get(&format!("{}/meshes/default", nodes[0].api_url)).0 == 200
    })
    .expect("mesh");
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
    for data in [
        dir.path().join(".meridian"),
        zone_dir.join("node-1"),
        zone_dir.join("node-2"),
    ] {
        walk(&data, &mut paths);
    }
    let files: Vec<_> = paths.iter().filter(|p| p.is_file()).collect();
    for name in [
        "meridian.db",
        "meridian.db-wal",
        "raft.db",
        "raft.db-wal",
        "admin-token",
        "old-notes",
    ] {
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

/// `curl -X METHOD url` with a bearer token and a YAML body: the status and the body.
fn curl(method: &str, url: &str, token: &str, body: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "-X", method, "-w", "\n%{http_code}"])
        .args([
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/yaml",
        ])
        .args(["--data-binary", body, url])
        .output()
        .expect("curl");
    let text = stdout(&out);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn dataplane(service: &str) -> String {
    format!(
        "type: Dataplane\nname: dp-1\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 18080\n    servicePort: 18081\n    tags:\n      kuma.io/service: {service}\n"
    )
}

#[test]
fn a_dataplane_token_binds_the_service_it_may_claim_and_tokens_can_be_revoked_and_keys_rotated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ZoneCp::start_untrusting("zone-1", &dir.path().join("zone")).expect("zone-cp");
    let admin = cp.admin_token().expect("admin token");
    let as_admin = |args: &[&str]| {
        let mut all = vec!["--token", admin.as_str()];
        all.extend(args);
        ok(meshctl(&cp.api_url, &all, None).expect("meshctl"))
            .trim()
            .to_owned()
    };
    let web = as_admin(&[
        "generate",
        "dataplane-token",
        "--name",
        "dp-1",
        "--tag",
        "kuma.io/service=web",
    ]);
    let url = format!("{}/meshes/default/dataplanes/dp-1", cp.api_url);

    // The token is dp-1's, but registering it as payments is refused: a certificate for
    // spiffe://default/payments would follow.
    let (status, body) = curl("PUT", &url, &web, &dataplane("payments"));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("payments") && body.contains("title"), "{body}");
    assert_eq!(http_get(&url).0, 404, "nothing registered");
    let (status, body) = curl("PUT", &url, &web, &dataplane("web"));
    assert_eq!(status, 201, "{body}");

    // Revoked: refused from then on, wherever it is shown.
    let revoked =
        ok(meshctl(&cp.api_url, &["--token", &admin, "revoke", "token", &web], None).expect("meshctl"));
    assert!(revoked.contains("revoked token"), "{revoked}");
    meridian_testing::wait_until("the revocation", Duration::from_secs(5), || {
        curl("PUT", &url, &web, &dataplane("web")).0 == 401
    })
    .expect("revoked");
    let (_, body) = curl("PUT", &url, &web, &dataplane("web"));
    assert!(body.contains("revoked"), "{body}");

    // Rotation: a new key signs; the admin token the old key signed still works.
    let keys = as_admin(&["signing-keys", "rotate", "--kind", "user"]);
    assert!(keys.contains("now signed by key 2"), "{keys}");
    let user = as_admin(&[
        "generate",
        "user-token",
        "--name",
        "alice",
        "--group",
        "mesh-system:admin",
    ]);
    let header: serde_json::Value =
        serde_json::from_slice(&base64_url(user.split('.').next().expect("header"))).expect("header json");
    assert_eq!(header["kid"], "user/2", "{header}");
    assert_eq!(header["alg"], "EdDSA", "{header}");
    let listed = as_admin(&["signing-keys"]);
    assert!(listed.contains("verifies") && listed.contains("yes"), "{listed}");
    let (status, body) = curl("PUT", &url, &user, &dataplane("web"));
    assert_eq!(status, 200, "the new key's token: {body}");
}

/// Decodes unpadded base64url (a JWT part).
fn base64_url(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64url") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

#[test]
fn an_anonymous_reader_never_sees_a_meshtrace_api_key_and_the_admin_does() {
    const KEY: &str = "<HONEYCOMB_API_KEY>";
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = std::fs::read_to_string(meridian_e2e::example("seed-meshtrace.yaml")).expect("seed");
    assert!(seed.contains(KEY));

    let global = meridian_e2e::GlobalCp::start_untrusting(dir.path()).expect("global-cp");
    let admin = global.admin_token().expect("admin token");
    ok(meshctl(
        &global.api_url,
        &["--token", &admin, "apply", "-f", "-"],
        Some(&seed),
    )
    .expect("meshctl"));
    let url = format!("{}/meshes/default/meshtraces/default", global.api_url);
    let (status, anonymous, _) = http_get(&url);
    assert_eq!(status, 200, "{anonymous}");
    assert!(
        !anonymous.contains(KEY) && anonymous.contains("<redacted>"),
        "{anonymous}"
    );
    let (status, read) = curl("GET", &url, &admin, "");
    assert_eq!(status, 200);
    assert!(read.contains(KEY), "the admin reads it: {read}");
    let listed = ok(meshctl(&global.api_url, &["get", "meshtraces", "-o", "yaml"], None).expect("meshctl"));
    assert!(!listed.contains(KEY), "{listed}");

    // A zone holding the key in a proxy's generated config never serves it either.
    let zone = ZoneCp::start_untrusting("zone-1", &dir.path().join("zone")).expect("zone-cp");
    let zone_admin = zone.admin_token().expect("admin token");
    ok(meshctl(
        &zone.api_url,
        &["--token", &zone_admin, "apply", "-f", "-"],
        Some(&seed),
    )
    .expect("meshctl"));
    let dp = "type: Dataplane\nname: demo-1\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 18080\n    servicePort: 18081\n    tags: {kuma.io/service: demo, kuma.io/protocol: http}\n";
    let (status, body) = curl(
        "PUT",
        &format!("{}/meshes/default/dataplanes/demo-1", zone.api_url),
        &zone_admin,
        dp,
    );
    assert_eq!(status, 201, "{body}");
    let config = format!("{}/meshes/default/dataplanes/demo-1/_config", zone.api_url);
    meridian_testing::wait_until("tracing in the proxy's config", Duration::from_secs(20), || {
        http_get(&config).1.contains("envoy.tracers.opentelemetry")
    })
    .expect("traced");
    let (_, shown, _) = http_get(&config);
    assert!(!shown.contains("HONEYCOMB"), "the key is not in _config");
    assert!(
        shown.contains("x-api-key") && shown.contains("<redacted>"),
        "only its name is, the collector's config decoded and its value hidden: {shown}"
    );
}

#[test]
fn deeply_nested_bodies_are_refused_at_once_and_healthz_stays_responsive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let global = meridian_e2e::GlobalCp::start(dir.path(), None).expect("global-cp");
    let admin = global.admin_token().expect("admin token");
    let depth = 60_000;
    let body = format!(
        "type: MeshTimeout\nname: deep\nmesh: default\nspec:\n  targetRef: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let body_file = dir.path().join("deep.yaml");
    std::fs::write(&body_file, &body).expect("write");
    let url = format!("{}/meshes/default/meshtimeouts/deep", global.api_url);
    let senders: Vec<_> = (0..6)
        .map(|_| {
            let (url, admin, body_file) = (url.clone(), admin.clone(), body_file.clone());
            std::thread::spawn(move || {
                (0..5)
                    .map(|_| {
                        let out = std::process::Command::new("curl")
                            .args(["-s", "--max-time", "20", "-X", "PUT", "-w", "\n%{http_code}"])
                            .args(["-H", &format!("Authorization: Bearer {admin}")])
                            .args(["-H", "Content-Type: application/yaml", "--data-binary"])
                            .arg(format!("@{}", body_file.display()))
                            .arg(&url)
                            .output()
                            .expect("curl");
                        stdout(&out)
                    })
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    let health = format!("{}/healthz", global.api_url);
    let mut slowest = Duration::ZERO;
    while senders.iter().any(|s| !s.is_finished()) {
        let (status, _, took) = http_get(&health);
        assert_eq!(
            status, 200,
            "/healthz answers (within curl's 10 s) while deep bodies arrive"
        );
        slowest = slowest.max(took);
        std::thread::sleep(Duration::from_millis(20));
    }
    for sender in senders {
        for answer in sender.join().expect("sender") {
            let (body, code) = answer.rsplit_once('\n').expect("status");
            assert_eq!(code, "400", "{body}");
            assert!(body.contains("nested more than 64 levels"), "{body}");
        }
    }
    eprintln!("slowest /healthz while 30 deep bodies arrived: {slowest:?}");
}
