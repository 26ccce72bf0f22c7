//! Command-line arguments. Every flag can also come from the environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use meridian_telemetry::LogArgs;

#[derive(Debug, Parser)]
#[command(name = "zone-cp", version, about = "Meridian's zone control plane")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the zone's REST API and Envoy's xDS.
    Run(Box<RunArgs>),
    /// Make what a zone needs before its first start.
    #[command(subcommand)]
    Generate(Generate),
}

#[derive(Debug, Subcommand)]
pub enum Generate {
    /// The zone's Raft peer CA (in DIR/ca.crt and ca.key, made once) and a certificate for each
    /// node (DIR/node-N.crt, node-N.key), for --raft-tls-cert, --raft-tls-key, --raft-tls-ca.
    /// Run again with new ids to add nodes under the same CA; keep ca.key off the nodes.
    PeerCerts(PeerCertsArgs),
}

#[derive(Debug, Args)]
pub struct PeerCertsArgs {
    /// The zone's name.
    #[arg(long)]
    pub zone: String,
    /// The node ids to make certificates for: `1,2,3`.
    #[arg(long, value_delimiter = ',', required = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub nodes: Vec<u64>,
    /// Where the CA and the certificates go.
    #[arg(long)]
    pub dir: PathBuf,
    /// How long the node certificates are good for.
    #[arg(long, default_value = "2y", value_parser = parse_validity)]
    pub valid_for: Duration,
}

fn parse_validity(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if d < Duration::from_secs(60) {
        return Err(format!("{text:?}: at least a minute"));
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The zone's name (a DNS-1123 label).
    #[arg(long, env = "MERIDIAN_ZONE")]
    pub zone: String,
    /// Address of the REST API.
    #[arg(long, env = "MERIDIAN_API_ADDR", default_value = "127.0.0.1:5681")]
    pub api_addr: SocketAddr,
    /// Address of the xDS (ADS) server that Envoys connect to.
    #[arg(long, env = "MERIDIAN_XDS_ADDR", default_value = "127.0.0.1:5678")]
    pub xds_addr: SocketAddr,
    /// Where services' virtual IPs come from (transparent proxying's `<service>.mesh`).
    #[arg(long, env = "MERIDIAN_VIP_RANGE", default_value = "240.0.0.0/4")]
    pub vip_range: meridian_model::policies::virtual_ips::Range,
    /// Directory of the zone's state (default ./.meridian/zone-<ZONE>).
    #[arg(long, env = "MERIDIAN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The global control plane's sync address (`grpc://HOST:PORT`); without it the zone runs
    /// standalone and takes policy on its own API.
    #[arg(long, env = "MERIDIAN_GLOBAL_ADDRESS")]
    pub global_address: Option<String>,
    /// The zone token global issued for this zone (`meshctl generate zone-token --zone NAME`);
    /// required with --global-address.
    #[arg(long, env = "MERIDIAN_ZONE_TOKEN_FILE", requires = "global_address")]
    pub zone_token_file: Option<PathBuf>,
    /// PEM CA certificate that signed global's sync certificate (for grpcs:// addresses).
    #[arg(long, env = "MERIDIAN_GLOBAL_CA_FILE", requires = "global_address")]
    pub global_ca_file: Option<PathBuf>,
    /// Let requests from the host itself change resources without a token (as Kuma does);
    /// `--trust-localhost false` requires a token from everyone.
    #[arg(long, env = "MERIDIAN_TRUST_LOCALHOST", default_value_t = true, action = clap::ArgAction::Set)]
    pub trust_localhost: bool,
    /// This node's id in the zone's Raft cluster (a positive number).
    #[arg(long, env = "MERIDIAN_NODE_ID", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub node_id: u64,
    /// Where this node serves Raft to the zone's other nodes (with peer TLS, which it
    /// needs). A zone of one node started without it serves no Raft port.
    #[arg(long, env = "MERIDIAN_RAFT_ADDR")]
    pub raft_addr: Option<SocketAddr>,
    /// This node's Raft peer certificate (PEM; `zone-cp generate peer-certs`): the zone's
    /// nodes speak Raft over mutual TLS and accept only each other.
    #[arg(long, env = "MERIDIAN_RAFT_TLS_CERT", requires_all = ["raft_tls_key", "raft_tls_ca"])]
    pub raft_tls_cert: Option<PathBuf>,
    /// The key of --raft-tls-cert (PEM).
    #[arg(long, env = "MERIDIAN_RAFT_TLS_KEY", requires = "raft_tls_cert")]
    pub raft_tls_key: Option<PathBuf>,
    /// The zone's Raft peer CA certificate (PEM).
    #[arg(long, env = "MERIDIAN_RAFT_TLS_CA", requires = "raft_tls_cert")]
    pub raft_tls_ca: Option<PathBuf>,
    /// The zone's nodes, this one included: `ID=HOST:PORT,ID=HOST:PORT,...` (Raft addresses).
    /// Used when the cluster forms; without it this node is a cluster of one.
    #[arg(long, env = "MERIDIAN_PEERS", value_parser = parse_peers)]
    pub peers: Option<Peers>,
    /// How this node reaches other nodes whose member address does not work from here (NAT,
    /// proxies): `ID=HOST:PORT,...`. Default: each member's own address.
    #[arg(long, env = "MERIDIAN_RAFT_DIAL", value_parser = parse_peers)]
    pub raft_dial: Option<Peers>,
    /// Join an existing cluster: wait to be added (`meshctl zone members add`) rather than
    /// form one from --peers.
    #[arg(long, env = "MERIDIAN_JOIN", conflicts_with = "peers")]
    pub join: bool,
    /// Log entries between snapshots of the state; older entries are then discarded but for
    /// a fifth of this, kept for followers that lag a little.
    #[arg(long, env = "MERIDIAN_RAFT_SNAPSHOT_EVERY", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..))]
    pub raft_snapshot_every: u64,
    /// Raft heartbeat interval (20ms: a new leader about 0.15 to 0.45 s after one dies; see
    /// `cargo xtask bench raft`).
    #[arg(long, env = "MERIDIAN_RAFT_HEARTBEAT", default_value = "20ms", value_parser = parse_heartbeat)]
    pub raft_heartbeat: Duration,
    /// Silence after which a follower calls an election: a random time between this and one
    /// and a half times this (default: two heartbeats), after the old leader's lease (the
    /// longest of those) has run out. Must exceed the heartbeat. Raise it where nodes may
    /// stall longer than that (an overloaded host): each stall past it is an election.
    #[arg(long, env = "MERIDIAN_RAFT_ELECTION_TIMEOUT", value_parser = parse_heartbeat)]
    pub raft_election_timeout: Option<Duration>,
    #[command(flatten)]
    pub log: LogArgs,
}

/// `--peers`: node id to Raft address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peers(pub BTreeMap<u64, String>);

fn parse_peers(text: &str) -> Result<Peers, String> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| format!("{item:?}: the node id must be a positive number"))?;
        let addr = addr.trim();
        if !is_host_port(addr) {
            return Err(format!("{item:?}: {addr:?} is not HOST:PORT"));
        }
        if peers.insert(id, addr.to_owned()).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    if peers.is_empty() {
        return Err("expected ID=HOST:PORT,...".into());
    }
    Ok(Peers(peers))
}

/// Whether `addr` is `HOST:PORT` with a port from 1 to 65535.
pub fn is_host_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

fn parse_heartbeat(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(10) {
        return Err(format!("{text:?}: expected 10ms to 10s"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn peers_parse_and_bad_ones_say_why() {
        let peers = super::parse_peers("1=127.0.0.1:5690, 2=zone-b:5690").expect("valid");
        assert_eq!(peers.0.len(), 2);
        assert_eq!(peers.0[&2], "zone-b:5690");
        for (bad, why) in [
            ("1:127.0.0.1:1", "not ID=HOST:PORT"),
            ("0=127.0.0.1:1", "positive"),
            ("1=127.0.0.1", "not HOST:PORT"),
            ("1=a:1,1=b:1", "twice"),
            ("", "expected"),
        ] {
            let err = super::parse_peers(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
