use clap::Parser;
use meridian_dp::Cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Keys, tokens and the stores are written owner-only from their first byte.
    meridian_telemetry::owner_only_files();
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meridian-dp: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
