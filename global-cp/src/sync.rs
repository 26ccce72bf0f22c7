//! The sync server: one bidirectional stream per zone.
//!
//! ```text
//!   zone ──Hello{applied}──> stream task: changes_since(applied) ──Batch──> zone
//!                                         wait for the next commit (store watch, which
//!        <──────────────────              LISTEN/NOTIFY feeds from every replica) ──Batch──>
//!   zone ──Ack{revision}───> zone insight (last ACK, last NACK)
//! ```
//!
//! A zone behind the tombstone horizon gets one snapshot batch. Zone-owned kinds (Dataplanes)
//! are not sent to zones.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use meridian_model::validate::dns1123_label;
use meridian_model::{Kind, Stored};
use meridian_proto::sync::{
    Ack, Batch, Change as WireChange, ChangeType, GlobalMessage, Hello, ZoneMessage, global_message,
    zone_message,
};
use meridian_proto::sync_service::global_sync_server::GlobalSync;
use meridian_store::{Change, Store, StoreError};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info, info_span, warn};

use prometheus_client::metrics::counter::Counter;

use crate::tokens::ZoneTokens;

/// Changes per batch.
const BATCH: u32 = 500;

/// What global knows of a zone's sync.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ZoneInsight {
    /// Open streams: a zone that reconnects can briefly have two, and is online while any is.
    pub streams: u32,
    pub connected_at: Option<SystemTime>,
    pub last_seen: Option<SystemTime>,
    /// The last revision the zone ACKed.
    pub acked_revision: i64,
    pub last_nack: Option<String>,
}

/// Every zone's insight, by name.
#[derive(Clone, Default)]
pub struct Zones {
    inner: Arc<Mutex<BTreeMap<String, ZoneInsight>>>,
}

impl Zones {
    pub fn update(&self, zone: &str, f: impl FnOnce(&mut ZoneInsight)) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(zone.to_owned()).or_default());
    }

    pub fn all(&self) -> BTreeMap<String, ZoneInsight> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub struct SyncServer {
    store: Arc<dyn Store>,
    zones: Zones,
    tokens: ZoneTokens,
    refused: Counter,
}

impl SyncServer {
    pub fn new(store: Arc<dyn Store>, zones: Zones, tokens: ZoneTokens, refused: Counter) -> Self {
        Self {
            store,
            zones,
            tokens,
            refused,
        }
    }
}

/// Kinds that global sends to zones.
fn global_owned(kind: Kind) -> bool {
    kind != Kind::Dataplane
}

fn wire_upsert(stored: &Stored) -> WireChange {
    let key = stored.resource.key();
    WireChange {
        revision: stored.revision,
        change_type: ChangeType::Upsert as i32,
        kind: key.kind.name().to_owned(),
        mesh: key.mesh,
        name: key.name,
        resource: stored.resource.to_universal().to_string(),
    }
}

fn wire(change: &Change) -> Option<WireChange> {
    match change {
        Change::Upsert(s) if global_owned(s.resource.kind()) => Some(wire_upsert(s)),
        Change::Delete { key, revision } if global_owned(key.kind) => Some(WireChange {
            revision: *revision,
            change_type: ChangeType::Delete as i32,
            kind: key.kind.name().to_owned(),
            mesh: key.mesh.clone(),
            name: key.name.clone(),
            resource: String::new(),
        }),
        _ => None,
    }
}

fn batch(b: Batch) -> Result<GlobalMessage, Status> {
    Ok(GlobalMessage {
        kind: Some(global_message::Kind::Batch(b)),
    })
}

type Outbox = mpsc::Sender<Result<GlobalMessage, Status>>;

/// Every global resource at one revision, read in one transaction.
async fn snapshot(store: &dyn Store) -> Result<Batch, StoreError> {
    let (revision, items) = store.snapshot().await?;
    Ok(Batch {
        from_revision: 0,
        to_revision: revision,
        snapshot: true,
        changes: items
            .iter()
            .filter(|s| global_owned(s.resource.kind()))
            .map(wire_upsert)
            .collect(),
    })
}

/// Sends every change after `sent`, in batches; returns the new position.
async fn send_changes(store: &dyn Store, out: &Outbox, mut sent: i64) -> Result<i64, StoreError> {
    loop {
        let changes = match store.changes_since(sent, BATCH).await {
            Ok(c) => c,
            Err(StoreError::TooOld { asked, horizon }) => {
                info!(
                    asked,
                    horizon, "zone is behind the tombstone horizon: sending a snapshot"
                );
                let snap = snapshot(store).await?;
                let to = snap.to_revision;
                if out.send(batch(snap)).await.is_err() {
                    return Ok(to);
                }
                sent = to;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(last) = changes.last().map(Change::revision) else {
            return Ok(sent);
        };
        let wire: Vec<WireChange> = changes.iter().filter_map(wire).collect();
        // A batch of only zone-owned changes moves the position without bothering the zone.
        if !wire.is_empty() {
            let b = Batch {
                from_revision: sent,
                to_revision: last,
                snapshot: false,
                changes: wire,
            };
            if out.send(batch(b)).await.is_err() {
                return Ok(last);
            }
        }
        sent = last;
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
        let hello = match inbound.message().await? {
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
        if let Err(reason) = self.tokens.verify(&token, &zone) {
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
        let zones = self.zones.clone();
        let span = info_span!("sync", zone = %zone);
        tokio::spawn(
            async move {
                info!(applied_revision, "zone connected");
                zones.update(&zone, |z| {
                    z.streams += 1;
                    z.connected_at = Some(SystemTime::now());
                    z.last_seen = z.connected_at;
                });
                let mut commits = store.watch();
                let mut sent = applied_revision;
                // The store is read only when something may have changed: at the start and
                // after each commit, not after each ACK.
                let mut pending = true;
                loop {
                    if pending {
                        pending = false;
                        commits.borrow_and_update();
                        match send_changes(&*store, &tx, sent).await {
                            Ok(s) => sent = s,
                            Err(e) => {
                                warn!(error = %e, "reading changes failed");
                                let _ = tx.send(Err(Status::unavailable("global store unavailable"))).await;
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
                                zones.update(&zone, |z| {
                                    z.last_seen = Some(SystemTime::now());
                                    if error.is_empty() {
                                        z.acked_revision = revision;
                                    } else {
                                        warn!(revision, error = %error, "zone refused a batch (NACK)");
                                        z.last_nack = Some(error);
                                    }
                                });
                            }
                            Ok(Some(_)) => {}
                            Ok(None) | Err(_) => break,
                        },
                        _ = tx.closed() => break,
                    }
                }
                zones.update(&zone, |z| z.streams = z.streams.saturating_sub(1));
                info!("zone disconnected");
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
