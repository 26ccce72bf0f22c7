//! A running binary whose critical task dies ends, non-zero, naming the task, instead of
//! limping on without it. The task is made to panic through the supervisor's fault hook
//! (`MERIDIAN_FAULT_PANIC_TASK`, honoured by debug builds only).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meridian_e2e::{bin, http_get};
use meridian_testing::{KillOnDrop, free_port, wait_until};

/// Starts `binary` with `args` and the fault hook aimed at `task`, checks it serves `/healthz`
/// on `api_port` first, then that it exits non-zero soon after the task dies; its stderr.
fn dies_with(binary: &str, args: &[String], api_port: u16, task: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let stderr = dir.path().join("stderr");
    let mut process = KillOnDrop::new(
        Command::new(bin(binary).expect("binary"))
            .args(args)
            .current_dir(dir.path())
            .env("MERIDIAN_FAULT_PANIC_TASK", format!("{task}@3000"))
            .env("RUST_LOG", "warn,openraft=off")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn"),
    );
    let started = Instant::now();
    wait_until("/healthz", Duration::from_secs(20), || {
        http_get(&format!("http://127.0.0.1:{api_port}/healthz")).0 == 200
    })
    .expect("serving before the fault");
    let status = process
        .wait_exit(Duration::from_secs(20))
        .expect("exits once the task dies");
    eprintln!(
        "{binary}: {task} died 3 s after start; the process exited {status} at {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(!status.success(), "{binary} exited 0 after losing {task}");
    std::fs::read_to_string(&stderr).expect("stderr")
}

#[test]
fn zone_cp_exits_non_zero_when_its_reconciler_dies() {
    let api = free_port().expect("port");
    let data = tempfile::tempdir().expect("tempdir");
    let args = [
        "run",
        "--zone",
        "zone-1",
        "--api-addr",
        &format!("127.0.0.1:{api}"),
        "--xds-addr",
        &format!("127.0.0.1:{}", free_port().expect("port")),
        "--data-dir",
        &data.path().display().to_string(),
    ]
    .map(str::to_owned);
    let log = dies_with("zone-cp", &args, api, "reconciler");
    assert!(
        log.contains("reconciler panicked"),
        "the log names the task: {log}"
    );
}

#[test]
fn global_cp_exits_non_zero_when_its_change_feed_dies() {
    let api = free_port().expect("port");
    let args = [
        "run",
        "--api-addr",
        &format!("127.0.0.1:{api}"),
        "--sync-addr",
        &format!("127.0.0.1:{}", free_port().expect("port")),
    ]
    .map(str::to_owned);
    let log = dies_with("global-cp", &args, api, "change feed");
    assert!(
        log.contains("change feed panicked"),
        "the log names the task: {log}"
    );
}
