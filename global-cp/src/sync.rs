//! A zone behind the tombstone horizon gets one snapshot batch.
//!
//! Upstream, a zone's `Inventory` (its Dataplanes and ZoneIngresses) is pinned to it: stored
//! as `ZONE.NAME` with the label `kuma.io/zone: ZONE`, whatever the zone claims, so no zone can
//! write another zone's resources or global's. Every other zone's stream relays it; the
//! origin's never does.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;

use meridian_api::ca::{MeshCa, secret_name};
use meridian_model::Resource;
use meridian_model::validate::dns1123_label;
use meridian_model::{Kind, ResourceKey, Spec, Stored, Submission, ZONE_LABEL};
use meridian_proto::sync::{
    Ack, BadChange, Batch, Change as WireChange, GlobalMessage, Hello, Inventory, Secret, ZoneMessage,
    global_message, zone_message,
};
use meridian_proto::sync_service::global_sync_server::GlobalSync;
use meridian_store::{Change, Store, StoreError, SyncedOp, SyncedOutcome};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info, info_span, warn};

use prometheus_client::metrics::counter::Counter;

use crate::feed::{ChangeFeed, FeedChange};
use crate::zones::{Zones, now_ms};
use meridian_api::tokens::{Subject, TokenError, TokenKind, Tokens};

/// Changes per batch.
const BATCH: u32 = 500;
/// How long a new stream has to send its Hello.
const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct SyncServer {
    store: Arc<dyn Store>,
    feed: ChangeFeed,
    zones: Zones,
    tokens: Tokens,
    refused: Counter,
}

impl SyncServer {
    pub fn new(
        store: Arc<dyn Store>,
        feed: ChangeFeed,
        zones: Zones,
        tokens: Tokens,
        refused: Counter,
    ) -> Self {
        Self {
            store,
            feed,
            zones,
            tokens,
            refused,
        }
    }
}

/// Whether `zone`'s stream carries this resource: global's own kinds, and what other zones
/// reported; never the zone's own inventory, sent back to it.
fn sent_to(zone: &str, key: &ResourceKey) -> bool {
    !key.kind.zone_owned() || key.synced_zone().is_some_and(|origin| origin != zone)
}

fn batch(b: Batch) -> Result<GlobalMessage, Status> {
    Ok(GlobalMessage {
        kind: Some(global_message::Kind::Batch(b)),
    })
}

type Outbox = mpsc::Sender<Result<GlobalMessage, Status>>;

/// The CAs of these meshes' builtin mTLS backends, created here on first use, so that every
/// zone gets the same roots.
async fn mesh_cas<'a>(
    store: &dyn Store,
    meshes: impl Iterator<Item = &'a Resource>,
) -> Result<Vec<Secret>, StoreError> {
    let mut out = Vec::new();
    for mesh in meshes {
        let Spec::Mesh(spec) = &mesh.spec else { continue };
        let Some(backend) = spec.enabled_ca() else {
            continue;
        };
        let ca = MeshCa::ensure(store, &mesh.name, &backend.name)
            .await
            .map_err(|e| StoreError::Internal(format!("mesh {:?}: CA: {e}", mesh.name)))?;
        out.push(Secret {
            name: secret_name(&mesh.name, &backend.name),
            value: ca.to_secret(),
        });
    }
    Ok(out)
}

/// Every mesh CA, for a zone that just connected (it may have missed them).
async fn all_mesh_cas(store: &dyn Store) -> Result<Vec<Secret>, StoreError> {
    let meshes = meridian_store::list_all(store, Kind::Mesh, None).await?;
    mesh_cas(store, meshes.iter().map(|s| &s.resource)).await
}

/// Everything `zone` receives, at one revision, read in one transaction.
async fn snapshot(store: &dyn Store, zone: &str) -> Result<Batch, StoreError> {
    let (revision, items) = store.snapshot().await?;
    Ok(Batch {
        from_revision: 0,
        to_revision: revision,
        snapshot: true,
        changes: items
            .iter()
            .filter(|s| sent_to(zone, &s.resource.key()))
            .map(|s: &Stored| WireChange::upsert(s.revision, &s.resource))
            .collect(),
        secrets: mesh_cas(store, items.iter().map(|s| &s.resource)).await?,
    })
}

/// Sends `zone` every change after `sent`, in batches; returns the new position. The changes
/// come from the replica's shared feed, or from the store for a zone behind its window.
async fn send_changes(
    store: &dyn Store,
    feed: &ChangeFeed,
    out: &Outbox,
    zone: &str,
    mut sent: i64,
) -> Result<i64, StoreError> {
    loop {
        let read = match feed.since(sent, BATCH as usize) {
            Some(changes) => Ok(changes),
            None => store
                .changes_since(sent, BATCH)
                .await
                .map(|c| c.into_iter().map(|c| Arc::new(FeedChange::new(c))).collect()),
        };
        let changes: Vec<Arc<FeedChange>> = match read {
            Ok(c) => c,
            Err(StoreError::TooOld { asked, horizon }) => {
                info!(
                    asked,
                    horizon, "zone is behind the tombstone horizon: sending a snapshot"
                );
                let snap = snapshot(store, zone).await?;
                let to = snap.to_revision;
                if out.send(batch(snap)).await.is_err() {
                    return Ok(to);
                }
                sent = to;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(last) = changes.last().map(|c| c.revision()) else {
            return Ok(sent);
        };
        let mut spans = Vec::new();
        let tracing = meridian_otlp::exporter::enabled();
        let now = now_ms();
        let wire: Vec<WireChange> = changes
            .iter()
            .filter_map(|c| {
                let key = c.key();
                if !sent_to(zone, &key) {
                    return None;
                }
                let mut w = c.wire.clone();
                if !tracing {
                    return Some(w);
                }
                // A traced write: the zone's spans continue its trace, under this one.
                if let Some(parent) = c.change.trace(now) {
                    let mut span = meridian_otlp::exporter::Span::start(
                        format!("sync to {zone}"),
                        Some(parent),
                        meridian_otlp::exporter::CLIENT,
                    );
                    span.set("zone", zone);
                    span.set("revision", c.revision());
                    w.traceparent = span.context().traceparent();
                    spans.push(span);
                }
                Some(w)
            })
            .collect();
        // A batch of only the zone's own changes moves the position without bothering it.
        if !wire.is_empty() {
            let upserted = changes.iter().filter_map(|c| match &c.change {
                Change::Upsert(s) => Some(&s.resource),
                Change::Delete { .. } => None,
            });
            let b = Batch {
                from_revision: sent,
                to_revision: last,
                snapshot: false,
                changes: wire,
                secrets: mesh_cas(store, upserted).await?,
            };
            if out.send(batch(b)).await.is_err() {
                return Ok(last);
            }
        }
        drop(spans);
        sent = last;
    }
}

/// Why global skips one item of a zone's inventory (the zone is told, in its Ack).
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error(transparent)]
    Undecodable(#[from] BadChange),
    /// Something a zone may not report, or not as this.
    #[error("{kind} {name:?}: {why}")]
    NotTheZones { kind: Kind, name: String, why: String },
}

/// One inventory item as global stores it: named `ZONE.NAME` and labelled with the zone.
/// Refuses what a zone may not write: global's kinds, and anything claiming another zone.
fn pin(zone: &str, change: &WireChange) -> Result<SyncedOp, Refused> {
    let (key, resource) = change.decode()?;
    let refuse = |why: String| {
        Err(Refused::NotTheZones {
            kind: key.kind,
            name: key.name.clone(),
            why,
        })
    };
    if !key.kind.zone_owned() {
        return refuse(format!(
            "{} resources come from global; a zone reports only Dataplanes and ZoneIngresses",
            key.kind
        ));
    }
    if dns1123_label(&key.name).is_err() {
        return refuse(
            "a zone reports its resources by their own names (DNS-1123 labels), not ZONE.NAME".into(),
        );
    }
    let pinned = ResourceKey::new(key.kind, key.mesh.clone(), format!("{zone}.{}", key.name));
    let Some(mut resource) = resource else {
        return Ok(SyncedOp::delete(pinned));
    };
    if let Some(claimed) = resource.labels.get(ZONE_LABEL).filter(|z| *z != zone) {
        return refuse(format!(
            "labels.{ZONE_LABEL} is {claimed:?}, but this stream belongs to zone {zone:?}"
        ));
    }
    if let Spec::ZoneIngress(ingress) = &mut resource.spec {
        if let Some(claimed) = ingress.zone.as_ref().filter(|z| *z != zone) {
            return refuse(format!(
                "zone is {claimed:?}, but this stream belongs to zone {zone:?}"
            ));
        }
        ingress.zone = Some(zone.to_owned());
    }
    resource.labels.insert(ZONE_LABEL.to_owned(), zone.to_owned());
    resource.name = pinned.name;
    Ok(SyncedOp::Put(Box::new(Submission {
        resource,
        expected_version: None,
        trace: None,
    })))
}

/// Applies a zone's inventory in one transaction. Items global refuses are skipped and their
/// reasons returned; a full inventory also removes what the zone no longer has.
async fn apply_inventory(
    store: &dyn Store,
    zone: &str,
    inventory: &Inventory,
) -> Result<(SyncedOutcome, Vec<String>), StoreError> {
    let mut ops = Vec::with_capacity(inventory.changes.len());
    let mut refused = Vec::new();
    let mut meshes: BTreeMap<String, bool> = BTreeMap::new();
    for change in &inventory.changes {
        let op = match pin(zone, change) {
            Ok(op) => op,
            Err(why) => {
                refused.push(why.to_string());
                continue;
            }
        };
        if let SyncedOp::Put(s) = &op
            && !s.resource.mesh.is_empty()
        {
            let mesh = &s.resource.mesh;
            let exists = match meshes.get(mesh) {
                Some(&known) => known,
                None => {
                    let known = match store.get(&ResourceKey::new(Kind::Mesh, "", mesh.clone())).await {
                        Ok(_) => true,
                        Err(StoreError::NotFound(_)) => false,
                        Err(e) => return Err(e),
                    };
                    meshes.insert(mesh.clone(), known);
                    known
                }
            };
            if !exists {
                refused.push(format!(
                    "{} {:?}: mesh {mesh:?} does not exist on global",
                    s.resource.kind(),
                    change.name
                ));
                continue;
            }
        }
        ops.push(op);
    }
    if inventory.full {
        let keep: BTreeSet<ResourceKey> = ops
            .iter()
            .filter_map(|op| match op {
                SyncedOp::Put(s) => Some(s.resource.key()),
                SyncedOp::Delete { .. } => None,
            })
            .collect();
        for &kind in Kind::ALL.iter().filter(|k| k.zone_owned()) {
            for key in meridian_store::keys(store, kind).await? {
                if key.synced_zone() == Some(zone) && !keep.contains(&key) {
                    ops.push(SyncedOp::delete(key));
                }
            }
        }
    }
    let outcome = store.apply_synced(ops, None).await?;
    Ok((outcome, refused))
}

/// Why a zone's token does not let it sync as the zone it says it is.
#[derive(Debug, thiserror::Error)]
enum ZoneTokenError {
    #[error("{0}: generate a new one (meshctl generate zone-token --zone {1})")]
    Expired(TokenError, String),
    #[error(transparent)]
    Invalid(TokenError),
    #[error("the token is for zone {token:?}, not {hello:?}")]
    OtherZone { token: String, hello: String },
    #[error("not a zone token")]
    NotAZoneToken,
}

/// Checks that `token` is a zone token global issued for `zone`, not expired nor revoked.
async fn verify_zone_token(tokens: &Tokens, token: &str, zone: &str) -> Result<(), ZoneTokenError> {
    let claims = tokens
        .verify(token, &[TokenKind::Zone])
        .await
        .map_err(|e| match e {
            TokenError::Expired(_) => ZoneTokenError::Expired(e, zone.to_owned()),
            other => ZoneTokenError::Invalid(other),
        })?;
    match claims.subject {
        Subject::Zone { zone: z } if z == zone => Ok(()),
        Subject::Zone { zone: z } => Err(ZoneTokenError::OtherZone {
            token: z,
            hello: zone.to_owned(),
        }),
        _ => Err(ZoneTokenError::NotAZoneToken),
    }
}

#[tonic::async_trait]
impl GlobalSync for SyncServer {
    type StreamStream = Pin<Box<dyn Stream<Item = Result<GlobalMessage, Status>> + Send>>;

    async fn stream(
        &self,
        request: Request<Streaming<ZoneMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let mut inbound = request.into_inner();
        // A stream that never says who it is would be held open for nothing.
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                warn!(
                    "sync stream closed: no Hello within {} s",
                    HELLO_TIMEOUT.as_secs()
                );
                Status::deadline_exceeded(format!("no Hello within {} s", HELLO_TIMEOUT.as_secs()))
            })??;
        let hello = match first {
            Some(ZoneMessage {
                kind: Some(zone_message::Kind::Hello(h)),
            }) => h,
            _ => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        let Hello {
            zone,
            applied_revision,
            ..
        } = hello;
        dns1123_label(&zone).map_err(|e| Status::invalid_argument(format!("Hello.zone {zone:?} {e}")))?;
        let Some(token) = token else {
            warn!(zone = %zone, "sync refused: no zone token");
            self.refused.inc();
            return Err(Status::unauthenticated(
                "no zone token: start zone-cp with --zone-token-file (meshctl generate zone-token --zone NAME)",
            ));
        };
        if let Err(reason) = verify_zone_token(&self.tokens, &token, &zone).await {
            warn!(zone = %zone, reason = %reason, "sync refused: invalid zone token");
            self.refused.inc();
            return Err(Status::unauthenticated(format!(
                "invalid zone token for zone {zone:?}: {reason}"
            )));
        }
        if applied_revision < 0 {
            return Err(Status::invalid_argument(
                "Hello.applied_revision must not be negative",
            ));
        }
        let (tx, rx) = mpsc::channel(4);
        let store = self.store.clone();
        let feed = self.feed.clone();
        let zones = self.zones.clone();
        let span = info_span!("sync", zone = %zone);
        tokio::spawn(
            async move {
                info!(applied_revision, "zone connected");
                zones.update(&zone, |z| {
                    z.streams += 1;
                    z.connected_at_ms = Some(now_ms());
                    z.last_seen_ms = z.connected_at_ms;
                });
                zones.flush_soon();
                let mut commits = feed.watch();
                let mut sent = applied_revision;
                // First the mesh CAs, which a zone needs whatever it has applied.
                match all_mesh_cas(&*store).await {
                    Ok(secrets) if !secrets.is_empty() => {
                        let b = Batch {
                            from_revision: sent,
                            to_revision: sent,
                            snapshot: false,
                            changes: Vec::new(),
                            secrets,
                        };
                        if tx.send(batch(b)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "reading mesh CAs failed; the zone gets them with the next mesh change"),
                }
                // The store is read only when something may have changed: at the start and
                // after each commit, not after each ACK.
                let mut pending = true;
                loop {
                    if pending {
                        pending = false;
                        commits.borrow_and_update();
                        match send_changes(&*store, &feed, &tx, &zone, sent).await {
                            Ok(s) => sent = s,
                            Err(e) => {
                                warn!(error = %e, "reading changes failed");
                                let _ = tx.send(Err(meridian_api::grpc_status("reading changes", &e))).await;
                                break;
                            }
                        }
                    }
                    tokio::select! {
                        changed = commits.changed() => {
                            if changed.is_err() {
                                break;
                            }
                            pending = true;
                        }
                        msg = inbound.message() => match msg {
                            Ok(Some(ZoneMessage { kind: Some(zone_message::Kind::Ack(Ack { revision, error })) })) => {
                                let nack = !error.is_empty();
                                zones.update(&zone, |z| {
                                    z.last_seen_ms = Some(now_ms());
                                    if nack {
                                        warn!(revision, error = %error, "zone refused a batch (NACK)");
                                        z.last_nack = Some(error);
                                        z.last_nack_at_ms = z.last_seen_ms;
                                    } else {
                                        z.acked_revision = revision;
                                    }
                                });
                                if nack {
                                    zones.flush_soon();
                                }
                            }
                            Ok(Some(ZoneMessage { kind: Some(zone_message::Kind::Inventory(inventory)) })) => {
                                match apply_inventory(&*store, &zone, &inventory).await {
                                    Ok((done, refused)) => {
                                        info!(
                                            full = inventory.full,
                                            written = done.written,
                                            unchanged = done.unchanged,
                                            deleted = done.deleted,
                                            refused = refused.len(),
                                            "inventory applied"
                                        );
                                        for why in &refused {
                                            warn!(reason = %why, "inventory item refused");
                                        }
                                        let any_refused = !refused.is_empty();
                                        zones.update(&zone, |z| {
                                            z.last_seen_ms = Some(now_ms());
                                            if any_refused {
                                                z.inventory_refused = refused;
                                            }
                                        });
                                        if any_refused {
                                            zones.flush_soon();
                                        }
                                    }
                                    Err(e) => {
                                        // The zone reconnects and sends its whole inventory again.
                                        warn!(error = %e, "applying the zone's inventory failed");
                                        let _ = tx.send(Err(meridian_api::grpc_status("applying the inventory", &e))).await;
                                        break;
                                    }
                                }
                            }
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(status) => {
                                // A message over the size limit, say: the zone is told why, and so is the log.
                                warn!(code = ?status.code(), reason = %status.message(), "sync stream ended by an error");
                                let _ = tx.send(Err(status)).await;
                                break;
                            }
                        },
                        _ = tx.closed() => break,
                    }
                }
                zones.update(&zone, |z| z.streams = z.streams.saturating_sub(1));
                zones.flush_soon();
                info!("zone disconnected");
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
