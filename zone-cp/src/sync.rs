//! The zone's side of the global sync: one stream to global-cp, fed into the zone's store by
//! this one writer.
//!
//! ```text
//!   Hello{applied} ──> global        Batch ──> validate every resource (model) ──> store
//!   Inventory{full} ──>                        ──> sync position ──> Ack
//!   each local commit of a Dataplane or ZoneIngress ──> Inventory{changes} ──> global
//! ```
//!
//! Resumes from the applied revision after any disconnect, with backoff and jitter, and sends
//! its whole inventory again. While global is away the zone keeps serving what it has.
//! Applying is idempotent (an unchanged resource is not rewritten), so a batch cut short by a
//! crash is simply applied again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use meridian_model::{Kind, ResourceKey, SpanContext, Submission};
use meridian_otlp::exporter::{INTERNAL, SERVER, Span};
use meridian_proto::sync::{
    Ack, BadChange, Batch, Change as WireChange, Hello, Inventory, ZoneMessage, global_message, zone_message,
};
use meridian_proto::sync_service::global_sync_client::GlobalSyncClient;
use meridian_store::{Change, Store, StoreError, SyncedOp, SyncedOutcome};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

/// Whether a zone holds this resource because global sent it: global's kinds, and what other
/// zones reported (named `ZONE.NAME`). The rest is the zone's own inventory.
pub fn from_global(key: &ResourceKey) -> bool {
    (!key.kind.zone_owned() && !key.kind.zone_local()) || key.synced_zone().is_some()
}

/// Whether the zone reports this resource to global: its own Dataplanes and ZoneIngresses.
fn reported(key: &ResourceKey) -> bool {
    key.kind.zone_owned() && key.synced_zone().is_none()
}

/// Changes per inventory message after the first.
const INVENTORY_BATCH: u32 = 1000;

/// Why a sync session with global ended, or could not start.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("--global-address {address:?} must be grpc://HOST:PORT or grpcs://HOST:PORT")]
    Address { address: String },
    #[error("--global-address {address:?} uses TLS: give --global-ca-file")]
    NoCa { address: String },
    #[error("--global-ca-file is for grpcs:// addresses, not {address:?}")]
    CaWithoutTls { address: String },
    #[error("connecting to {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("the zone token is not valid header text")]
    TokenText,
    #[error("opening the sync stream: {0}")]
    Open(tonic::Status),
    #[error("the sync stream broke: {0}")]
    Stream(tonic::Status),
    #[error("the sync stream closed")]
    Closed,
    #[error("the zone store closed")]
    StoreClosed,
    #[error("the zone store: {0}")]
    Store(#[from] StoreError),
    #[error("batch up to revision {revision} refused: {why}")]
    Refused { revision: i64, why: ApplyError },
}

/// Why the zone refuses a batch from global (and says so in its Ack).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Undecodable(#[from] BadChange),
    #[error("change {revision}: {key} is this zone's own, not global's to send")]
    NotGlobals { revision: i64, key: ResourceKey },
    #[error("secret {name:?}: only mesh CAs ({prefix}MESH/BACKEND) come from global", prefix = meridian_api::ca::SECRET_PREFIX)]
    NotACa { name: String },
    #[error("secret {name:?}: {source}")]
    BadCa {
        name: String,
        source: meridian_api::ca::CaError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where global's sync service is, and how to trust it.
#[derive(Clone, Debug, PartialEq)]
pub struct GlobalEndpoint {
    /// What tonic dials (`http://` or `https://`).
    pub url: String,
    /// For `grpcs://`: the PEM CA that signed global's certificate.
    pub ca: Option<Vec<u8>>,
}

impl GlobalEndpoint {
    /// Parses `grpc://HOST:PORT` or `grpcs://HOST:PORT` (which needs `ca`).
    pub fn parse(address: &str, ca: Option<Vec<u8>>) -> Result<Self, SyncError> {
        let address_owned = || address.to_owned();
        let bad = || SyncError::Address {
            address: address_owned(),
        };
        let (scheme, rest) = if let Some(rest) = address.strip_prefix("grpcs://") {
            ("https", rest)
        } else if let Some(rest) = address.strip_prefix("grpc://") {
            ("http", rest)
        } else {
            return Err(bad());
        };
        if rest.is_empty() || !rest.contains(':') {
            return Err(bad());
        }
        match (scheme, &ca) {
            ("https", None) => Err(SyncError::NoCa {
                address: address_owned(),
            }),
            ("http", Some(_)) => Err(SyncError::CaWithoutTls {
                address: address_owned(),
            }),
            _ => Ok(Self {
                url: format!("{scheme}://{rest}"),
                ca,
            }),
        }
    }

    async fn connect(&self) -> Result<tonic::transport::Channel, SyncError> {
        let failed = |source| SyncError::Connect {
            url: self.url.clone(),
            source,
        };
        let mut endpoint = tonic::transport::Endpoint::from_shared(self.url.clone()).map_err(failed)?;
        if let Some(ca) = &self.ca {
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca));
            endpoint = endpoint.tls_config(tls).map_err(failed)?;
        }
        endpoint.connect().await.map_err(failed)
    }
}

/// One change of a batch, decoded: the resource to write (`None` to delete), and the
/// trace its write continues.
struct Decoded {
    key: ResourceKey,
    resource: Option<Submission>,
    trace: Option<SpanContext>,
}

/// The spans of applying a traced change here: the apply, and under it the Raft commit (the
/// apply is one replicated write). The commit's context is kept with the write, so the xDS
/// push continues the trace from it on whichever node pushes.
struct Traced {
    // Fields drop in order: the commit ends before the apply that holds it.
    commit: Span,
    _apply: Span,
}

fn traced(zone: &str, c: &WireChange) -> Option<Traced> {
    if !meridian_otlp::exporter::enabled() {
        return None;
    }
    let parent = SpanContext::parse(&c.traceparent)?;
    let mut apply = Span::start(format!("zone {zone}: apply from global"), Some(parent), SERVER);
    apply.set("zone", zone);
    apply.set("revision", c.revision);
    let mut commit = Span::start(
        format!("zone {zone}: raft commit"),
        Some(apply.context()),
        INTERNAL,
    );
    commit.set("zone", zone);
    Some(Traced {
        commit,
        _apply: apply,
    })
}

/// Decodes every change first: a batch with one bad resource is refused whole.
fn decode(zone: &str, batch: &Batch, spans: &mut Vec<Traced>) -> Result<Vec<Decoded>, ApplyError> {
    let mut out = Vec::with_capacity(batch.changes.len());
    for c in &batch.changes {
        let (key, resource) = c.decode()?;
        if !from_global(&key) || key.synced_zone() == Some(zone) {
            return Err(ApplyError::NotGlobals {
                revision: c.revision,
                key,
            });
        }
        let mut trace = None;
        if let Some(t) = traced(zone, c) {
            trace = t.commit.is_live().then(|| t.commit.context());
            spans.push(t);
        }
        // Global decides versions; the zone applies what it is sent.
        let resource = resource.map(|resource| Submission {
            resource,
            expected_version: None,
            trace,
        });
        out.push(Decoded { key, resource, trace });
    }
    Ok(out)
}

/// Applies a batch to the zone's store, with the new position, in one transaction.
pub async fn apply(store: &dyn Store, zone: &str, batch: &Batch) -> Result<SyncedOutcome, ApplyError> {
    // Traced changes' spans end when the batch is applied (or refused).
    let mut spans = Vec::new();
    let changes = decode(zone, batch, &mut spans)?;
    for secret in &batch.secrets {
        if !secret.name.starts_with(meridian_api::ca::SECRET_PREFIX) {
            return Err(ApplyError::NotACa {
                name: secret.name.clone(),
            });
        }
        meridian_api::ca::MeshCa::from_secret(&secret.value).map_err(|source| ApplyError::BadCa {
            name: secret.name.clone(),
            source,
        })?;
    }
    // The CAs first: the meshes that need them may be in this batch.
    for secret in &batch.secrets {
        store.put_secret(&secret.name, &secret.value).await?;
    }
    let mut ops = Vec::with_capacity(changes.len());
    if batch.snapshot {
        // Whatever global no longer has goes; the zone's own inventory stays. Listing outside
        // the transaction is safe: this sync is the only writer of what comes from global.
        let keep: BTreeSet<&ResourceKey> = changes.iter().map(|c| &c.key).collect();
        for &kind in Kind::ALL.iter().rev() {
            let all = meridian_store::keys(store, kind).await?;
            ops.extend(
                all.into_iter()
                    .filter(|k| from_global(k) && !keep.contains(k))
                    .map(SyncedOp::delete),
            );
        }
    }
    for Decoded { key, resource, trace } in changes {
        ops.push(match resource {
            Some(s) => SyncedOp::Put(Box::new(s)),
            None => SyncedOp::Delete { key, trace },
        });
    }
    // A batch lists each resource at its latest revision, so a Mesh changed after its
    // policies comes after them: meshes are written first (and deleted last), in one
    // transaction either way.
    ops.sort_by_key(|op| match op {
        SyncedOp::Put(s) if s.resource.kind() == Kind::Mesh => 0,
        SyncedOp::Delete { key, .. } if key.kind == Kind::Mesh => 2,
        _ => 1,
    });
    Ok(store.apply_synced(ops, Some(batch.to_revision)).await?)
}

/// The zone's whole inventory and the store revision it was read at.
async fn full_inventory(store: &dyn Store) -> Result<(i64, Inventory), StoreError> {
    let (revision, items) = store.snapshot().await?;
    let changes = items
        .iter()
        .filter(|s| reported(&s.resource.key()))
        .map(|s| WireChange::upsert(s.revision, &s.resource))
        .collect();
    Ok((revision, Inventory { full: true, changes }))
}

/// The inventory changes committed after `after` (a full inventory if the zone's tombstones
/// no longer reach back that far), and the revision they go up to.
async fn inventory_since(store: &dyn Store, after: i64) -> Result<(i64, Option<Inventory>), StoreError> {
    let mut position = after;
    let mut changes = Vec::new();
    loop {
        let page = match store.changes_since(position, INVENTORY_BATCH).await {
            Ok(page) => page,
            Err(StoreError::TooOld { .. }) => {
                let (revision, full) = full_inventory(store).await?;
                return Ok((revision, Some(full)));
            }
            Err(e) => return Err(e),
        };
        let Some(last) = page.last().map(Change::revision) else {
            break;
        };
        position = last;
        // A short page was everything there was: no second read to find nothing.
        let caught_up = page.len() < INVENTORY_BATCH as usize;
        changes.extend(page.iter().filter_map(|c| match c {
            Change::Upsert(s) if reported(&s.resource.key()) => {
                Some(WireChange::upsert(s.revision, &s.resource))
            }
            Change::Delete { key, revision, .. } if reported(key) => Some(WireChange::delete(*revision, key)),
            _ => None,
        }));
        if caught_up {
            break;
        }
    }
    let inventory = (!changes.is_empty()).then_some(Inventory { full: false, changes });
    Ok((position, inventory))
}

/// The sync's health, in the zone's `/metrics`.
#[derive(Clone, Default)]
pub struct SyncMetrics {
    /// 1 while a stream to global is open.
    pub connected: prometheus_client::metrics::gauge::Gauge,
    /// Attempts that failed or streams that broke.
    pub failures: prometheus_client::metrics::counter::Counter,
}

impl SyncMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self::default();
        registry.register(
            "sync_connected",
            "1 while the sync stream to global is open",
            m.connected.clone(),
        );
        registry.register(
            "sync_failures",
            "Sync attempts that failed or broke",
            m.failures.clone(),
        );
        m
    }
}

/// Runs the sync until `shutdown`, while this node leads the zone's Raft (`leading`),
/// reconnecting with backoff and jitter.
pub async fn run(
    global: GlobalEndpoint,
    zone: String,
    token: String,
    store: Arc<dyn Store>,
    metrics: SyncMetrics,
    mut leading: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        // Only the leader holds the stream; it resumes from the replicated applied revision.
        tokio::select! {
            r = leading.wait_for(|l| *l) => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
        let outcome = tokio::select! {
            r = session(&global, &zone, &token, &*store, &metrics) => r,
            _ = leading.wait_for(|l| !*l) => {
                info!("no longer the zone's Raft leader: closing the sync stream");
                metrics.connected.set(0);
                continue;
            }
            _ = shutdown.changed() => return,
        };
        match outcome {
            Ok(()) => {
                info!("global closed the sync stream; reconnecting");
                delay = Duration::from_millis(200);
            }
            Err(e) => {
                metrics.failures.inc();
                warn!(error = %e, retry_in = ?delay, "sync with global failed");
            }
        }
        // Jitter spreads the reconnects of many zones after global restarts.
        let jitter = Duration::from_millis(u64::from(std::process::id() % 7) * delay.as_millis() as u64 / 10);
        tokio::select! {
            _ = tokio::time::sleep(delay + jitter) => {}
            _ = shutdown.changed() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn session(
    global: &GlobalEndpoint,
    zone: &str,
    token: &str,
    store: &dyn Store,
    metrics: &SyncMetrics,
) -> Result<(), SyncError> {
    let mut client = GlobalSyncClient::new(global.connect().await?).max_decoding_message_size(64 << 20);
    let applied_revision = store.sync_position().await?;
    // Watch before reading the inventory, so no local commit falls between the two.
    let mut commits = store.watch();
    commits.borrow_and_update();
    let (reported, inventory) = full_inventory(store).await?;
    let (tx, rx) = mpsc::channel(4);
    let hello = Hello {
        zone: zone.to_owned(),
        applied_revision,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    for kind in [
        zone_message::Kind::Hello(hello),
        zone_message::Kind::Inventory(inventory),
    ] {
        tx.send(ZoneMessage { kind: Some(kind) })
            .await
            .map_err(|_| SyncError::Closed)?;
    }
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| SyncError::TokenText)?;
    request.metadata_mut().insert("authorization", bearer);
    let mut inbound = client
        .stream(request)
        .await
        .map_err(SyncError::Open)?
        .into_inner();
    info!(applied_revision, "sync stream open");
    metrics.connected.set(1);
    let result = exchange(&mut inbound, &tx, store, zone, &mut commits, reported).await;
    metrics.connected.set(0);
    result
}

/// Applies global's batches and reports the zone's inventory changes, until the stream ends.
async fn exchange(
    inbound: &mut tonic::Streaming<meridian_proto::sync::GlobalMessage>,
    tx: &mpsc::Sender<ZoneMessage>,
    store: &dyn Store,
    zone: &str,
    commits: &mut watch::Receiver<i64>,
    mut reported: i64,
) -> Result<(), SyncError> {
    let send = |kind| async move {
        tx.send(ZoneMessage { kind: Some(kind) })
            .await
            .map_err(|_| SyncError::Closed)
    };
    loop {
        tokio::select! {
            message = inbound.message() => {
                let Some(message) = message.map_err(SyncError::Stream)? else {
                    return Ok(());
                };
                let Some(global_message::Kind::Batch(batch)) = message.kind else {
                    continue;
                };
                let result = apply(store, zone, &batch).await;
                match result {
                    Ok(a) => {
                        info!(
                            revision = batch.to_revision,
                            snapshot = batch.snapshot,
                            written = a.written,
                            unchanged = a.unchanged,
                            deleted = a.deleted,
                            "applied changes from global"
                        );
                        send(zone_message::Kind::Ack(Ack {
                            revision: batch.to_revision,
                            error: String::new(),
                        }))
                        .await?;
                    }
                    Err(error) => {
                        warn!(revision = batch.to_revision, error = %error, "refusing a batch from global");
                        let _ = send(zone_message::Kind::Ack(Ack {
                            revision: batch.to_revision,
                            error: error.to_string(),
                        }))
                        .await;
                        return Err(SyncError::Refused {
                            revision: batch.to_revision,
                            why: error,
                        });
                    }
                }
            }
            changed = commits.changed() => {
                if changed.is_err() {
                    return Err(SyncError::StoreClosed);
                }
                commits.borrow_and_update();
                let (position, inventory) = inventory_since(store, reported).await?;
                reported = position;
                if let Some(inventory) = inventory {
                    info!(changes = inventory.changes.len(), full = inventory.full, "inventory reported");
                    send(zone_message::Kind::Inventory(inventory)).await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
