//! The Kubernetes artefacts, checked with the tools a cluster's users have (no API server can
//! be had here): the CustomResourceDefinitions and the example manifests validated in strict
//! mode by `kubernetes-validate` against each Kubernetes version the chart supports, and the
//! `kuma.io` resources checked against the definitions as an API server's strict field
//! validation would (`tests/kubernetes/check_custom_resources.py`). The webhooks themselves
//! are driven over HTTPS in `zone-cp/tests/webhook.rs`.

use std::path::PathBuf;
use std::process::Command;

/// The oldest and newest Kubernetes the chart supports (native sidecars are on from 1.29;
/// k8s-openapi's oldest is 1.33).
const VERSIONS: &[&str] = &["1.33", "1.37"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn venv(tool: &str) -> PathBuf {
    root().join(".venv/bin").join(tool)
}

fn files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{dir} holds no manifests");
    files
}

fn run(command: &mut Command) -> String {
    let out = command.output().expect("runs (cargo xtask setup installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?} failed:\n{text}");
    text
}

#[test]
fn the_crds_and_manifests_pass_strict_validation_for_each_supported_kubernetes() {
    let crds = files("deploy/helm/meridian/crds");
    let manifests = files("deploy/examples/kubernetes");
    for version in VERSIONS {
        let text = run(Command::new(venv("kubernetes-validate"))
            .args(["--strict", "-k", version])
            .args(&crds)
            .args(&manifests));
        assert!(!text.contains("ERROR"), "{text}");
        let passed = text.matches(" passed for resource ").count();
        assert!(
            passed >= crds.len() + 6,
            "every CRD and built-in object was checked for {version}:\n{text}"
        );
    }
}

#[test]
fn kuma_manifests_pass_the_crds_as_written_and_unknown_fields_do_not() {
    let crds = root().join("deploy/helm/meridian/crds");
    let script = root().join("e2e/tests/kubernetes/check_custom_resources.py");
    let mut manifests = files("deploy/examples/kubernetes");
    manifests.extend(files("../shared/examples"));
    let text = run(Command::new(venv("python"))
        .arg(&script)
        .arg(&crds)
        .args(&manifests));
    assert!(text.contains("ok ") && !text.contains("REFUSED"), "{text}");
    let dir = tempfile::tempdir().expect("a temp dir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: kuma.io/v1alpha1\nkind: MeshTrafficPermission\nmetadata: {name: x, namespace: kuma-system}\nspec:\n  targetRef: {kind: Mesh}\n  form: []\n",
    )
    .expect("write");
    let out = Command::new(venv("python"))
        .arg(&script)
        .arg(&crds)
        .arg(&bad)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("'form' was unexpected"),
        "{text}"
    );
}

/// What an injected sidecar does: the zone already holds the Dataplane its pod became, so
/// meridian-dp fetches it instead of registering, serves the kubelet's `/ready` once Envoy is
/// configured, and leaves the Dataplane to its owner when it stops.
#[test]
fn an_injected_sidecar_runs_the_dataplane_its_pod_became_and_answers_the_kubelet() {
    use std::time::Duration;

    use meridian_e2e::{ZoneCp, http_get, meshctl, ok, stderr};
    use meridian_testing::{KillOnDrop, free_port, wait_until};

    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ZoneCp::start("zone-1", &dir.path().join("zone")).expect("zone-cp");
    let name = "reg-server-7d4b9c6f5-x2k9p-mesh-for-devs";
    let app_port = free_port().expect("port");
    let dataplane = format!(
        "type: Dataplane\nname: {name}\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {}\n    servicePort: {app_port}\n    tags: {{kuma.io/service: reg-server_mesh-for-devs_svc_80, k8s.kuma.io/namespace: mesh-for-devs}}\n",
        free_port().expect("port")
    );
    ok(meshctl(&cp.api_url, &["apply", "-f", "-"], Some(&dataplane)).expect("meshctl"));

    let sidecar = |name: &str, readiness: u16, timeout: &str| {
        let mut command = Command::new(meridian_e2e::bin("meridian-dp").expect("bin"));
        command
            .args(["run", "--cp-address", &cp.xds_url, "--register-timeout", timeout])
            .env("MERIDIAN_DATAPLANE_REGISTERED", "true")
            .env("MERIDIAN_DATAPLANE_NAME", name)
            .env("MERIDIAN_READINESS_PORT", readiness.to_string())
            .args([
                "--envoy-binary".as_ref(),
                meridian_e2e::envoy().expect("envoy").as_os_str(),
            ]);
        command
    };
    // A pod the zone made no Dataplane for says so, within its bound.
    let out = sidecar("nobody-mesh-for-devs", free_port().expect("port"), "2s")
        .output()
        .expect("meridian-dp");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("made no Dataplane"), "{}", stderr(&out));

    let readiness = free_port().expect("port");
    let mut dp = KillOnDrop::new(
        sidecar(name, readiness, "20s")
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("meridian-dp"),
    );
    let ready_url = format!("http://127.0.0.1:{readiness}/ready");
    wait_until("the kubelet's probe to pass", Duration::from_secs(30), || {
        http_get(&ready_url).0 == 200
    })
    .expect("ready");
    assert_eq!(
        http_get(&format!("http://127.0.0.1:{readiness}/stats")).0,
        404,
        "only /ready is served"
    );
    dp.terminate(Duration::from_secs(15)).expect("sigterm");
    let (status, body, _) = http_get(&format!("{}/meshes/default/dataplanes/{name}", cp.api_url));
    assert_eq!(status, 200, "the Dataplane is its owner's to remove: {body}");
}
