//! The zone's side of the global sync: one stream to global-cp, fed into the zone's store by
//! this one writer.
//!
//! ```text
//!   Hello{applied} ──> global        Batch ──> validate every resource (model) ──> store
//!                                              ──> sync position ──> Ack
//! ```
//!
//! Resumes from the applied revision after any disconnect, with backoff and jitter. While
//! global is away the zone keeps serving what it has. Applying is idempotent (an unchanged
//! resource is not rewritten), so a batch cut short by a crash is simply applied again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use meridian_model::{Kind, ResourceKey, Submission, from_value};
use meridian_proto::sync::{Ack, Batch, ChangeType, Hello, ZoneMessage, global_message, zone_message};
use meridian_proto::sync_service::global_sync_client::GlobalSyncClient;
use meridian_store::{Page, Store, StoreError, SyncedOp, SyncedOutcome};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

/// What a zone keeps from global: everything but its own Dataplanes.
pub fn global_owned(kind: Kind) -> bool {
    kind != Kind::Dataplane
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
    pub fn parse(address: &str, ca: Option<Vec<u8>>) -> Result<Self, String> {
        let bad = || format!("--global-address {address:?} must be grpc://HOST:PORT or grpcs://HOST:PORT");
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
            ("https", None) => Err(format!(
                "--global-address {address:?} uses TLS: give --global-ca-file"
            )),
            ("http", Some(_)) => Err(format!(
                "--global-ca-file is for grpcs:// addresses, not {address:?}"
            )),
            _ => Ok(Self {
                url: format!("{scheme}://{rest}"),
                ca,
            }),
        }
    }

    async fn connect(&self) -> Result<tonic::transport::Channel, String> {
        let mut endpoint =
            tonic::transport::Endpoint::from_shared(self.url.clone()).map_err(|e| e.to_string())?;
        if let Some(ca) = &self.ca {
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca));
            endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS setup: {e}"))?;
        }
        endpoint
            .connect()
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.url))
    }
}

/// Decodes every upsert first: a batch with one bad resource is refused whole.
fn decode(batch: &Batch) -> Result<Vec<(ResourceKey, Option<Submission>)>, String> {
    let mut out = Vec::with_capacity(batch.changes.len());
    for c in &batch.changes {
        let kind = Kind::from_name(&c.kind)
            .ok_or_else(|| format!("change {}: unknown kind {:?}", c.revision, c.kind))?;
        if !global_owned(kind) {
            return Err(format!(
                "change {}: {kind} is owned by zones, not global",
                c.revision
            ));
        }
        let key = ResourceKey::new(kind, c.mesh.clone(), c.name.clone());
        match ChangeType::try_from(c.change_type) {
            Ok(ChangeType::Delete) => out.push((key, None)),
            Ok(ChangeType::Upsert) => {
                let value: serde_json::Value =
                    serde_json::from_str(&c.resource).map_err(|e| format!("change {}: {e}", c.revision))?;
                let mut submission =
                    from_value(value).map_err(|e| format!("change {} ({key}): {e}", c.revision))?;
                if submission.resource.key() != key {
                    return Err(format!("change {}: the resource is not {key}", c.revision));
                }
                // Global decides versions; the zone applies what it is sent.
                submission.expected_version = None;
                out.push((key, Some(submission)));
            }
            Err(_) => {
                return Err(format!(
                    "change {}: unknown change type {}",
                    c.revision, c.change_type
                ));
            }
        }
    }
    Ok(out)
}

/// Applies a batch to the zone's store, with the new position, in one transaction.
pub async fn apply(store: &dyn Store, batch: &Batch) -> Result<SyncedOutcome, String> {
    let changes = decode(batch)?;
    let mut ops = Vec::with_capacity(changes.len());
    if batch.snapshot {
        // Whatever global no longer has goes; zone-owned kinds stay. Listing outside the
        // transaction is safe: this sync is the only writer of global-owned kinds on a zone.
        let keep: BTreeSet<&ResourceKey> = changes.iter().map(|(k, _)| k).collect();
        for &kind in Kind::ALL.iter().filter(|k| global_owned(**k)).rev() {
            let all = list_all(store, kind).await.map_err(|e| e.to_string())?;
            ops.extend(
                all.into_iter()
                    .filter(|k| !keep.contains(k))
                    .map(SyncedOp::Delete),
            );
        }
    }
    for (key, submission) in changes {
        ops.push(match submission {
            Some(s) => SyncedOp::Put(Box::new(s)),
            None => SyncedOp::Delete(key),
        });
    }
    store
        .apply_synced(ops, batch.to_revision)
        .await
        .map_err(|e| e.to_string())
}

async fn list_all(store: &dyn Store, kind: Kind) -> Result<Vec<ResourceKey>, StoreError> {
    let mut keys = Vec::new();
    loop {
        let page = store
            .list(
                kind,
                None,
                Page {
                    size: 1000,
                    offset: keys.len() as u64,
                },
            )
            .await?;
        let done = page.items.is_empty();
        keys.extend(page.items.iter().map(|s| s.resource.key()));
        if done || keys.len() as u64 >= page.total {
            return Ok(keys);
        }
    }
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

/// Runs the sync until `shutdown`, reconnecting with backoff and jitter.
pub async fn run(
    global: GlobalEndpoint,
    zone: String,
    token: String,
    store: Arc<dyn Store>,
    metrics: SyncMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        let outcome = tokio::select! {
            r = session(&global, &zone, &token, &*store, &metrics) => r,
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
) -> Result<(), String> {
    let mut client = GlobalSyncClient::new(global.connect().await?).max_decoding_message_size(64 << 20);
    let applied_revision = store.sync_position().await.map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(4);
    let hello = Hello {
        zone: zone.to_owned(),
        applied_revision,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    tx.send(ZoneMessage {
        kind: Some(zone_message::Kind::Hello(hello)),
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the zone token is not valid header text".to_owned())?;
    request.metadata_mut().insert("authorization", bearer);
    let mut inbound = client
        .stream(request)
        .await
        .map_err(|e| format!("opening the sync stream: {e}"))?
        .into_inner();
    info!(applied_revision, "sync stream open");
    metrics.connected.set(1);
    let result = receive(&mut inbound, &tx, store).await;
    metrics.connected.set(0);
    result
}

async fn receive(
    inbound: &mut tonic::Streaming<meridian_proto::sync::GlobalMessage>,
    tx: &mpsc::Sender<ZoneMessage>,
    store: &dyn Store,
) -> Result<(), String> {
    while let Some(message) = inbound.message().await.map_err(|e| e.to_string())? {
        let Some(global_message::Kind::Batch(batch)) = message.kind else {
            continue;
        };
        let ack = match apply(store, &batch).await {
            Ok(a) => {
                info!(
                    revision = batch.to_revision,
                    snapshot = batch.snapshot,
                    written = a.written,
                    unchanged = a.unchanged,
                    deleted = a.deleted,
                    "applied changes from global"
                );
                Ack {
                    revision: batch.to_revision,
                    error: String::new(),
                }
            }
            Err(error) => {
                warn!(revision = batch.to_revision, error = %error, "refusing a batch from global");
                let nack = Ack {
                    revision: batch.to_revision,
                    error: error.clone(),
                };
                let _ = tx
                    .send(ZoneMessage {
                        kind: Some(zone_message::Kind::Ack(nack)),
                    })
                    .await;
                return Err(format!(
                    "batch up to revision {} refused: {error}",
                    batch.to_revision
                ));
            }
        };
        tx.send(ZoneMessage {
            kind: Some(zone_message::Kind::Ack(ack)),
        })
        .await
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use meridian_model::{Format, parse_one};
    use meridian_proto::sync::Change as WireChange;
    use meridian_store::SqlStore;

    use super::*;

    async fn zone_store() -> (SqlStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqlStore::open_sqlite(dir.path()).await.expect("open");
        store.migrate().await.expect("migrate");
        (store, dir)
    }

    fn upsert(revision: i64, yaml: &str) -> WireChange {
        let r = parse_one(yaml, Format::Yaml).expect("valid").resource;
        let key = r.key();
        WireChange {
            revision,
            change_type: ChangeType::Upsert as i32,
            kind: key.kind.name().into(),
            mesh: key.mesh,
            name: key.name,
            resource: r.to_universal().to_string(),
        }
    }

    fn trace(name: &str, endpoint: &str) -> String {
        format!(
            "type: MeshTrace\nname: {name}\nspec:\n  backends:\n  - name: o\n    type: open_telemetry\n    conf:\n      endpoint: {endpoint}\n"
        )
    }

    fn batch(to: i64, snapshot: bool, changes: Vec<WireChange>) -> Batch {
        Batch {
            from_revision: 0,
            to_revision: to,
            snapshot,
            changes,
        }
    }

    #[tokio::test]
    async fn batches_apply_idempotently_and_move_the_position() {
        let (store, _dir) = zone_store().await;
        let b = batch(
            3,
            false,
            vec![
                upsert(1, "type: Mesh\nname: default\n"),
                upsert(3, &trace("t", "a:4317")),
            ],
        );
        assert_eq!(
            apply(&store, &b).await,
            Ok(SyncedOutcome {
                written: 2,
                unchanged: 0,
                deleted: 0
            })
        );
        assert_eq!(store.sync_position().await.expect("position"), 3);
        // The same batch again (a crash before the ACK): nothing is rewritten.
        assert_eq!(
            apply(&store, &b).await,
            Ok(SyncedOutcome {
                written: 0,
                unchanged: 2,
                deleted: 0
            })
        );
        let t = store
            .get(&ResourceKey::new(Kind::MeshTrace, "default", "t"))
            .await
            .expect("there");
        assert_eq!(t.version, 1);
    }

    #[tokio::test]
    async fn a_snapshot_replaces_global_resources_and_keeps_the_zones_own() {
        let (store, _dir) = zone_store().await;
        apply(
            &store,
            &batch(
                5,
                false,
                vec![
                    upsert(1, "type: Mesh\nname: default\n"),
                    upsert(2, &trace("kept", "a:4317")),
                    upsert(3, &trace("gone", "a:4317")),
                ],
            ),
        )
        .await
        .expect("apply");
        store
            .put(parse_one("type: Dataplane\nname: dp-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    tags: {kuma.io/service: a}\n", Format::Yaml).expect("valid"))
            .await
            .expect("zone's own dataplane");
        let snap = batch(
            9,
            true,
            vec![
                upsert(1, "type: Mesh\nname: default\n"),
                upsert(2, &trace("kept", "a:4317")),
                upsert(8, &trace("new", "b:4317")),
            ],
        );
        assert_eq!(
            apply(&store, &snap).await,
            Ok(SyncedOutcome {
                written: 1,
                unchanged: 2,
                deleted: 1
            })
        );
        let names: Vec<String> = store
            .list(Kind::MeshTrace, None, Page { size: 10, offset: 0 })
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|s| s.resource.name)
            .collect();
        assert_eq!(names, ["kept", "new"]);
        store
            .get(&ResourceKey::new(Kind::Dataplane, "default", "dp-1"))
            .await
            .expect("the zone's Dataplane stays");
        assert_eq!(store.sync_position().await.expect("position"), 9);
    }

    #[tokio::test]
    async fn a_batch_with_a_bad_resource_is_refused_whole() {
        let (store, _dir) = zone_store().await;
        let mut bad = upsert(2, &trace("t", "a:4317"));
        bad.resource = bad.resource.replace("a:4317", "no-port");
        let b = batch(2, false, vec![upsert(1, "type: Mesh\nname: default\n"), bad]);
        let err = apply(&store, &b).await.expect_err("refused");
        assert!(err.contains("spec.backends[0].conf.endpoint"), "{err}");
        assert_eq!(
            store.revision().await.expect("revision"),
            0,
            "nothing was written"
        );
        assert_eq!(store.sync_position().await.expect("position"), 0);
        let mut zones_own = upsert(3, &trace("t", "a:4317"));
        zones_own.kind = "Dataplane".into();
        assert!(apply(&store, &batch(3, false, vec![zones_own])).await.is_err());
    }

    #[test]
    fn global_addresses() {
        let plain = GlobalEndpoint::parse("grpc://127.0.0.1:5685", None).expect("valid");
        assert_eq!(plain.url, "http://127.0.0.1:5685");
        let tls = GlobalEndpoint::parse("grpcs://global.example:5685", Some(b"ca".to_vec())).expect("valid");
        assert_eq!(tls.url, "https://global.example:5685");
        assert!(
            GlobalEndpoint::parse("grpcs://global.example:5685", None)
                .is_err_and(|e| e.contains("--global-ca-file"))
        );
        assert!(GlobalEndpoint::parse("grpc://127.0.0.1:5685", Some(b"ca".to_vec())).is_err());
        assert!(GlobalEndpoint::parse("http://127.0.0.1:5685", None).is_err());
        assert!(GlobalEndpoint::parse("grpc://", None).is_err());
    }
}
