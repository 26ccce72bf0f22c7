//! One ADS stream's life, in either protocol variant: answer each request, push what each
//! new snapshot changed, end when either side goes away or the process stops.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use tracing::debug;

use super::cache::{CLUSTER, ENDPOINT, PUSH_ORDER, Snapshot};
use super::metrics::XdsMetrics;
use super::server::{StreamGuard, wildcard_by_default};

/// The two protocol variants, as the stream loop sees them.
pub(super) trait Protocol {
    type Request;

    fn snapshots(&mut self) -> &mut tokio::sync::watch::Receiver<Arc<Snapshot>>;
    /// Answers one request; `Err` ends the stream.
    async fn handle(&mut self, request: Self::Request) -> Result<(), ()>;
    /// Pushes what a new snapshot changed, and makes it the one requests are answered from;
    /// `Err` ends the stream.
    async fn push(&mut self, snapshot: Arc<Snapshot>) -> Result<(), ()>;
    /// Ends the stream with `status`, which the client sees. Never waits: a client that has
    /// left its responses unread has its stream ended without it.
    fn fail(&mut self, status: Status);
}

/// Resolves once `stop` turns true (never, if its sender is gone).
async fn stopping(stop: &mut tokio::sync::watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The life of one stream: answer each request, push each snapshot change, until either side
/// goes away or the process stops.
pub(super) async fn drive<P: Protocol>(
    mut p: P,
    first: P::Request,
    mut inbound: Streaming<P::Request>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut next = Some(first);
    loop {
        if let Some(request) = next.take()
            && p.handle(request).await.is_err()
        {
            return;
        }
        tokio::select! {
            () = stopping(&mut stop) => {
                debug!("stream ended: stopping");
                return;
            }
            request = inbound.message() => match request {
                Ok(Some(r)) => next = Some(r),
                Ok(None) => return,
                // A request that does not decode, or is over the size limit: the client is told.
                Err(e) => {
                    debug!(error = %e, "stream ended");
                    p.fail(e);
                    return;
                }
            },
            changed = p.snapshots().changed() => {
                if changed.is_err() {
                    return;
                }
                let snapshot = p.snapshots().borrow_and_update().clone();
                if p.push(snapshot).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// What a state-of-the-world client has of one type.
#[derive(Default)]
struct SotwType {
    names: BTreeSet<String>,
    sent_version: Option<String>,
    nonce: String,
}

pub(super) struct SotwStream {
    guard: StreamGuard,
    snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    /// The snapshot requests are answered from.
    current: Arc<Snapshot>,
    metrics: Arc<XdsMetrics>,
    types: BTreeMap<String, SotwType>,
    nonce: u64,
    tx: Outbox<DiscoveryResponse>,
}

impl SotwStream {
    /// A stream for the proxy `guard` counts, answered from `snapshots` (its current one first).
    pub(super) fn new(
        guard: StreamGuard,
        mut snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
        metrics: Arc<XdsMetrics>,
        tx: Outbox<DiscoveryResponse>,
    ) -> Self {
        let current = snapshots.borrow_and_update().clone();
        Self {
            guard,
            snapshots,
            current,
            metrics,
            types: BTreeMap::new(),
            nonce: 0,
            tx,
        }
    }
}

impl Protocol for SotwStream {
    fn fail(&mut self, status: Status) {
        let _ = self.tx.try_send(Err(status));
    }

    type Request = DiscoveryRequest;

    fn snapshots(&mut self) -> &mut tokio::sync::watch::Receiver<Arc<Snapshot>> {
        &mut self.snapshots
    }

    async fn push(&mut self, snapshot: Arc<Snapshot>) -> Result<(), ()> {
        self.current = snapshot.clone();
        let mut clusters_sent = false;
        for type_url in PUSH_ORDER {
            if self.types.contains_key(type_url) {
                // Replaced clusters warm until their endpoints come again, even unchanged.
                let force = type_url == ENDPOINT && clusters_sent;
                let sent = self.send(type_url, &snapshot, force).await?;
                clusters_sent |= type_url == CLUSTER && sent;
            }
        }
        Ok(())
    }

    async fn handle(&mut self, r: DiscoveryRequest) -> Result<(), ()> {
        let state = self.types.entry(r.type_url.clone()).or_default();
        if !r.response_nonce.is_empty() && r.response_nonce != state.nonce {
            return Ok(()); // answers an older push: superseded
        }
        let names: BTreeSet<String> = r.resource_names.iter().cloned().collect();
        let names_changed = names != state.names;
        state.names = names;
        if let Some(error) = &r.error_detail {
            self.guard.nack(&r.type_url, &error.message);
            return Ok(());
        }
        if !r.response_nonce.is_empty() {
            self.guard.ack(&r.type_url, &r.version_info);
        }
        let first = r.response_nonce.is_empty();
        // The snapshot last pushed, not a newer one: that one is pushed in order by `push`.
        let snapshot = self.current.clone();
        self.send(&r.type_url, &snapshot, first || names_changed)
            .await
            .map(drop)
    }
}

impl SotwStream {
    /// Sends the type's resources unless the client has this version; says whether it did.
    async fn send(&mut self, type_url: &str, snapshot: &Snapshot, force: bool) -> Result<bool, ()> {
        let version = snapshot.type_version(type_url);
        let state = self.types.entry(type_url.to_owned()).or_default();
        if !force && state.sent_version.as_deref() == Some(version.as_str()) {
            return Ok(false);
        }
        let all = wildcard_by_default(type_url) && state.names.is_empty();
        let resources = snapshot
            .of_type(type_url)
            .into_iter()
            .flatten()
            .filter(|(name, _)| all || state.names.contains(*name))
            .map(|(_, r)| Any::clone(&r.resource))
            .collect();
        self.nonce += 1;
        state.nonce = self.nonce.to_string();
        state.sent_version = Some(version.clone());
        let response = DiscoveryResponse {
            version_info: version,
            resources,
            type_url: type_url.to_owned(),
            nonce: state.nonce.clone(),
            ..Default::default()
        };
        self.metrics.pushes.inc();
        self.tx
            .send(Ok(Box::new(response)))
            .await
            .map(|()| true)
            .map_err(drop)
    }
}

/// Where a stream's responses go. Boxed: tokio's channel allocates its slots 32 at a time when
/// it is made, and a response is about 200 bytes, which made 6 KiB per stream, idle or not.
pub(super) type Outbox<T> = mpsc::Sender<Result<Box<T>, Status>>;

/// What a delta client has of one type.
#[derive(Default)]
struct DeltaType {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Name to version, for every resource the client has.
    known: BTreeMap<String, String>,
}

impl DeltaType {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

pub(super) struct DeltaStream {
    guard: StreamGuard,
    snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    /// The snapshot requests are answered from.
    current: Arc<Snapshot>,
    metrics: Arc<XdsMetrics>,
    types: BTreeMap<String, DeltaType>,
    nonce: u64,
    tx: Outbox<DeltaDiscoveryResponse>,
}

/// Which part of a diff to send: a change sends upserts for every type first, then removals.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    Upserts,
    Removals,
    Both,
}

impl DeltaStream {
    /// A stream for the proxy `guard` counts, answered from `snapshots` (its current one first).
    pub(super) fn new(
        guard: StreamGuard,
        mut snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
        metrics: Arc<XdsMetrics>,
        tx: Outbox<DeltaDiscoveryResponse>,
    ) -> Self {
        let current = snapshots.borrow_and_update().clone();
        Self {
            guard,
            snapshots,
            current,
            metrics,
            types: BTreeMap::new(),
            nonce: 0,
            tx,
        }
    }
}

impl Protocol for DeltaStream {
    fn fail(&mut self, status: Status) {
        let _ = self.tx.try_send(Err(status));
    }

    type Request = DeltaDiscoveryRequest;

    fn snapshots(&mut self) -> &mut tokio::sync::watch::Receiver<Arc<Snapshot>> {
        &mut self.snapshots
    }

    async fn push(&mut self, snapshot: Arc<Snapshot>) -> Result<(), ()> {
        self.current = snapshot.clone();
        for type_url in PUSH_ORDER {
            if self.types.contains_key(type_url) {
                self.send(type_url, &snapshot, Part::Upserts, false).await?;
            }
        }
        for type_url in PUSH_ORDER.iter().rev() {
            if self.types.contains_key(*type_url) {
                self.send(type_url, &snapshot, Part::Removals, false).await?;
            }
        }
        Ok(())
    }

    async fn handle(&mut self, r: DeltaDiscoveryRequest) -> Result<(), ()> {
        let first = !self.types.contains_key(&r.type_url);
        let state = self.types.entry(r.type_url.clone()).or_default();
        if first {
            state.wildcard = (wildcard_by_default(&r.type_url) && r.resource_names_subscribe.is_empty())
                || r.resource_names_subscribe.iter().any(|n| n == "*");
            // A reconnecting client says what it already has: send only what differs.
            state.known = r.initial_resource_versions.clone().into_iter().collect();
        }
        for name in &r.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
            } else {
                state.names.insert(name.clone());
                // A client subscribing again to what it has wants it again: Envoy does so
                // for the endpoints of a cluster it replaced, and keeps the new cluster
                // warming (the old one serving) until they come.
                if !first {
                    state.known.remove(name);
                }
            }
        }
        for name in &r.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(name);
                state.known.remove(name);
            }
        }
        // Each delta response stands alone, so an answer to any of them counts (unlike
        // state of the world, where only the latest nonce does).
        if !r.response_nonce.is_empty() {
            match &r.error_detail {
                Some(error) => self.guard.nack(&r.type_url, &error.message),
                None => self
                    .guard
                    .ack(&r.type_url, &format!("{} resources", state.known.len())),
            }
        }
        // The snapshot last pushed, not a newer one: that one is pushed in order by `push`.
        let snapshot = self.current.clone();
        self.send(&r.type_url, &snapshot, Part::Both, first).await
    }
}

impl DeltaStream {
    async fn send(
        &mut self,
        type_url: &str,
        snapshot: &Snapshot,
        part: Part,
        always: bool,
    ) -> Result<(), ()> {
        let state = self.types.entry(type_url.to_owned()).or_default();
        let current = snapshot.of_type(type_url);
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        if part != Part::Removals {
            for (name, r) in current.into_iter().flatten() {
                if state.wants(name) && state.known.get(name) != Some(&r.version) {
                    resources.push(Resource {
                        name: name.clone(),
                        version: r.version.clone(),
                        resource: Some(Any::clone(&r.resource)),
                        ..Default::default()
                    });
                }
            }
        }
        if part != Part::Upserts {
            for name in state.known.keys() {
                let gone = current.is_none_or(|c| !c.contains_key(name));
                if gone {
                    removed.push(name.clone());
                }
            }
        }
        if resources.is_empty() && removed.is_empty() && !always {
            return Ok(());
        }
        for r in &resources {
            state.known.insert(r.name.clone(), r.version.clone());
        }
        for name in &removed {
            state.known.remove(name);
        }
        // Envoy warms a replaced cluster until its endpoints come again, serving with the old
        // one meanwhile: send them again, even unchanged (the push sends endpoints next).
        if type_url == CLUSTER
            && let Some(endpoints) = self.types.get_mut(ENDPOINT)
        {
            for r in &resources {
                endpoints.known.remove(&r.name);
            }
        }
        self.nonce += 1;
        let response = DeltaDiscoveryResponse {
            system_version_info: snapshot.type_version(type_url),
            resources,
            type_url: type_url.to_owned(),
            removed_resources: removed,
            nonce: self.nonce.to_string(),
            ..Default::default()
        };
        self.metrics.pushes.inc();
        self.tx.send(Ok(Box::new(response))).await.map_err(drop)
    }
}
