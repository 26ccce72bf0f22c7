//! The acceptance drills for the global control plane, with real processes.

use std::path::Path;

use meridian_e2e::{GlobalCp, example, meshctl, ok, stderr, stdout};
use meridian_testing::Postgres;

fn apply_seed_examples(cp: &GlobalCp) {
    for file in ["seed-traffic-permission.yaml", "seed-meshtrace.yaml"] {
        let path = example(file);
        let out = ok(cp
            .meshctl(&["apply", "-f", path.to_str().expect("utf-8 path")])
            .expect("meshctl"));
        assert!(out.contains("created"), "{out}");
    }
}

fn assert_seed_examples_present(cp: &GlobalCp) {
    let traces = ok(cp.meshctl(&["get", "meshtraces", "-o", "yaml"]).expect("meshctl"));
    assert!(
        traces.contains("endpoint: otel-collector.kuma-system.svc:4317"),
        "{traces}"
    );
    assert!(traces.contains("x-api-key: <HONEYCOMB_API_KEY>"), "{traces}");
    let perms = ok(cp
        .meshctl(&["get", "traffic-permissions", "allow-demo-to-reg", "-o", "json"])
        .expect("meshctl"));
    assert!(perms.contains("reg-server"), "{perms}");
}

#[test]
fn seed_examples_survive_kill_9_on_the_embedded_store() {
    let work = tempfile::tempdir().expect("tempdir");
    let mut cp = GlobalCp::start(work.path(), None).expect("start global-cp");
    apply_seed_examples(&cp);
    assert_seed_examples_present(&cp);
    assert!(
        Path::new(&work.path().join(".meridian/global/meridian.db")).exists(),
        "default data dir"
    );

    cp.kill_9().expect("kill -9");
    let cp = cp.restart().expect("restart");
    assert_seed_examples_present(&cp);
    // The restart did not re-create or touch anything: versions are still 1.
    let table = ok(cp.meshctl(&["get", "meshtrace", "default"]).expect("meshctl"));
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().nth(2) == Some("1")),
        "{table}"
    );
}

#[test]
fn seed_examples_survive_kill_9_on_postgres() {
    let pg = Postgres::start().expect("postgres");
    let work = tempfile::tempdir().expect("tempdir");
    let mut cp = GlobalCp::start(work.path(), Some(&pg.url())).expect("start global-cp");
    apply_seed_examples(&cp);
    cp.kill_9().expect("kill -9");
    let cp = cp.restart().expect("restart");
    assert_seed_examples_present(&cp);
}

#[test]
fn two_replicas_on_one_postgres_agree() {
    let pg = Postgres::start().expect("postgres");
    let (wa, wb) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = GlobalCp::start(wa.path(), Some(&pg.url())).expect("replica a");
    let b = GlobalCp::start(wb.path(), Some(&pg.url())).expect("replica b");

    // A write on one replica is read on the other at once.
    apply_seed_examples(&a);
    assert_seed_examples_present(&b);

    // Writes land on both in turn; each sees the other's.
    let trace = |endpoint: &str| {
        format!(
            "type: MeshTrace\nname: shared\nspec:\n  backends:\n  - name: otel\n    type: open_telemetry\n    conf:\n      endpoint: {endpoint}\n"
        )
    };
    ok(meshctl(&a.api_url, &["apply", "-f", "-"], Some(&trace("a:4317"))).expect("meshctl"));
    ok(meshctl(&b.api_url, &["apply", "-f", "-"], Some(&trace("b:4317"))).expect("meshctl"));
    let seen_on_a = ok(a
        .meshctl(&["get", "meshtrace", "shared", "-o", "json"])
        .expect("meshctl"));
    assert!(
        seen_on_a.contains("b:4317") && seen_on_a.contains("\"version\": 2"),
        "{seen_on_a}"
    );

    // Optimistic concurrency holds across replicas: a write based on version 1 is refused on
    // either, since the other replica already moved it to version 2.
    let stale = format!("version: 1\n{}", trace("stale:4317"));
    for cp in [&a, &b] {
        let out = meshctl(&cp.api_url, &["apply", "-f", "-"], Some(&stale)).expect("meshctl");
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        assert!(stderr(&out).contains("409"), "{}", stderr(&out));
    }

    // Concurrent writers on both replicas: every write lands, none is lost.
    let writers: Vec<_> = [(&a.api_url, "a"), (&b.api_url, "b")]
        .into_iter()
        .map(|(url, tag)| {
            let url = url.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    let doc = format!(
                        "type: MeshTrace\nname: {tag}-{i}\nspec:\n  backends:\n  - name: otel\n    type: open_telemetry\n    conf:\n      endpoint: c:4317\n"
                    );
                    ok(meshctl(&url, &["apply", "-f", "-"], Some(&doc)).expect("meshctl"));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    for cp in [&a, &b] {
        let all = ok(cp.meshctl(&["get", "meshtraces", "-o", "json"]).expect("meshctl"));
        let parsed: serde_json::Value = serde_json::from_str(&all).expect("json");
        assert_eq!(parsed["total"], 22, "seed + shared + 20 concurrent: {all}");
    }
}

#[test]
fn apply_validates_every_document_before_writing_any() {
    let work = tempfile::tempdir().expect("tempdir");
    let cp = GlobalCp::start(work.path(), None).expect("start global-cp");
    let docs = "type: Mesh\nname: m2\n---\ntype: MeshTrace\nname: good\nmesh: m2\nspec:\n  backends:\n  - name: o\n    type: open_telemetry\n    conf:\n      endpoint: c:4317\n---\ntype: MeshTrace\nname: bad\nmesh: m2\nspec:\n  backends:\n  - name: o\n    type: open_telemetry\n    conf:\n      endpont: c:4317\n";
    let out = meshctl(&cp.api_url, &["apply", "-f", "-"], Some(docs)).expect("meshctl");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("document 3 (MeshTrace \"bad\"): spec.backends[0].conf.endpont"),
        "{}",
        stderr(&out)
    );
    let meshes = ok(cp.meshctl(&["get", "meshes"]).expect("meshctl"));
    assert!(!meshes.contains("m2"), "nothing may be written: {meshes}");

    // A resource in a mesh that exists nowhere is refused before anything is written.
    let orphan = "type: Mesh\nname: m3\n---\ntype: MeshTrace\nname: t\nmesh: m4\nspec:\n  backends:\n  - name: o\n    type: open_telemetry\n    conf:\n      endpoint: c:4317\n";
    let out = meshctl(&cp.api_url, &["apply", "-f", "-"], Some(orphan)).expect("meshctl");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("mesh \"m4\", which does not exist"),
        "{}",
        stderr(&out)
    );
    assert!(!ok(cp.meshctl(&["get", "meshes"]).expect("meshctl")).contains("m3"));

    // Once fixed, the whole file applies, and again reports unchanged.
    let fixed = docs.replace("endpont", "endpoint");
    let out = ok(meshctl(&cp.api_url, &["apply", "-f", "-"], Some(&fixed)).expect("meshctl"));
    assert_eq!(out.matches("created").count(), 3, "{out}");
    let out = ok(meshctl(&cp.api_url, &["apply", "-f", "-"], Some(&fixed)).expect("meshctl"));
    assert_eq!(out.matches("unchanged").count(), 3, "{out}");
}

#[test]
fn meshctl_exit_codes_and_kind_names() {
    let work = tempfile::tempdir().expect("tempdir");
    let cp = GlobalCp::start(work.path(), None).expect("start global-cp");
    apply_seed_examples(&cp);
    for kind in ["MeshTrace", "meshtrace", "meshtraces"] {
        let out = ok(cp.meshctl(&["get", kind]).expect("meshctl"));
        assert!(out.contains("default"), "{kind}: {out}");
    }
    let usage = cp.meshctl(&["get", "meshtrice"]).expect("meshctl");
    assert_eq!(usage.status.code(), Some(2));
    assert!(stderr(&usage).contains("known kinds"), "{}", stderr(&usage));
    assert_eq!(
        cp.meshctl(&["frobnicate"]).expect("meshctl").status.code(),
        Some(2)
    );
    assert_eq!(
        cp.meshctl(&["apply", "-f", "/no/such/file"])
            .expect("meshctl")
            .status
            .code(),
        Some(2)
    );
    let refused = cp.meshctl(&["delete", "meshtrace", "nope"]).expect("meshctl");
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("not found"), "{}", stderr(&refused));
    let busy = cp.meshctl(&["delete", "mesh", "default"]).expect("meshctl");
    assert_eq!(busy.status.code(), Some(1));
    assert!(stderr(&busy).contains("cascade"), "{}", stderr(&busy));
    ok(cp.meshctl(&["delete", "meshtrace", "default"]).expect("meshctl"));
    ok(cp
        .meshctl(&["delete", "mesh", "default", "--cascade"])
        .expect("meshctl"));
    let gone = cp.meshctl(&["get", "mesh", "default"]).expect("meshctl");
    assert_eq!(gone.status.code(), Some(1));
    let unreachable = meshctl("http://127.0.0.1:1", &["get", "meshes"], None).expect("meshctl");
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(
        stderr(&unreachable).contains("cannot reach"),
        "{}",
        stderr(&unreachable)
    );
}

const TRACE: &str = "type: MeshTrace\nname: t\nspec:\n  backends:\n  - name: o\n    type: open_telemetry\n    conf: {endpoint: 'a:4317'}\n";

#[test]
fn changes_need_an_admin_token_and_a_bad_token_is_refused_from_anywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = GlobalCp::start_untrusting(dir.path()).expect("global-cp");
    let admin = cp.admin_token().expect("admin token on disk");
    let run = |args: &[&str]| meshctl(&cp.api_url, args, Some(TRACE)).expect("meshctl");

    let anonymous = run(&["apply", "-f", "-"]);
    assert_eq!(anonymous.status.code(), Some(1));
    let err = stderr(&anonymous);
    assert!(err.contains("401") && err.contains("admin-token"), "{err}");
    assert!(
        ok(run(&["get", "meshtraces"])).contains("NAME"),
        "reads need no token"
    );

    ok(run(&["--token", &admin, "apply", "-f", "-"]));
    let admin_run = |args: &[&str]| {
        let mut all = vec!["--token", admin.as_str()];
        all.extend_from_slice(args);
        ok(run(&all))
    };
    let reader = admin_run(&["generate", "user-token", "--name", "ro", "--group", "viewers"]);
    let refused = run(&["--token", reader.trim(), "delete", "meshtrace", "t"]);
    let err = stderr(&refused);
    assert!(err.contains("403"), "a non-admin may not write: {err}");
    assert!(ok(run(&["--token", reader.trim(), "get", "meshtraces"])).contains('t'));
    let zone_token = admin_run(&["generate", "zone-token", "--zone", "zone-1"]);
    let zone = run(&["--token", zone_token.trim(), "get", "meshtraces"]);
    let err = stderr(&zone);
    assert!(err.contains("401"), "a zone token is no user token: {err}");
    let forged = run(&["--token", "v1.bogus.bogus", "get", "meshtraces"]);
    assert!(stderr(&forged).contains("401"), "{}", stderr(&forged));
    assert!(
        ok(run(&["get", "meshtrace", "t"])).contains("t"),
        "nothing was deleted"
    );

    // A trusting control plane (the default) lets its own host write without a token, but
    // still refuses a bad one.
    let trusting_dir = tempfile::tempdir().expect("tempdir");
    let trusting = GlobalCp::start(trusting_dir.path(), None).expect("global-cp");
    ok(meshctl(&trusting.api_url, &["apply", "-f", "-"], Some(TRACE)).expect("meshctl"));
    let forged = meshctl(
        &trusting.api_url,
        &["--token", "v1.x.y", "get", "meshtraces"],
        None,
    )
    .expect("meshctl");
    assert!(stderr(&forged).contains("401"), "{}", stderr(&forged));
}
