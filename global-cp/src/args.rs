//! Command-line arguments. Every flag can also come from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use meridian_telemetry::LogArgs;

#[derive(Debug, Parser)]
#[command(name = "global-cp", version, about = "Meridian's global control plane")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the REST API (runs pending migrations first).
    Run(RunArgs),
    /// Apply pending migrations to the store and exit.
    Migrate(StoreArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address of the REST API.
    #[arg(long, env = "MERIDIAN_API_ADDR", default_value = "127.0.0.1:5681")]
    pub api_addr: SocketAddr,
    /// Address of the sync service that zone control planes connect to.
    #[arg(long, env = "MERIDIAN_SYNC_ADDR", default_value = "127.0.0.1:5685")]
    pub sync_addr: SocketAddr,
    /// PEM certificate (chain) for TLS on the sync port; zones then dial grpcs://.
    #[arg(long, env = "MERIDIAN_SYNC_TLS_CERT", requires = "sync_tls_key")]
    pub sync_tls_cert: Option<PathBuf>,
    /// PEM private key of --sync-tls-cert.
    #[arg(long, env = "MERIDIAN_SYNC_TLS_KEY", requires = "sync_tls_cert")]
    pub sync_tls_key: Option<PathBuf>,
    /// Let requests from the host itself change resources without a token (as Kuma does);
    /// `--trust-localhost false` requires a token from everyone.
    #[arg(long, env = "MERIDIAN_TRUST_LOCALHOST", default_value_t = true, action = clap::ArgAction::Set)]
    pub trust_localhost: bool,
    /// How long a deletion is remembered for zones that are away: one away for longer
    /// catches up by a full snapshot instead of the changes it missed (at least 1s).
    #[arg(long, env = "MERIDIAN_TOMBSTONE_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub tombstone_retention: Duration,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Directory of the embedded SQLite store (used when --store is not given).
    #[arg(long, env = "MERIDIAN_DATA_DIR", default_value = "./.meridian/global")]
    pub data_dir: PathBuf,
    /// A Postgres URL (postgres://user:password@host:port/db); without it the embedded
    /// SQLite store in --data-dir is used.
    #[arg(long, env = "MERIDIAN_STORE")]
    pub store: Option<String>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
