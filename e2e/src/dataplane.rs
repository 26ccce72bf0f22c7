//! The data-plane side of the harness: demo services, their meridian-dp sidecars (with real
//! Envoy), and a service with its sidecar as one pair.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use meridian_testing::{KillOnDrop, free_port, wait_until};

use super::{ZoneCp, bin, envoy, http_get};

/// A demo service (`demo-app`) on a free port.
pub struct DemoApp {
    process: KillOnDrop,
    pub port: u16,
    args: Vec<String>,
}

impl DemoApp {
    pub fn start(args: &[&str]) -> Result<Self> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let port = free_port()?;
        let process = Self::spawn(port, &args)?;
        Ok(Self { process, port, args })
    }

    fn spawn(port: u16, args: &[String]) -> Result<KillOnDrop> {
        let process = KillOnDrop::new(
            Command::new(bin("demo-app")?)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(args)
                .stdout(Stdio::null())
                .spawn()
                .context("starting demo-app")?,
        );
        wait_until("demo-app to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })?;
        Ok(process)
    }

    /// Kills the app with SIGKILL (its sidecar stays).
    pub fn kill(&mut self) -> Result<()> {
        self.process.kill_now()
    }

    /// Starts the app again on the same port, with the same arguments.
    pub fn restart(&mut self) -> Result<()> {
        self.process.kill_now()?;
        self.process = Self::spawn(self.port, &self.args)?;
        Ok(())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }
}

/// A `meridian-dp run` with its Envoy.
pub struct Sidecar {
    process: KillOnDrop,
    pub admin_port: u16,
    work_dir: tempfile::TempDir,
}

impl Sidecar {
    /// Starts meridian-dp with the Dataplane given by `dataplane_args` (flags or
    /// `--dataplane-file`), against `cp`.
    pub fn start(cp: &ZoneCp, dataplane_args: &[&str]) -> Result<Self> {
        Self::start_on(&[cp], dataplane_args)
    }

    /// Against every node of a zone (`--cp-address` lists them all).
    pub fn start_on(cps: &[&ZoneCp], dataplane_args: &[&str]) -> Result<Self> {
        let xds: Vec<&str> = cps.iter().map(|c| c.xds_url.as_str()).collect();
        let admin_port = free_port()?;
        let work_dir = tempfile::tempdir()?;
        let process = KillOnDrop::new(
            Command::new(bin("meridian-dp")?)
                .arg("run")
                .arg("--work-dir")
                .arg(work_dir.path())
                .args(["--cp-address", &xds.join(",")])
                .arg("--envoy-binary")
                .arg(envoy()?)
                .args(["--admin-port", &admin_port.to_string(), "--drain-time", "1"])
                .args(dataplane_args)
                .env("RUST_LOG", "warn,openraft=off")
                .stdout(Stdio::null())
                .spawn()
                .context("starting meridian-dp")?,
        );
        let sidecar = Self {
            process,
            admin_port,
            work_dir,
        };
        let ready = format!("http://127.0.0.1:{admin_port}/ready");
        wait_until("envoy to be ready", Duration::from_secs(30), || {
            http_get(&ready).0 == 200
        })?;
        Ok(sidecar)
    }

    /// One counter from Envoy's admin `/stats`.
    pub fn stat(&self, name: &str) -> u64 {
        let (_, body, _) = http_get(&format!(
            "http://127.0.0.1:{}/stats?filter=^{name}$",
            self.admin_port
        ));
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The pid of this sidecar's Envoy (found by its bootstrap, which lives in our work dir).
    pub fn envoy_pid(&self) -> Option<u32> {
        // The bootstrap's path, not the work dir: meridian-dp's own arguments name the dir.
        let bootstrap = format!("{}/bootstrap-", self.work_dir.path().display());
        let out = Command::new("pgrep").args(["-f", &bootstrap]).output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().parse().ok())
    }

    pub fn terminate(&self) -> Result<()> {
        self.process.signal("TERM")
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Result<()> {
        let process = &mut self.process;
        wait_until("meridian-dp to exit", timeout, || !process.is_running())
    }
}

/// The seed's demo in one zone: reg-server answers after 250 ms, demo calls it 4 times, each
/// beside meridian-dp and Envoy.
pub struct DemoPair {
    pub reg: DemoApp,
    pub demo: DemoApp,
    pub reg_sidecar: Sidecar,
    pub demo_sidecar: Sidecar,
    /// demo's inbound, through its sidecar.
    pub demo_url: String,
    pub reg_inbound: u16,
    pub outbound: u16,
}

impl DemoPair {
    pub fn start(cp: &ZoneCp) -> Result<Self> {
        Self::start_on(&[cp])
    }

    /// With sidecars that know every node of the zone.
    pub fn start_on(cps: &[&ZoneCp]) -> Result<Self> {
        let cp = cps[0];
        let (outbound, reg_inbound, demo_inbound) = (free_port()?, free_port()?, free_port()?);
        let reg = DemoApp::start(&["--name", "reg-server", "--zone", &cp.zone, "--delay", "250ms"])?;
        let demo = DemoApp::start(&[
            "--name",
            "demo",
            "--zone",
            &cp.zone,
            "--upstream",
            &format!("http://127.0.0.1:{outbound}/"),
            "--calls",
            "4",
        ])?;
        let reg_sidecar = Sidecar::start_on(
            cps,
            &[
                "--name",
                "reg-server-1",
                "--inbound",
                &format!("{reg_inbound}:{}:reg-server:http", reg.port),
            ],
        )?;
        let demo_sidecar = Sidecar::start_on(
            cps,
            &[
                "--name",
                "demo-1",
                "--inbound",
                &format!("{demo_inbound}:{}:demo:http", demo.port),
                "--outbound",
                &format!("{outbound}:reg-server"),
            ],
        )?;
        let demo_url = format!("http://127.0.0.1:{demo_inbound}/");
        wait_until(
            "demo to answer through its sidecar",
            Duration::from_secs(30),
            || http_get(&demo_url).0 == 200,
        )?;
        Ok(Self {
            reg,
            demo,
            reg_sidecar,
            demo_sidecar,
            demo_url,
            reg_inbound,
            outbound,
        })
    }

    /// Envoy's `/config_dump` of demo's sidecar.
    pub fn demo_config_dump(&self) -> String {
        http_get(&format!(
            "http://127.0.0.1:{}/config_dump",
            self.demo_sidecar.admin_port
        ))
        .1
    }
}
