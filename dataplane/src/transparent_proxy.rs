//! `meridian-dp install transparent-proxy`: iptables rules that send a workload's traffic
//! through its sidecar without the workload knowing, as `kumactl install transparent-proxy`.
//!
//! ```text
//!   app ──connect(any:port)──> OUTPUT ──> MERIDIAN_OUTBOUND ──REDIRECT──> Envoy :15001
//!   peer ──> PREROUTING ──> MERIDIAN_INBOUND ──REDIRECT──> Envoy :15006 ──> app
//!   app ──DNS (udp/tcp 53)──> MERIDIAN_DNS ──REDIRECT──> meridian-dp :15053
//!   the sidecar's own uid (5678) is never redirected, so Envoy's connections do not loop
//! ```
//!
//! The rules live in the nat table, in chains of our own. Installing and removing both read
//! the table (`iptables-save`), drop what is ours, add what is wanted and write the table back
//! in one `iptables-restore`, so both are idempotent and atomic, and removing leaves the table
//! exactly as it was before installing.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use clap::Args;

/// Our chains' names all start with this; nothing else in the table is touched.
const PREFIX: &str = "MERIDIAN_";
const INBOUND: &str = "MERIDIAN_INBOUND";
const INBOUND_REDIRECT: &str = "MERIDIAN_INBOUND_REDIRECT";
const OUTBOUND: &str = "MERIDIAN_OUTBOUND";
const OUTBOUND_REDIRECT: &str = "MERIDIAN_OUTBOUND_REDIRECT";
const DNS: &str = "MERIDIAN_DNS";

/// Which address families get rules (Kuma's `--ip-family-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IpFamilyMode {
    /// IPv4, and IPv6 where the host has it.
    Dualstack,
    Ipv4,
}

#[derive(Clone, Debug, Args)]
pub struct TransparentProxyArgs {
    /// The port Envoy takes redirected inbound connections on.
    #[arg(long, env = "MERIDIAN_REDIRECT_INBOUND_PORT", default_value_t = 15006)]
    pub redirect_inbound_port: u16,
    /// The port Envoy takes redirected outbound connections on.
    #[arg(long, env = "MERIDIAN_REDIRECT_OUTBOUND_PORT", default_value_t = 15001)]
    pub redirect_outbound_port: u16,
    /// The port meridian-dp answers DNS on.
    #[arg(long, env = "MERIDIAN_REDIRECT_DNS_PORT", default_value_t = 15053)]
    pub redirect_dns_port: u16,
    /// Send the workload's DNS (UDP and TCP port 53) to meridian-dp, which answers
    /// `<service>.mesh` and forwards the rest to the host's resolvers.
    #[arg(long, env = "MERIDIAN_REDIRECT_DNS", default_value_t = true, action = clap::ArgAction::Set)]
    pub redirect_dns: bool,
    /// The user the sidecar (meridian-dp and Envoy) runs as, by name or uid: its own
    /// connections are never redirected.
    #[arg(
        long,
        alias = "kuma-dp-user",
        env = "MERIDIAN_DP_USER",
        default_value = "5678"
    )]
    pub dp_user: String,
    /// Inbound ports left alone (e.g. 22), comma-separated.
    #[arg(long, env = "MERIDIAN_EXCLUDE_INBOUND_PORTS", value_delimiter = ',')]
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound ports left alone, comma-separated.
    #[arg(long, env = "MERIDIAN_EXCLUDE_OUTBOUND_PORTS", value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations left alone: addresses or CIDRs, IPv4 or IPv6, comma-separated.
    #[arg(long, env = "MERIDIAN_EXCLUDE_OUTBOUND_IPS", value_delimiter = ',', value_parser = parse_cidr)]
    pub exclude_outbound_ips: Vec<Cidr>,
    #[arg(long, env = "MERIDIAN_IP_FAMILY_MODE", value_enum, default_value_t = IpFamilyMode::Dualstack)]
    pub ip_family_mode: IpFamilyMode,
    /// Print the rules instead of installing them.
    #[arg(long)]
    pub dry_run: bool,
}

/// An address with a prefix length, as iptables takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

fn parse_cidr(text: &str) -> anyhow::Result<Cidr> {
    let (address, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let address: IpAddr = address
        .parse()
        .with_context(|| format!("{text:?} must be an IP address or CIDR (10.0.0.0/8, fd00::/8)"))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .with_context(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
    };
    Ok(Cidr { address, prefix })
}

/// An address family's tools and loopback addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn loopback(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.1/32",
            Self::V6 => "::1/128",
        }
    }

    /// The source Envoy uses for inbound passthrough connections to the app (Kuma's).
    fn inbound_passthrough_source(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.6/32",
            Self::V6 => "::6/128",
        }
    }

    /// `iptables-save` and `iptables-restore` for this family: the nft backend where the
    /// host has it (Debian's default), else whatever `iptables` is.
    fn tools(self) -> (String, String) {
        let base = match self {
            Self::V4 => "iptables",
            Self::V6 => "ip6tables",
        };
        let nft = format!("{base}-nft-restore");
        if on_path(&nft) {
            (format!("{base}-nft-save"), nft)
        } else {
            (format!("{base}-save"), format!("{base}-restore"))
        }
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The user to exclude, as a uid: a number, or a name looked up in /etc/passwd.
pub fn resolve_uid(user: &str) -> anyhow::Result<u32> {
    if let Ok(uid) = user.parse() {
        return Ok(uid);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    passwd
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(name, _)| *name == user)
        .and_then(|(_, uid)| uid.parse().ok())
        .with_context(|| format!("--dp-user {user:?}: no such user (give a uid, or create the user)"))
}

/// The rules for one family, in `iptables-restore` form, without the table header: the chain
/// declarations, then the rules, each a line.
pub fn rules(args: &TransparentProxyArgs, uid: u32, family: Family) -> (Vec<String>, Vec<String>) {
    let mut chains = vec![INBOUND, INBOUND_REDIRECT, OUTBOUND, OUTBOUND_REDIRECT];
    if args.redirect_dns {
        chains.push(DNS);
    }
    let chains = chains.into_iter().map(|c| format!(":{c} - [0:0]")).collect();
    let mut r = Vec::new();
    let mut add = |line: String| r.push(line);
    add(format!("-A PREROUTING -p tcp -j {INBOUND}"));
    add(format!("-A OUTPUT -p tcp -j {OUTBOUND}"));
    if args.redirect_dns {
        add(format!("-A OUTPUT -p udp --dport 53 -j {DNS}"));
    }
    for port in &args.exclude_inbound_ports {
        add(format!("-A {INBOUND} -p tcp --dport {port} -j RETURN"));
    }
    add(format!("-A {INBOUND} -p tcp -j {INBOUND_REDIRECT}"));
    add(format!(
        "-A {INBOUND_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        args.redirect_inbound_port
    ));
    let lo = family.loopback();
    // Envoy's own connections to the app (inbound passthrough) stay as they are.
    add(format!(
        "-A {OUTBOUND} -s {} -o lo -j RETURN",
        family.inbound_passthrough_source()
    ));
    // Envoy calling its own workload by a non-loopback address (a service calling itself
    // through the mesh) goes through the inbound side, as from any other caller.
    add(format!(
        "-A {OUTBOUND} ! -d {lo} -o lo -m owner --uid-owner {uid} -j {INBOUND_REDIRECT}"
    ));
    // Everything else the sidecar sends goes where it was sent: no loop.
    add(format!("-A {OUTBOUND} -m owner --uid-owner {uid} -j RETURN"));
    if args.redirect_dns {
        add(format!(
            "-A {OUTBOUND} -p tcp --dport 53 -j REDIRECT --to-ports {}",
            args.redirect_dns_port
        ));
    }
    // The workload talking to itself over loopback is not mesh traffic.
    add(format!("-A {OUTBOUND} -o lo -j RETURN"));
    add(format!("-A {OUTBOUND} -d {lo} -j RETURN"));
    for port in &args.exclude_outbound_ports {
        add(format!("-A {OUTBOUND} -p tcp --dport {port} -j RETURN"));
    }
    for cidr in &args.exclude_outbound_ips {
        if cidr.address.is_ipv4() == (family == Family::V4) {
            add(format!("-A {OUTBOUND} -d {cidr} -j RETURN"));
        }
    }
    add(format!("-A {OUTBOUND} -j {OUTBOUND_REDIRECT}"));
    add(format!(
        "-A {OUTBOUND_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        args.redirect_outbound_port
    ));
    if args.redirect_dns {
        add(format!("-A {DNS} -m owner --uid-owner {uid} -j RETURN"));
        add(format!(
            "-A {DNS} -p udp -j REDIRECT --to-ports {}",
            args.redirect_dns_port
        ));
    }
    (chains, r)
}

/// Whether an `iptables-save` line is ours.
fn is_ours(line: &str) -> bool {
    line.contains(PREFIX)
}

/// The nat table as `saved`, without our chains and rules, plus `add` (chain declarations
/// and rules): what `iptables-restore` is given.
pub fn rewrite_nat(saved: &str, add: Option<&(Vec<String>, Vec<String>)>) -> String {
    let mut lines: Vec<&str> = saved
        .lines()
        .skip_while(|l| l.trim() != "*nat")
        .take_while(|l| l.trim() != "COMMIT")
        .filter(|l| !l.starts_with('#') && !is_ours(l))
        .collect();
    if lines.is_empty() {
        lines = vec![
            "*nat",
            ":PREROUTING ACCEPT [0:0]",
            ":INPUT ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]",
        ];
    }
    let (declarations, rules): (Vec<&str>, Vec<&str>) = lines.into_iter().partition(|l| !l.starts_with("-A"));
    let mut out = String::new();
    for l in declarations {
        let _ = writeln!(out, "{l}");
    }
    if let Some((chains, _)) = add {
        for c in chains {
            let _ = writeln!(out, "{c}");
        }
    }
    for l in rules {
        let _ = writeln!(out, "{l}");
    }
    if let Some((_, ours)) = add {
        for l in ours {
            let _ = writeln!(out, "{l}");
        }
    }
    out.push_str("COMMIT\n");
    out
}

fn families(mode: IpFamilyMode) -> Vec<Family> {
    let v6 = mode == IpFamilyMode::Dualstack
        && std::path::Path::new("/proc/net/if_inet6").exists()
        && on_path(&Family::V6.tools().1);
    if v6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

fn save_nat(family: Family) -> anyhow::Result<String> {
    let (save, _) = family.tools();
    let out = Command::new(&save)
        .args(["-t", "nat"])
        .output()
        .with_context(|| format!("running {save} (install iptables: apt-get install iptables)"))?;
    if !out.status.success() {
        bail!(
            "{save} -t nat failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn restore_nat(family: Family, table: &str) -> anyhow::Result<()> {
    let (_, restore) = family.tools();
    let mut child = Command::new(&restore)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {restore}"))?;
    child
        .stdin
        .take()
        .context("iptables-restore's stdin")?
        .write_all(table.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{restore} refused the rules: {}\n{table}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Installs the rules (replacing any of ours already there), or prints them with `--dry-run`.
pub fn install(args: &TransparentProxyArgs) -> anyhow::Result<()> {
    let uid = resolve_uid(&args.dp_user)?;
    for family in families(args.ip_family_mode) {
        let wanted = rules(args, uid, family);
        if args.dry_run {
            let (save, _) = family.tools();
            println!("# {save}");
            print!("{}", rewrite_nat("", Some(&wanted)));
            continue;
        }
        let table = rewrite_nat(&save_nat(family)?, Some(&wanted));
        restore_nat(family, &table)?;
        tracing::info!(?family, uid, "transparent proxy installed");
    }
    Ok(())
}

/// Removes every rule and chain of ours; the rest of the table is written back as it was.
pub fn uninstall(mode: IpFamilyMode) -> anyhow::Result<()> {
    for family in families(mode) {
        let saved = save_nat(family)?;
        if !saved.lines().any(is_ours) {
            continue;
        }
        restore_nat(family, &rewrite_nat(&saved, None))?;
        tracing::info!(?family, "transparent proxy uninstalled");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TransparentProxyArgs,
    }

    fn args(flags: &[&str]) -> TransparentProxyArgs {
        Cli::try_parse_from(std::iter::once("x").chain(flags.iter().copied()))
            .expect("flags")
            .args
    }

    #[test]
    fn the_sidecar_is_excluded_before_anything_redirects_outbound() {
        let (chains, rules) = rules(&args(&[]), 5678, Family::V4);
        assert!(chains.contains(&":MERIDIAN_DNS - [0:0]".to_owned()));
        let pos = |needle: &str| {
            rules
                .iter()
                .position(|r| r == needle)
                .unwrap_or_else(|| panic!("{needle}"))
        };
        let own = pos("-A MERIDIAN_OUTBOUND -m owner --uid-owner 5678 -j RETURN");
        let redirect = pos("-A MERIDIAN_OUTBOUND -j MERIDIAN_OUTBOUND_REDIRECT");
        let dns_tcp = pos("-A MERIDIAN_OUTBOUND -p tcp --dport 53 -j REDIRECT --to-ports 15053");
        assert!(own < dns_tcp && dns_tcp < redirect);
        pos("-A MERIDIAN_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15006");
        pos("-A MERIDIAN_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15001");
        pos("-A MERIDIAN_DNS -m owner --uid-owner 5678 -j RETURN");
        pos("-A MERIDIAN_DNS -p udp -j REDIRECT --to-ports 15053");
    }

    #[test]
    fn exclusions_go_to_their_family() {
        let a = args(&[
            "--exclude-inbound-ports",
            "22,9901",
            "--exclude-outbound-ports",
            "5432",
            "--exclude-outbound-ips",
            "10.0.0.0/8,fd00::1",
            "--redirect-dns=false",
        ]);
        let (chains, v4) = rules(&a, 1000, Family::V4);
        assert!(!chains.iter().any(|c| c.contains("DNS")));
        assert!(v4.contains(&"-A MERIDIAN_INBOUND -p tcp --dport 22 -j RETURN".to_owned()));
        assert!(v4.contains(&"-A MERIDIAN_INBOUND -p tcp --dport 9901 -j RETURN".to_owned()));
        assert!(v4.contains(&"-A MERIDIAN_OUTBOUND -p tcp --dport 5432 -j RETURN".to_owned()));
        assert!(v4.contains(&"-A MERIDIAN_OUTBOUND -d 10.0.0.0/8 -j RETURN".to_owned()));
        assert!(!v4.iter().any(|r| r.contains("fd00")));
        let (_, v6) = rules(&a, 1000, Family::V6);
        assert!(v6.contains(&"-A MERIDIAN_OUTBOUND -d fd00::1/128 -j RETURN".to_owned()));
        assert!(v6.contains(&"-A MERIDIAN_OUTBOUND -s ::6/128 -o lo -j RETURN".to_owned()));
        assert!(!v6.iter().any(|r| r.contains("10.0.0.0")));
    }

    #[test]
    fn bad_flags_say_what_was_expected() {
        let err = parse_cidr("10.0.0.0/33").expect_err("prefix");
        assert!(err.to_string().contains("0 to 32"), "{err}");
        let err = parse_cidr("ten").expect_err("address");
        assert!(err.to_string().contains("IP address or CIDR"), "{err}");
        assert!(resolve_uid("no-such-user-here").is_err());
        assert_eq!(resolve_uid("root").expect("root"), 0);
    }

    const SAVED: &str = "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n-A OUTPUT -d 10.9.9.9/32 -j RETURN\n-A DOCKER -j RETURN\nCOMMIT\n# Completed\n";

    #[test]
    fn rewriting_keeps_what_is_not_ours_and_is_idempotent() {
        let wanted = rules(&args(&[]), 5678, Family::V4);
        let once = rewrite_nat(SAVED, Some(&wanted));
        assert!(once.contains(":DOCKER - [0:0]\n") && once.contains("-A DOCKER -j RETURN\n"));
        assert_eq!(
            rewrite_nat(&once, Some(&wanted)),
            once,
            "installing twice changes nothing"
        );
        let removed = rewrite_nat(&once, None);
        assert_eq!(removed, rewrite_nat(SAVED, None));
        assert!(!removed.contains("MERIDIAN"));
        // Declarations come before rules, as iptables-restore needs.
        let first_rule = once.find("\n-A").expect("rules");
        assert!(once[first_rule..].lines().skip(1).all(|l| !l.starts_with(':')));
    }
}
