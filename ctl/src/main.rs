use clap::Parser;
use meridian_ctl::Cli;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Cli::parse().run().await
}
