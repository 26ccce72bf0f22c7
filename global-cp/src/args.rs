//! Command-line arguments. Every flag can also come from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

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

    /// The arguments of a deploy unit's `ExecStart`, as the binary sees them.
    fn exec_start(unit: &str) -> Vec<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/systemd")
            .join(unit);
        let text = std::fs::read_to_string(&path).expect("unit file");
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("ExecStart");
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn deploy_units_parse() {
        use clap::Parser;
        let cli = super::Cli::try_parse_from(exec_start("meridian-global-cp.service")).expect("flags parse");
        let super::Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert!(!run.trust_localhost, "deployed control planes trust no host");
        assert!(run.sync_tls_cert.is_some(), "zones sync over TLS");
    }

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
