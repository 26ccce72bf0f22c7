use clap::Parser;
use meridian_zone_cp::args::Cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zone-cp: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
