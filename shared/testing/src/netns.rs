//! Network namespaces and veth pairs for tests that need their own hosts (transparent
//! proxying's iptables rules, addresses other than loopback). Root only; each is removed when
//! dropped, with everything in it.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (apt-get install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A network namespace of this test's own, with loopback up.
#[derive(Debug)]
pub struct NetNs {
    pub name: String,
}

/// Removes the namespaces of test processes that are gone (killed before their guards ran,
/// or a demo stopped with Ctrl-C), with whatever still runs in them.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next().filter(|n| n.starts_with("mtest-")) else {
            continue;
        };
        let mut parts = name.rsplit('-');
        let pid = parts.nth(1).and_then(|p| p.parse::<u32>().ok());
        if pid.is_none_or(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            continue;
        }
        if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = ip(&["netns", "del", name]);
    }
}

impl NetNs {
    pub fn new(role: &str) -> Result<Self> {
        remove_stale();
        let name = format!(
            "mtest-{role}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `program` run inside the namespace (`ip netns exec` execs it: the child is the program).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `program args` inside the namespace to completion; its stdout, or an error with
    /// its stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self.command(program).args(args).output()?;
        if !out.status.success() {
            bail!(
                "{program} {} in {}: {}",
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Processes still inside keep their sockets, not the name; ours are killed first by
        // their own guards, declared after the namespace.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Joins two namespaces with a veth pair: `a` gets `a_ip/24`, `b` gets `b_ip/24`.
pub fn link(a: &NetNs, a_ip: &str, b: &NetNs, b_ip: &str) -> Result<()> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let (va, vb) = (format!("mva{n}"), format!("mvb{n}"));
    ip(&[
        "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns", &b.name,
    ])?;
    ip(&["-n", &a.name, "addr", "add", &format!("{a_ip}/24"), "dev", &va])?;
    ip(&["-n", &b.name, "addr", "add", &format!("{b_ip}/24"), "dev", &vb])?;
    ip(&["-n", &a.name, "link", "set", &va, "up"])?;
    ip(&["-n", &b.name, "link", "set", &vb, "up"])?;
    Ok(())
}

/// Why tests needing namespaces cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if !crate::running_as_root() {
        return Some("not root: network namespaces and iptables need root".into());
    }
    for (program, package) in [("ip", "iproute2"), ("iptables-save", "iptables")] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(format!(
                "{program} not found (apt-get install {package}; cargo xtask setup does it)"
            ));
        }
    }
    None
}
