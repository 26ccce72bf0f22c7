//! The admission webhooks over real HTTPS, driven by curl with real `AdmissionReview` JSON.
//!
//! The injector's cases are golden files in `tests/inject/`: `NAME.pod.yaml` is the Pod the
//! API server sends; the webhook's JSONPatch is kept as `NAME.patch.json` and the Pod with
//! the patch applied as `NAME.patched.yaml` (a refused Pod keeps its answer's status as
//! `NAME.refused.json`). `UPDATE_GOLDEN=1 cargo test -p meridian-zone-cp --test webhook`
//! rewrites them; review the diff before committing. Cases whose name holds `traditional`
//! run as on a cluster without native sidecars.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use base64::Engine;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use meridian_model::text::{to_yaml, yaml_values};
use meridian_zone_cp::kubernetes::inject::InjectorConfig;
use meridian_zone_cp::kubernetes::webhook::{WebhookTls, Webhooks, serve};
use serde_json::{Value, json};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/inject")
}

fn namespaces() -> reflector::Store<Namespace> {
    let (store, mut writer) = reflector::store::<Namespace>();
    let ns = |name: &str, labels: Value| -> Namespace {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": labels}
        }))
        .expect("a namespace")
    };
    for n in [
        ns(
            "mesh-for-devs",
            json!({"kubernetes.io/metadata.name": "mesh-for-devs", "kuma.io/sidecar-injection": "enabled"}),
        ),
        ns("opted-out", json!({"kuma.io/sidecar-injection": "disabled"})),
        ns("plain", json!({})),
        ns(
            "payments",
            json!({"kuma.io/sidecar-injection": "true", "kuma.io/mesh": "payments"}),
        ),
        ns("typo", json!({"kuma.io/sidecar-injection": "enabeld"})),
    ] {
        writer.apply_watcher_event(&Event::Apply(n));
    }
    store
}

fn review(uid: &str, namespace: &str, object: &Value, kind: &str, operation: &str) -> Value {
    let (group, resource) = if kind == "Pod" {
        ("", "pods")
    } else {
        ("kuma.io", "meshtrafficpermissions")
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": if kind == "Pod" { "v1" } else { "v1alpha1" }, "kind": kind},
            "resource": {"group": group, "version": if kind == "Pod" { "v1" } else { "v1alpha1" }, "resource": resource},
            "requestKind": {"group": group, "version": "v1", "kind": kind},
            "requestResource": {"group": group, "version": "v1", "resource": resource},
            "name": object["metadata"]["name"].as_str().unwrap_or_default(),
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "uid": "u-1", "groups": ["system:serviceaccounts"]},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

struct Server {
    port: u16,
    ca: PathBuf,
    _dir: tempfile::TempDir,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Server {
    async fn start(native: bool) -> Server {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("a certificate");
        let dir = tempfile::tempdir().expect("a temp dir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.cert.pem()).expect("write the CA");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let hooks = Webhooks {
            config: Arc::new(InjectorConfig {
                native_sidecars: native,
                image: "meridian/meridian-dp:test".into(),
                ..InjectorConfig::default()
            }),
            namespaces: namespaces(),
            meshes: Arc::new(|m: &str| m == "default" || m == "payments"),
        };
        let tls = WebhookTls {
            cert_pem: cert.cert.pem().into_bytes(),
            key_pem: cert.signing_key.serialize_pem().into_bytes(),
        };
        let refused = meridian_api::serve::Refused(Default::default());
        tokio::spawn(async move {
            if let Err(e) = serve(listener, tls, hooks, 64, stop_rx, refused).await {
                panic!("the webhook server failed: {e:#}");
            }
        });
        Server {
            port,
            ca,
            _dir: dir,
            stop,
        }
    }

    /// POSTs `body` with curl, as the API server would, and returns the JSON answer.
    async fn post(&self, path: &str, body: &Value) -> Value {
        let url = format!("https://localhost:{}{path}", self.port);
        let ca = self.ca.clone();
        let body = body.to_string();
        let port = self.port;
        let out = tokio::task::spawn_blocking(move || {
            Command::new("curl")
                .args(["-sS", "--fail-with-body", "--max-time", "10", "--cacert"])
                .arg(&ca)
                .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
                .args([
                    "-H",
                    "content-type: application/json",
                    "--data-binary",
                    "@-",
                    &url,
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut child| {
                    use std::io::Write;
                    child.stdin.take().expect("stdin").write_all(body.as_bytes())?;
                    child.wait_with_output()
                })
                .expect("curl runs")
        })
        .await
        .expect("curl joined");
        assert!(
            out.status.success(),
            "curl {path}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).expect("a JSON answer")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual).expect("write a golden file");
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        expected == actual,
        "{} differs (UPDATE_GOLDEN=1 to rewrite, then review the diff):\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

#[tokio::test]
async fn the_injector_answers_every_case_as_its_golden_files_say() {
    let native = Server::start(true).await;
    let traditional = Server::start(false).await;
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("tests/inject")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".pod.yaml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "the cases: {cases:?}");
    for case in cases {
        let text = std::fs::read_to_string(&case).expect("read a case");
        let pod = yaml_values(&text).expect("YAML").remove(0);
        let stem = case
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .replace(".pod.yaml", "");
        let namespace = pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or("mesh-for-devs")
            .to_owned();
        let server = if stem.contains("traditional") {
            &traditional
        } else {
            &native
        };
        let uid = format!("uid-{stem}");
        let answer = server
            .post(
                "/inject-sidecar",
                &review(&uid, &namespace, &pod, "Pod", "CREATE"),
            )
            .await;
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{stem}: {answer}");
        assert_eq!(answer["kind"], "AdmissionReview", "{stem}");
        let response = &answer["response"];
        assert_eq!(response["uid"], uid.as_str(), "{stem}: the uid is echoed");
        let base = dir().join(&stem);
        let refused = base.with_extension("refused.json");
        let patch_file = base.with_extension("patch.json");
        let patched_file = base.with_extension("patched.yaml");
        if response["allowed"] == true {
            assert!(
                !refused.exists() || std::env::var_os("UPDATE_GOLDEN").is_some(),
                "{stem} was to be refused"
            );
            let patch: Value = match response["patch"].as_str() {
                Some(b64) => {
                    assert_eq!(response["patchType"], "JSONPatch", "{stem}");
                    serde_json::from_slice(
                        &base64::engine::general_purpose::STANDARD
                            .decode(b64)
                            .expect("base64"),
                    )
                    .expect("a JSON patch")
                }
                None => json!([]),
            };
            golden(
                &patch_file,
                &format!("{}\n", serde_json::to_string_pretty(&patch).expect("encode")),
            );
            let mut patched = pod.clone();
            let ops: json_patch::Patch = serde_json::from_value(patch).expect("RFC 6902");
            json_patch::patch(&mut patched, &ops).expect("the patch applies to the pod it was made for");
            golden(&patched_file, &to_yaml(&patched));
        } else {
            golden(
                &refused,
                &format!(
                    "{}\n",
                    serde_json::to_string_pretty(&response["status"]).expect("encode")
                ),
            );
        }
    }
}

#[tokio::test]
async fn the_validating_webhook_refuses_with_the_models_field_errors() {
    let server = Server::start(true).await;
    let good = yaml_values(
        "apiVersion: kuma.io/v1alpha1\nkind: MeshTrafficPermission\nmetadata:\n  name: allow-demo\n  namespace: kuma-system\n  uid: 6f1c\n  resourceVersion: \"81234\"\n  generation: 1\n  creationTimestamp: \"2026-12-03T10:00:00Z\"\n  labels: {kuma.io/mesh: default}\n  managedFields: [{manager: kubectl, operation: Update}]\nspec:\n  targetRef: {kind: MeshService, name: reg-server}\n  from:\n  - targetRef: {kind: MeshService, name: demo}\n    default: {action: Allow}\n",
    )
    .expect("YAML")
    .remove(0);
    let answer = server
        .post(
            "/validate-kuma-io-v1alpha1",
            &review("v-1", "kuma-system", &good, "MeshTrafficPermission", "CREATE"),
        )
        .await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert_eq!(answer["response"]["uid"], "v-1");

    let mut bad = good.clone();
    bad["spec"]["from"][0]["default"]["action"] = json!("Permit");
    let answer = server
        .post(
            "/validate-kuma-io-v1alpha1",
            &review("v-2", "kuma-system", &bad, "MeshTrafficPermission", "UPDATE"),
        )
        .await;
    let response = &answer["response"];
    assert_eq!(response["allowed"], false, "{answer}");
    assert_eq!(response["status"]["code"], 422);
    assert_eq!(response["status"]["reason"], "Invalid");
    let cause = &response["status"]["details"]["causes"][0];
    assert_eq!(cause["field"], "spec.from[0].default.action", "{answer}");
    assert!(
        response["status"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("spec.from[0].default.action: ")),
        "{answer}"
    );
    // Deleting is never refused: a resource that no longer validates must still be removable.
    let answer = server
        .post(
            "/validate-kuma-io-v1alpha1",
            &review("v-3", "kuma-system", &bad, "MeshTrafficPermission", "DELETE"),
        )
        .await;
    assert_eq!(answer["response"]["allowed"], true);
    // The seed manifests and the talk's, unchanged, pass.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in [
        "../shared/examples/seed-meshtrace.yaml",
        "../shared/examples/seed-traffic-permission.yaml",
        "deploy/examples/kubernetes/03-policies.yaml",
    ] {
        let docs = yaml_values(&std::fs::read_to_string(root.join(file)).expect("a manifest")).expect("YAML");
        assert!(!docs.is_empty(), "{file}");
        for doc in docs {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let answer = server
                .post(
                    "/validate-kuma-io-v1alpha1",
                    &review("v-4", "default", &doc, &kind, "CREATE"),
                )
                .await;
            assert_eq!(answer["response"]["allowed"], true, "{file} {kind}: {answer}");
        }
    }
}

/// The HTTP status curl gets for `args` sent to the injector.
fn status_of(port: u16, ca: &Path, args: &[&str]) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(args)
        .arg(format!("https://localhost:{port}/inject-sidecar"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_review_too_large_or_not_json_is_refused_by_the_http_layer() {
    let server = Server::start(true).await;
    let (port, ca) = (server.port, server.ca.clone());
    let big = tempfile::NamedTempFile::new().expect("a temp file");
    std::fs::write(big.path(), vec![b' '; 5 << 20]).expect("write");
    let big_arg = format!("@{}", big.path().display());
    let statuses = tokio::task::spawn_blocking(move || {
        let json = ["-H", "content-type: application/json", "--data-binary"];
        [
            status_of(port, &ca, &[json[0], json[1], json[2], &big_arg]),
            status_of(port, &ca, &[json[0], json[1], json[2], "{not json"]),
            status_of(
                port,
                &ca,
                &[
                    json[0],
                    json[1],
                    json[2],
                    "{\"apiVersion\": \"admission.k8s.io/v1\", \"kind\": \"AdmissionReview\"}",
                ],
            ),
        ]
    })
    .await
    .expect("curl joined");
    // Over HTTP/2 the server answers 413 and resets the stream while curl is still sending,
    // which curl reports as a framing error (000): either way nothing over 4 MiB is read.
    assert!(
        matches!(statuses[0].as_str(), "413" | "000"),
        "a review over 4 MiB: {}",
        statuses[0]
    );
    assert_eq!(statuses[1], "400", "not JSON");
    assert_eq!(
        statuses[2], "200",
        "a review without a request is answered, not allowed; the server still serves"
    );
    // And a client that does not trust the webhook's certificate gets nowhere.
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                "--resolve",
                &format!("localhost:{port}:127.0.0.1"),
            ])
            .arg(format!("https://localhost:{port}/inject-sidecar"))
            .output()
            .expect("curl")
    })
    .await
    .expect("joined");
    assert!(
        !out.status.success(),
        "an untrusted certificate is refused by the client"
    );
}
