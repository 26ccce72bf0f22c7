//! Command-line arguments. Every flag can also come from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

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
    Run(RunArgs),
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
    #[command(flatten)]
    pub log: LogArgs,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
