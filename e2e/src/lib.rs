//! A harness that runs Meridian's real binaries, as a user would, and kills them when a test
//! ends. The binaries come from the same target directory as the test (`cargo nextest run
//! --workspace` or `cargo build --bins` builds them).

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use meridian_testing::{KillOnDrop, free_port, wait_until};

/// The path of one of the workspace's binaries.
pub fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test binary> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("locating the target directory")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the binaries first (cargo build --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// The team's example YAML, beside the repository.
pub fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/examples")
        .join(name)
}

/// A running `global-cp run`.
pub struct GlobalCp {
    process: KillOnDrop,
    pub api_url: String,
    port: u16,
    workdir: PathBuf,
    store: Option<String>,
}

impl GlobalCp {
    /// Starts `global-cp run` with no flags in `workdir` (so its data lands in
    /// `workdir/.meridian/global`), its address given by environment on a free port.
    pub fn start(workdir: &Path, store: Option<&str>) -> Result<Self> {
        let port = free_port()?;
        Self::start_on(workdir, store, port)
    }

    fn start_on(workdir: &Path, store: Option<&str>, port: u16) -> Result<Self> {
        let mut cmd = Command::new(bin("global-cp")?);
        cmd.arg("run")
            .current_dir(workdir)
            .env("MERIDIAN_API_ADDR", format!("127.0.0.1:{port}"))
            .env_remove("MERIDIAN_DATA_DIR")
            .env_remove("MERIDIAN_STORE")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(url) = store {
            cmd.env("MERIDIAN_STORE", url);
        }
        let mut cp = Self {
            process: KillOnDrop::new(cmd.spawn().context("starting global-cp")?),
            api_url: format!("http://127.0.0.1:{port}"),
            port,
            workdir: workdir.to_owned(),
            store: store.map(str::to_owned),
        };
        cp.wait_healthy()?;
        Ok(cp)
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let url = format!("{}/healthz", self.api_url);
        let mut exited = false;
        wait_until("global-cp /healthz", Duration::from_secs(30), || {
            if !self.process.is_running() {
                exited = true;
                return true;
            }
            Command::new("curl")
                .args(["-sf", "-o", "/dev/null", "--max-time", "1", &url])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })?;
        if exited {
            bail!("global-cp exited during start");
        }
        Ok(())
    }

    /// `kill -9`, as a crash would.
    pub fn kill_9(&mut self) -> Result<()> {
        self.process.kill_now()
    }

    /// Starts again on the same port, workdir and store.
    pub fn restart(self) -> Result<Self> {
        let Self {
            mut process,
            port,
            workdir,
            store,
            ..
        } = self;
        process.kill_now()?;
        drop(process);
        Self::start_on(&workdir, store.as_deref(), port)
    }

    pub fn meshctl(&self, args: &[&str]) -> Result<Output> {
        meshctl(&self.api_url, args, None)
    }
}

/// Runs meshctl against `api_url`, optionally feeding `stdin`.
pub fn meshctl(api_url: &str, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let mut child = Command::new(bin("meshctl")?)
        .args(args)
        .env("MESHCTL_API_URL", api_url)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(text) = stdin {
        child.stdin.take().context("stdin")?.write_all(text.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

/// Output as text, for assertions and messages.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a command succeeded and returns its stdout.
pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "command failed ({}):\n{}{}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}
