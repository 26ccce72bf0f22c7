//! Meridian's zone control plane: serves the zone's REST API and Envoy's xDS.
//!
//! ```text
//!   REST (meridian-api) ──> dyn Store (zone data dir) ──commit──> Reconciler
//!                                                                    │ translate
//!   Envoy <──ADS (delta | SotW)── AdsServer <──watch── SnapshotCache <┘
//! ```
//!
//! Every write goes through the zone's Raft ([`raft`]); each node serves reads and xDS from
//! its own replicated copy. Standalone, policies are written on the zone's own API; federated
//! (`--global-address`), the leader syncs them from global.

#![forbid(unsafe_code)]

pub mod api;
pub mod args;
pub mod kubernetes;
pub mod raft;
pub mod reconcile;
pub mod sync;
pub mod xds;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meridian_api::ApiState;
use meridian_api::metrics::Metrics;
use meridian_model::validate::dns1123_label;
use meridian_store::{SqlStore, Store};
use meridian_telemetry::{Supervisor, init_logging, shutdown_signal, supervisor};
use tracing::info;

use args::{Cli, Command, RunArgs};
use xds::cache::SnapshotCache;
use xds::grpc::AdsService;
use xds::metrics::XdsMetrics;
use xds::server::AdsServer;

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run(args) => run(*args).await,
            Command::Generate(args::Generate::PeerCerts(args)) => {
                let args::PeerCertsArgs {
                    zone,
                    nodes,
                    dir,
                    valid_for,
                } = args;
                dns1123_label(&zone).map_err(|e| anyhow::anyhow!("--zone {zone:?} {e}"))?;
                for file in raft::peer_tls::generate(&zone, &nodes, &dir, valid_for)? {
                    println!("wrote {}", file.display());
                }
                Ok(())
            }
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        zone,
        api_addr,
        xds_addr,
        vip_range,
        data_dir,
        global_address,
        zone_token_file,
        global_ca_file,
        trust_localhost,
        node_id,
        raft_addr,
        raft_tls_cert,
        raft_tls_key,
        raft_tls_ca,
        peers,
        join,
        raft_dial,
        raft_snapshot_every,
        raft_heartbeat,
        raft_election_timeout,
        log,
    } = args;
    init_logging(log.log_format);
    if meridian_otlp::exporter::init("zone-cp") {
        info!("exporting spans to OTEL_EXPORTER_OTLP_ENDPOINT");
    }
    dns1123_label(&zone).map_err(|e| anyhow::anyhow!("--zone {zone:?} {e}"))?;
    // A policy kind without its plugin would be stored and never applied.
    xds::policies::check()?;
    let data_dir = data_dir.unwrap_or_else(|| format!("./.meridian/zone-{zone}").into());
    meridian_telemetry::private_dir(&data_dir)
        .with_context(|| format!("making the data dir {} owner-only", data_dir.display()))?;
    info!(zone = %zone, data_dir = %data_dir.display(), "opening the zone store");
    let sql = SqlStore::open_sqlite(&data_dir)
        .await
        .context("opening the zone store")?;
    sql.migrate().await.context("migrating the zone store")?;
    let mut tasks = Supervisor::new();
    let stop_rx = tasks.stop_signal();
    let members = peers.map(|p| p.0).unwrap_or_else(|| {
        // A zone of one: its member address is only read once it grows.
        let addr = raft_addr.map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
        [(node_id, addr)].into()
    });
    let tls = match (raft_tls_cert, raft_tls_key, raft_tls_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(raft::peer_tls::TlsFiles { cert, key, ca }),
        _ => None,
    };
    let node = raft::Node::start(
        raft::NodeConfig {
            zone: zone.clone(),
            node_id,
            raft_addr,
            tls,
            members,
            join,
            dial: raft_dial.map(|d| d.0).unwrap_or_default(),
            heartbeat: raft_heartbeat,
            election_timeout: raft_election_timeout.unwrap_or(raft_heartbeat * 2),
            snapshot_every: raft_snapshot_every,
        },
        sql,
        &data_dir,
    )
    .await?;
    let node = Arc::new(node);
    let store: Arc<dyn Store> = node.store.clone();
    let tokens = meridian_api::tokens::Tokens::new(store.clone());
    let auth = meridian_api::auth::Auth {
        tokens: tokens.clone(),
        trust_localhost,
    };
    let global = match global_address.as_deref() {
        Some(address) => {
            let ca = global_ca_file
                .as_ref()
                .map(|f| {
                    std::fs::read(f).with_context(|| format!("reading --global-ca-file {}", f.display()))
                })
                .transpose()?;
            Some(sync::GlobalEndpoint::parse(address, ca)?)
        }
        None => None,
    };
    if global.is_none() {
        // Standalone: the zone is its own source of policy. Federated: meshes come from global.
        // Through Raft, so once the cluster has a leader.
        let store = store.clone();
        tasks.job("default mesh", async move {
            while let Err(e) = meridian_store::create_default_mesh(&*store).await {
                tracing::debug!(error = %e, "creating the default mesh; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    let mut metrics = Metrics::new();
    let xds_metrics = Arc::new(XdsMetrics::register(metrics.registry_mut()));
    node.register_metrics(metrics.registry_mut());
    // What the process can hold open: most for proxies, an eighth each for REST and Raft.
    let budget = meridian_api::serve::connection_budget();
    let refused = meridian_api::serve::refused_family(metrics.registry_mut());
    let raft_server = node
        .serve(
            auth.clone(),
            (budget / 8).max(16),
            meridian_api::serve::Refused::register(&refused, "raft"),
            stop_rx.clone(),
        )
        .await?;
    let cache = SnapshotCache::default();

    if let Some(url) = global {
        let Some(token_file) = zone_token_file else {
            anyhow::bail!(
                "--global-address needs --zone-token-file (meshctl generate zone-token --zone {zone})"
            );
        };
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("reading --zone-token-file {}", token_file.display()))?
            .trim()
            .to_owned();
        info!(global = %url.url, tls = url.ca.is_some(), zone = %zone, "federated: syncing from global");
        let sync_metrics = sync::SyncMetrics::register(metrics.registry_mut());
        tasks.critical(
            "sync client",
            sync::run(
                url,
                zone.clone(),
                token,
                store.clone(),
                sync_metrics,
                node.leadership(),
                stop_rx.clone(),
            ),
        );
    }

    let (unreachable_tx, unreachable) = tokio::sync::watch::channel(Default::default());
    let mut reconciler = reconcile::Reconciler::new(store.clone(), cache.clone(), xds_metrics.clone())
        .with_zone(&zone, unreachable);
    tasks.critical(
        "ingress prober",
        reconcile::probe_ingresses(reconciler.ingress_targets(), unreachable_tx, stop_rx.clone()),
    );
    // Standalone, the zone makes its mesh CAs; federated, global makes them for every zone.
    if global_address.is_none() {
        let (wanted, asked) = tokio::sync::mpsc::unbounded_channel();
        let (created_tx, created) = tokio::sync::watch::channel(0);
        tasks.critical(
            "mesh CAs",
            reconcile::create_mesh_cas(store.clone(), asked, created_tx, stop_rx.clone()),
        );
        reconciler = reconciler.with_ca_job(wanted, created);
    }
    let (vips_wanted, vips_asked) = tokio::sync::mpsc::unbounded_channel();
    tasks.critical(
        "virtual IPs",
        reconcile::allocate_vips(store.clone(), vip_range, vips_asked, stop_rx.clone()),
    );
    reconciler = reconciler.with_vip_job(vips_wanted, node.leadership());
    tasks.critical("reconciler", reconciler.run(stop_rx.clone()));

    // The signing keys are replicated like any write, so they are made once the zone's Raft
    // has a leader; until then no token can be valid, and the trusted host may still write.
    {
        let (tokens, dir) = (tokens.clone(), data_dir.clone());
        tasks.job("signing keys", async move {
            use meridian_api::tokens::TokenKind;
            for kind in [TokenKind::User, TokenKind::Dataplane, TokenKind::ZoneIngress] {
                while let Err(e) = tokens.ensure_key(kind).await {
                    tracing::debug!(error = %e, kind = %kind, "making the signing key; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            if let Err(e) = meridian_api::token_api::keep_admin_token(tokens, &dir).await {
                tracing::warn!(error = %e, "writing the admin token failed");
            }
        });
    }
    let xds_listener = tokio::net::TcpListener::bind(xds_addr)
        .await
        .with_context(|| format!("binding the xDS server to {xds_addr}"))?;
    info!(addr = %xds_listener.local_addr()?, max_connections = budget * 3 / 4, "xDS serving");
    let ads = AdsService::new(
        AdsServer::new(cache.clone(), xds_metrics, stop_rx.clone()).with_auth(auth.clone(), store.clone()),
        // Envoy's largest request is a reconnecting delta stream listing every resource it has.
        4 << 20,
    );
    let state = ApiState {
        store,
        metrics: Arc::new(metrics),
        role: "zone",
        managed_by: global_address.clone(),
    };
    let mut stop = stop_rx.clone();
    tasks.critical(
        "xDS server",
        tonic::transport::Server::builder()
            // Detects Envoys that vanished without closing their stream.
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            // What a proxy sends is small; a small window keeps what a stranger sends unread
            // (in its own buffers) until its stream is admitted.
            .initial_stream_window_size(Some(64 << 10))
            .initial_connection_window_size(Some(256 << 10))
            // Proxies register over HTTP/1.1 on the same port (as kuma-dp does on 5678).
            .accept_http1(true)
            .add_routes(
                tonic::service::Routes::from(meridian_api::proxy_app(state.clone(), auth.clone()))
                    .add_service(ads),
            )
            .serve_with_incoming_shutdown(
                meridian_api::serve::grpc_incoming(
                    xds_listener,
                    "xds",
                    budget * 3 / 4,
                    stop_rx.clone(),
                    meridian_api::serve::Refused::register(&refused, "xds"),
                ),
                async move {
                    let _ = stop.changed().await;
                },
            ),
    );

    let router = meridian_api::app(
        state,
        auth,
        &[
            meridian_api::tokens::TokenKind::User,
            meridian_api::tokens::TokenKind::Dataplane,
            meridian_api::tokens::TokenKind::ZoneIngress,
        ],
        api::routes(cache).merge(api::raft_routes(node.clone())),
    );
    let api_listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("binding the REST API to {api_addr}"))?;
    tasks.critical(
        "REST API",
        meridian_api::serve::rest(
            api_listener,
            router,
            (budget / 8).max(16),
            stop_rx.clone(),
            meridian_api::serve::Refused::register(&refused, "rest"),
        ),
    );
    tasks.critical("Raft server", supervisor::joined(raft_server));

    // Any critical task ending early ends the process (non-zero), rather than limping on.
    let outcome = tasks.run(shutdown_signal(), Duration::from_secs(5)).await;
    let _ = node.raft.shutdown().await;
    info!("stopped");
    Ok(outcome?)
}
