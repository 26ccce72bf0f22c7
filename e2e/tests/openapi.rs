//! schemathesis (PyPI, installed into `.venv` by `cargo xtask setup`) against started control
//! planes, driven by the OpenAPI document each serves: every operation gets generated requests
//! (a bounded number each, a fixed seed), and the run fails on any 5xx answer or any answer that
//! does not match the document's schema for it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use meridian_e2e::{GlobalCp, ZoneCp, stderr, stdout};

fn schemathesis() -> PathBuf {
    let st = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/st");
    assert!(
        st.exists(),
        "{} is missing: run `cargo xtask setup` (cargo xtask test does it)",
        st.display()
    );
    st
}

/// Runs schemathesis against `api_url` as the admin, in `phases`; panics with its report on
/// any failure.
fn run(api_url: &str, token: &str, phases: &str, work: &Path) {
    let out = Command::new("timeout")
        .arg("900")
        .arg(schemathesis())
        .args(["run", &format!("{api_url}/openapi.json")])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--max-examples", "10", "--seed", "1", "--workers", "1"])
        .args([
            "--phases",
            phases,
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
        ])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        // Its caches go to the test's own directory.
        .current_dir(work)
        .env("HYPOTHESIS_STORAGE_DIRECTORY", work.join("hypothesis"))
        .env("NO_COLOR", "1")
        .output()
        .expect("running schemathesis");
    let report = stdout(&out);
    eprintln!(
        "{}",
        report
            .lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        out.status.success(),
        "schemathesis found failures ({}):\n{report}\n{}",
        out.status,
        stderr(&out)
    );
    assert!(report.contains("passed"), "{report}");
}

#[test]
fn global_cp_answers_as_its_openapi_document_says() {
    let dir = tempfile::tempdir().expect("tempdir");
    let global = GlobalCp::start(dir.path(), None).expect("global-cp");
    let token = global.admin_token().expect("admin token");
    run(&global.api_url, &token, "examples,coverage,fuzzing", dir.path());
    // It is still serving after all that.
    let (status, _, _) = meridian_e2e::http_get(&format!("{}/healthz", global.api_url));
    assert_eq!(status, 200);
}

#[test]
fn zone_cp_answers_as_its_openapi_document_says() {
    let dir = tempfile::tempdir().expect("tempdir");
    let zone = ZoneCp::start("zone-1", &dir.path().join("zone")).expect("zone-cp");
    let token = zone.admin_token().expect("admin token");
    meridian_testing::wait_until("the default mesh", Duration::from_secs(20), || {
        meridian_e2e::http_get(&format!("{}/meshes/default", zone.api_url)).0 == 200
    })
    .expect("mesh");
    run(&zone.api_url, &token, "examples,fuzzing", dir.path());
}
