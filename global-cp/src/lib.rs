//! Meridian's global control plane: the one place where policy is written.
//!
//! ```text
//!   meshctl / HTTP ──REST──> api ──> dyn Store ──> SQLite (default) | Postgres
//! ```
//!
//! `main.rs` only parses arguments; [`run`] wires the store, the API and shutdown.

#![forbid(unsafe_code)]

pub mod args;

use std::sync::Arc;

use anyhow::Context;
use tracing::info;

use args::{Cli, Command, RunArgs, StoreArgs};
use meridian_api as api;
use meridian_store::{SqlStore, Store};
use meridian_telemetry::{LogFormat, init_logging, shutdown_signal};

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run(args) => run(args).await,
            Command::Migrate(args) => {
                init_logging(LogFormat::Text);
                open_store(&args).await.map(drop)
            }
        }
    }
}

/// Opens the store the flags name and applies pending migrations.
pub async fn open_store(args: &StoreArgs) -> anyhow::Result<SqlStore> {
    let StoreArgs { data_dir, store } = args;
    let opened = match store {
        Some(url) => {
            info!(url = %meridian_store::redact(url), "opening postgres store");
            SqlStore::connect(url).await
        }
        None => {
            info!(data_dir = %data_dir.display(), "opening embedded sqlite store");
            SqlStore::open_sqlite(data_dir).await
        }
    }
    .context("opening the store")?;
    opened.migrate().await.context("migrating the store")?;
    Ok(opened)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs { api_addr, store, log } = args;
    init_logging(log.log_format);
    let store: Arc<dyn Store> = Arc::new(open_store(&store).await?);
    meridian_store::create_default_mesh(&*store).await?;
    info!(mesh = meridian_model::DEFAULT_MESH, "default mesh ensured");
    let state = api::ApiState {
        store,
        metrics: Arc::new(api::metrics::Metrics::new()),
        role: "global",
    };
    let listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("binding the REST API to {api_addr}"))?;
    info!(addr = %listener.local_addr()?, "REST API serving");
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving the REST API")?;
    info!("stopped");
    Ok(())
}
