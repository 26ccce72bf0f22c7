//! Meridian's global control plane: the one place where policy is written.
//!
//! ```text
//!   meshctl / HTTP ──REST──> api ──> dyn Store ──> SQLite (default) | Postgres
//! ```
//!
//! `main.rs` only parses arguments; [`run`] wires the store, the API and shutdown.

#![forbid(unsafe_code)]

pub mod args;
mod compaction;
mod feed;
pub mod sync;
pub mod zones;

use std::sync::Arc;

use anyhow::Context;
use tracing::info;

use args::{Cli, Command, RunArgs, StoreArgs};
use meridian_api as api;
use meridian_store::{SqlStore, Store};
use meridian_telemetry::{LogFormat, Supervisor, init_logging, shutdown_signal};

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
    meridian_telemetry::private_dir(data_dir)
        .with_context(|| format!("making the data dir {} owner-only", data_dir.display()))?;
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
    let RunArgs {
        api_addr,
        sync_addr,
        sync_tls_cert,
        sync_tls_key,
        trust_localhost,
        tombstone_retention,
        store,
        log,
    } = args;
    if tombstone_retention < std::time::Duration::from_secs(1) {
        anyhow::bail!("--tombstone-retention: expected at least 1s, got {tombstone_retention:?}");
    }
    init_logging(log.log_format);
    if meridian_otlp::exporter::init("global-cp") {
        info!("exporting spans to OTEL_EXPORTER_OTLP_ENDPOINT");
    }
    let data_dir = store.data_dir.clone();
    let sql = Arc::new(open_store(&store).await?);
    let store: Arc<dyn Store> = sql.clone();
    meridian_store::create_default_mesh(&*store).await?;
    info!(mesh = meridian_model::DEFAULT_MESH, "default mesh ensured");
    let mut metrics = api::metrics::Metrics::new();
    let sync_refused = prometheus_client::metrics::counter::Counter::<u64>::default();
    metrics.registry_mut().register(
        "sync_refused",
        "Zone sync streams refused (bad or missing zone token)",
        sync_refused.clone(),
    );
    let compacted = prometheus_client::metrics::counter::Counter::<u64>::default();
    metrics.registry_mut().register(
        "tombstones_compacted",
        "Tombstones removed after the retention (zones away longer catch up by snapshot)",
        compacted.clone(),
    );
    let feed_reads = feed::FeedReads::default();
    metrics.registry_mut().register(
        "sync_feed_reads",
        "Reads of the store for changes by this replica's change feed, shared by every zone stream",
        feed_reads.feed.clone(),
    );
    metrics.registry_mut().register(
        "sync_stream_reads",
        "Reads of the store for changes by zone streams behind the change feed's window",
        feed_reads.behind.clone(),
    );
    let refused = api::serve::refused_family(metrics.registry_mut());
    let state = api::ApiState {
        store,
        metrics: Arc::new(metrics),
        role: "global",
        managed_by: None,
    };
    // Names this replica among those sharing the store, in the zones' recorded state.
    let zones = zones::Zones::new(api_addr.to_string());
    let mut tasks = Supervisor::new();
    let insights = zones.clone().run(state.store.clone(), tasks.stop_signal());
    tasks.critical("zone insights", insights);
    let feed = feed::ChangeFeed::new(feed::WINDOW, feed_reads);
    tasks.critical(
        "change feed",
        feed.clone().run(state.store.clone(), tasks.stop_signal()),
    );
    let compaction = compaction::run(sql.clone(), tombstone_retention, compacted, tasks.stop_signal());
    tasks.critical("tombstone compaction", compaction);
    // Half of what the process can hold open for each port.
    let cap = api::serve::connection_budget() / 2;
    let stop = tasks.stop_signal();
    let sync_listener = tokio::net::TcpListener::bind(sync_addr)
        .await
        .with_context(|| format!("binding the sync service to {sync_addr}"))?;
    info!(addr = %sync_listener.local_addr()?, max_connections = cap, "sync service serving");
    let tokens = api::tokens::Tokens::new(state.store.clone());
    for kind in [api::tokens::TokenKind::User, api::tokens::TokenKind::Zone] {
        tokens
            .ensure_key(kind)
            .await
            .with_context(|| format!("loading the {kind} token signing key"))?;
    }
    let sync_service =
        meridian_proto::sync_service::global_sync_server::GlobalSyncServer::new(sync::SyncServer::new(
            state.store.clone(),
            feed,
            zones.clone(),
            tokens.clone(),
            sync_refused,
        ))
        // A zone's whole inventory arrives in one message.
        .max_decoding_message_size(64 << 20);
    let mut sync_server = tonic::transport::Server::builder();
    if let (Some(cert), Some(key)) = (&sync_tls_cert, &sync_tls_key) {
        let read =
            |p: &std::path::PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
        sync_server = sync_server
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(identity)
                    .timeout(api::serve::FIRST_BYTES_TIMEOUT),
            )
            .context("the sync TLS certificate and key")?;
        info!(cert = %cert.display(), "sync service uses TLS");
    }
    let sync_serving = sync_server
        // Detects zones that vanished without closing their stream.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(3)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)))
        .add_service(sync_service)
        // No graceful drain: a zone's stream lasts as long as the zone, and it resumes
        // from its applied revision on another replica or after the restart.
        .serve_with_incoming(api::serve::grpc_incoming(
            sync_listener,
            "sync",
            cap,
            stop.clone(),
            api::serve::Refused::register(&refused, "sync"),
        ));
    let mut stop_sync = stop.clone();
    tasks.critical("sync service", async move {
        tokio::select! {
            served = sync_serving => served,
            _ = stop_sync.wait_for(|s| *s) => Ok(()),
        }
    });
    let listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("binding the REST API to {api_addr}"))?;
    api::token_api::keep_admin_token(tokens.clone(), &data_dir)
        .await
        .with_context(|| format!("writing the admin token into {}", data_dir.display()))?;
    let auth = api::auth::Auth {
        tokens,
        trust_localhost,
    };
    let router = api::app(
        state,
        auth,
        &[api::tokens::TokenKind::User, api::tokens::TokenKind::Zone],
        zones::routes(sql, zones),
    );
    tasks.critical(
        "REST API",
        api::serve::rest(
            listener,
            router,
            cap,
            stop.clone(),
            api::serve::Refused::register(&refused, "rest"),
        ),
    );
    // Every task is critical: if one stops, the process stops rather than limping on.
    let outcome = tasks
        .run(shutdown_signal(), std::time::Duration::from_secs(5))
        .await;
    info!("stopped");
    Ok(outcome?)
}
