//! Fixtures for tests and benchmarks: free loopback ports, child processes that die with
//! their owner, and throwaway Postgres clusters.
//!
//! Postgres refuses to run as root, and CI runs as root: the cluster then runs as `nobody`
//! (through `setpriv`, which execs, so the child we hold *is* the postmaster).

#![forbid(unsafe_code)]

pub mod linearizable;
pub mod netns;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A TCP port on 127.0.0.1 that is free, and that no other caller of this function gets
/// until this process exits.
///
/// A port the kernel hands out for `:0` is from the ephemeral range, which is also where every
/// outgoing connection takes its source port: between our asking and a child binding it, a
/// client anywhere on the machine (or another test process asking the same way) could take
/// it, and the child fails with "address in use". So ports come from below the ephemeral
/// range, and each is claimed with a lock file that this process holds until it exits (the
/// kernel drops the lock if it dies), so parallel test processes never share one.
pub fn free_port() -> Result<u16> {
    let (low, high) = claimable_ports();
    if low >= high {
        // No room below the ephemeral range: take the kernel's pick.
        return Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    }
    let dir = std::env::temp_dir().join("meridian-test-ports");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let span = u64::from(high - low);
    for _ in 0..1000 {
        let port = low + u16::try_from(random() % span).expect("below high");
        let lock = std::fs::File::create(dir.join(format!("{port}.lock")))
            .with_context(|| format!("creating a lock file in {}", dir.display()))?;
        if lock.try_lock().is_err() {
            continue; // another test process (or this one) holds it
        }
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue; // something outside the tests listens there
        }
        CLAIMED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(lock);
        return Ok(port);
    }
    bail!("no free port in {low}..{high} after 1000 tries")
}

/// Lock files of the ports this process has claimed, held until it exits.
static CLAIMED: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());

/// Ports `[low, high)` below the kernel's ephemeral range.
fn claimable_ports() -> (u16, u16) {
    const LOW: u16 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    (LOW, ephemeral_low.max(LOW))
}

/// A random number, from the standard library's per-instance random hash keys.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// A child process that is stopped (SIGTERM, then SIGKILL after a grace period) when dropped,
/// whether the test passed or panicked.
#[derive(Debug)]
pub struct KillOnDrop {
    child: Child,
    grace: Duration,
}

impl KillOnDrop {
    pub fn new(child: Child) -> Self {
        Self {
            child,
            grace: Duration::from_secs(5),
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`KILL`, `TERM`, `INT`, `STOP`, `CONT`).
    pub fn signal(&self, name: &str) -> Result<()> {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -{name} {} failed", self.child.id());
        }
        Ok(())
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill_now(&mut self) -> Result<()> {
        self.child.kill().ok();
        self.child.wait()?;
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("process {} still running after {timeout:?}", self.child.id());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit: how long it took, and the status.
    pub fn terminate(&mut self, timeout: Duration) -> Result<(Duration, std::process::ExitStatus)> {
        let started = Instant::now();
        self.signal("TERM")?;
        let status = self.wait_exit(timeout)?;
        Ok((started.elapsed(), status))
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stop(&mut self) {
        if !self.is_running() {
            return;
        }
        let _ = self.signal("TERM");
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

pub fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `nobody`'s uid and gid, read from `id`.
fn nobody() -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id").args([flag, "nobody"]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

/// Builds a command that runs as `nobody` when we are root, and as ourselves otherwise.
pub fn unprivileged(program: &str, as_nobody: bool) -> Command {
    if as_nobody {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Options for a throwaway cluster.
#[derive(Clone, Copy, Debug, Default)]
pub struct PostgresOptions {
    /// Keep fsync on (for benchmarks that should pay for durability as production does).
    pub durable: bool,
}

/// A Postgres cluster in a temporary directory on a free loopback port. Dropping it stops the
/// server and removes the directory.
#[derive(Debug)]
pub struct Postgres {
    // Field order matters: the server stops before its directory is removed.
    server: KillOnDrop,
    port: u16,
    options: PostgresOptions,
    as_nobody: bool,
    dir: tempfile::TempDir,
}

impl Postgres {
    pub fn start() -> Result<Self> {
        Self::start_with(PostgresOptions::default())
    }

    pub fn start_with(options: PostgresOptions) -> Result<Self> {
        let as_nobody = running_as_root();
        let dir = tempfile::Builder::new().prefix("meridian-pg-").tempdir()?;
        let data = dir.path().join("data");
        if as_nobody {
            let (uid, gid) = nobody()?;
            chown_tree(dir.path(), uid, gid)?;
        }
        let out = unprivileged("initdb", as_nobody)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "meridian",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--no-locale",
            ])
            .stdout(Stdio::null())
            .output()
            .context("running initdb (is PostgreSQL installed and on PATH?)")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port()?;
        let server = Self::serve(dir.path(), port, options, as_nobody)?;
        Ok(Self {
            server,
            port,
            options,
            as_nobody,
            dir,
        })
    }

    /// Starts the postmaster on the cluster in `dir` and waits until it accepts connections.
    fn serve(dir: &Path, port: u16, options: PostgresOptions, as_nobody: bool) -> Result<KillOnDrop> {
        let log_path = dir.join("postgres.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        if as_nobody {
            let (uid, gid) = nobody()?;
            std::os::unix::fs::chown(&log_path, Some(uid), Some(gid))?;
        }
        let mut cmd = unprivileged("postgres", as_nobody);
        cmd.arg("-D")
            .arg(dir.join("data"))
            .args([
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
            ])
            .arg("-k")
            .arg(dir);
        if !options.durable {
            cmd.args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting postgres")?;
        let mut server = KillOnDrop::new(child);
        wait_until("postgres to accept connections", Duration::from_secs(30), || {
            Command::new("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
        .with_context(|| {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            format!("postgres did not start; its log:\n{log}")
        })?;
        if !server.is_running() {
            bail!("postgres exited during start");
        }
        Ok(server)
    }

    /// Stops the server (fast shutdown: clients are disconnected) and starts it again on the
    /// same port and data, as an operator's restart or a failover would.
    pub fn restart(&mut self) -> Result<()> {
        self.server.signal("INT")?;
        let server = &mut self.server;
        wait_until("postgres to stop", Duration::from_secs(30), || {
            !server.is_running()
        })?;
        self.server = Self::serve(self.dir.path(), self.port, self.options, self.as_nobody)?;
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://meridian@127.0.0.1:{}/postgres", self.port)
    }
}

/// A TCP proxy on a free loopback port that a test can cut and restore, standing in for a
/// network partition between two components.
pub struct ChaosProxy {
    pub port: u16,
    state: std::sync::Arc<ChaosState>,
}

#[derive(Default)]
struct ChaosState {
    cut: std::sync::atomic::AtomicBool,
    stopped: std::sync::atomic::AtomicBool,
    connections: std::sync::Mutex<Vec<std::net::TcpStream>>,
}

impl ChaosState {
    fn close_all(&self) {
        let mut conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        for c in conns.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl ChaosProxy {
    /// Forwards connections on a new port to `target` (`127.0.0.1:PORT`).
    pub fn start(target: std::net::SocketAddr) -> Result<Self> {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let state = std::sync::Arc::new(ChaosState::default());
        let s = state.clone();
        std::thread::spawn(move || {
            for incoming in listener.incoming() {
                if s.stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = incoming else { continue };
                if s.cut.load(Ordering::Relaxed) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(upstream) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                };
                let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
                    continue;
                };
                {
                    let mut conns = s.connections.lock().unwrap_or_else(|e| e.into_inner());
                    if let (Ok(a), Ok(b)) = (client.try_clone(), upstream.try_clone()) {
                        conns.push(a);
                        conns.push(b);
                    }
                }
                pipe(client, upstream);
                pipe(u2, c2);
            }
        });
        Ok(Self { port, state })
    }

    /// Drops every connection and refuses new ones until [`ChaosProxy::restore`].
    pub fn cut(&self) {
        self.state.cut.store(true, std::sync::atomic::Ordering::Relaxed);
        self.state.close_all();
    }

    pub fn restore(&self) {
        self.state.cut.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.state
            .stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.state.close_all();
        // Wake the accept loop so it sees `stopped`.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let (low, high) = claimable_ports();
        let ports: Vec<u16> = (0..50).map(|_| free_port().expect("port")).collect();
        let distinct: std::collections::BTreeSet<&u16> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for port in ports {
            assert!(low >= high || (low..high).contains(&port), "{port}");
            TcpListener::bind(("127.0.0.1", port)).expect("bindable");
        }
    }
}
