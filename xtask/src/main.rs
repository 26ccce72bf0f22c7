//! `cargo xtask`: the README's commands.
//!
//! ```text
//!   cargo xtask demo          run the global control plane on the embedded store
//!   cargo xtask test          fmt check, clippy -D warnings, every test
//!   cargo xtask bench api     REST write/read throughput and latency, SQLite and Postgres
//! ```

#![forbid(unsafe_code)]

mod bench;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["demo", rest @ ..] => demo(rest),
        ["test"] => test(),
        ["bench", "api", rest @ ..] => bench::api(rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  demo [global-cp flags]   run the global control plane (embedded store)\n  test                     format check, clippy, and every test\n  bench api [--writes N] [--concurrency C]\n                           REST throughput and latency on SQLite and Postgres"
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

fn test() -> Result<()> {
    check_prerequisites()?;
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

fn demo(flags: &[&str]) -> Result<()> {
    run(
        "cargo build --bins",
        cargo().args(["build", "--workspace", "--bins"]),
    )?;
    let bin = target_dir().join("debug/global-cp");
    eprintln!(
        "==> starting the global control plane on http://127.0.0.1:5681 (data in ./.meridian/global)\n\
         \n    in another terminal, try:\n\
         \n      cargo meshctl apply -f ../shared/examples/seed-traffic-permission.yaml\
         \n      cargo meshctl apply -f ../shared/examples/seed-meshtrace.yaml\
         \n      cargo meshctl get meshtraces -o yaml\
         \n      curl -s http://127.0.0.1:5681/meshes/default/meshtraces\n\
         \n    Ctrl-C stops it; everything applied is kept for the next start.\n"
    );
    let status = Command::new(&bin)
        .arg("run")
        .args(flags)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("starting {}", bin.display()))?;
    // Ctrl-C reaches both us and global-cp; a clean stop is success.
    if !status.success() && status.code() != Some(130) && status.code().is_some() {
        bail!("global-cp exited with {status}");
    }
    Ok(())
}
