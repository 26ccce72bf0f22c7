//! A zone's life as global sees it: online, offline when lost, and both ends stopping cleanly.

use std::time::Duration;

use meridian_e2e::{GlobalCp, ZoneCp, http_get};
use meridian_testing::wait_until;

/// The zone's `state` as `GET /zones/ZONE` on global reports it.
fn zone_state(global: &GlobalCp, zone: &str) -> serde_json::Value {
    let (_, body, _) = http_get(&format!("{}/zones/{zone}", global.api_url));
    serde_json::from_str::<serde_json::Value>(&body)
        .map(|z| z["state"].clone())
        .unwrap_or_default()
}

#[test]
fn global_marks_a_zone_offline_soon_after_losing_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let global = GlobalCp::start(dir.path(), None).expect("global-cp");
    let zone = ZoneCp::start_federated("zone-1", &dir.path().join("z1"), &global).expect("zone");
    let state = || zone_state(&global, "zone-1");
    wait_until("zone online", Duration::from_secs(10), || state() == "Online").expect("online");
    // A frozen zone sends nothing and closes nothing: only keepalives can tell.
    zone.freeze().expect("SIGSTOP");
    let started = std::time::Instant::now();
    wait_until("zone offline", Duration::from_secs(10), || state() == "Offline")
        .expect("offline within 10 s");
    eprintln!(
        "zone marked offline {:.1}s after it froze",
        started.elapsed().as_secs_f64()
    );
    zone.thaw().expect("SIGCONT");
    wait_until("zone back online", Duration::from_secs(20), || {
        state() == "Online"
    })
    .expect("online again");
}

#[test]
fn sigterm_ends_zone_and_global_cleanly_with_the_sync_stream_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut global = GlobalCp::start(dir.path(), None).expect("global-cp");
    let mut zone = ZoneCp::start_federated("zone-1", &dir.path().join("z1"), &global).expect("zone");
    wait_until("zone online", Duration::from_secs(10), || {
        zone_state(&global, "zone-1") == "Online"
    })
    .expect("online");
    // Each process drains and exits 0, well inside its 5 s grace: an open stream (the zone's
    // sync stream, held on both sides) does not hold either of them up.
    for (name, (took, status)) in [
        ("zone-cp", zone.terminate().expect("zone-cp exits")),
        ("global-cp", global.terminate().expect("global-cp exits")),
    ] {
        eprintln!("{name} stopped {took:?} after SIGTERM: {status}");
        assert!(status.success(), "{name} exits 0 on SIGTERM: {status}");
        assert!(took < Duration::from_secs(3), "{name} took {took:?} to stop");
    }
}
