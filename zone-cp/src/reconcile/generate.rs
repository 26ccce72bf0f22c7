//! Generating many proxies' snapshots at once: on the blocking pool, never on the async workers
//! that serve the xDS streams, and split across the machine's cores. Certificates are issued
//! the same way: key generation is the costliest step of turning mTLS on.

use std::collections::BTreeSet;
use std::sync::Arc;

use meridian_api::ca::Leaf;
use meridian_model::policies::dataplane::DataplaneSpec;
use meridian_model::{Resource, Spec};
use tracing::{debug, error};

use crate::xds::cache::{Patch, ProxyId, SECRET, SnapshotCache, Types};
use crate::xds::metrics::XdsMetrics;
use crate::xds::translate::{Identity, MeshContext, outbounds_snapshot, proxy_snapshot, proxy_snapshot_of};

/// Below this many items, threads cost more than they save.
const SERIAL_BELOW: usize = 64;

/// One proxy to generate: its Dataplane, shared with the zone's view.
pub(super) struct Proxy {
    pub id: ProxyId,
    pub resource: Arc<Resource>,
    /// Its certificate, when the mesh has mTLS on.
    pub leaf: Option<Arc<Leaf>>,
    /// The resource types to translate anew; the others are kept from its snapshot.
    pub types: Types,
}

impl Proxy {
    /// A proxy for `resource`, if it is a Dataplane.
    pub fn new(id: ProxyId, resource: Arc<Resource>) -> Option<Self> {
        matches!(resource.spec, Spec::Dataplane(_)).then_some(Self {
            id,
            resource,
            leaf: None,
            types: Types::ALL,
        })
    }

    pub fn dataplane(&self) -> Option<&DataplaneSpec> {
        match &self.resource.spec {
            Spec::Dataplane(dp) => Some(dp),
            _ => None,
        }
    }
}

/// What every proxy of one mesh is generated from.
pub(super) struct Generation {
    pub ctx: Arc<MeshContext>,
    /// The mesh CA's certificate, when the mesh has mTLS on.
    pub ca_cert: Option<String>,
    pub cache: SnapshotCache,
    pub metrics: Arc<XdsMetrics>,
}

impl Generation {
    /// Translates each proxy and publishes its snapshot; returns how many changed (and so
    /// are pushed).
    pub async fn run(self, proxies: Vec<Proxy>) -> usize {
        let changed = blocking(move || in_parallel(proxies, |p| self.one(p))).await;
        changed.into_iter().filter(|&c| c).count()
    }

    fn one(&self, p: Proxy) -> bool {
        let identity = match (&self.ca_cert, &p.leaf) {
            (Some(ca_cert), Some(leaf)) => Some(Identity {
                ca_cert,
                cert: &leaf.cert,
                key: &leaf.key,
            }),
            _ => None,
        };
        let Some(dp) = p.dataplane() else { return false };
        let (name, labels) = (&p.id.name, &p.resource.labels);
        let types = match (&self.ctx.tls, &identity) {
            (None, _) => p.types,
            // Its certificate may have been renewed on the way; the secrets cost little.
            (Some(_), Some(_)) => p.types.union(Types::of(&[SECRET])),
            // Without its certificate a proxy gets no listeners: that is a change in full.
            (Some(_), None) => Types::ALL,
        };
        let set = if types.is_all() {
            None
        } else {
            let partial = proxy_snapshot_of(&self.ctx, name, labels, dp, identity, types);
            self.metrics.partial_generations.inc();
            // `None`: there is no snapshot to keep the rest of, so it is made in full.
            self.cache.set_types(&p.id, partial, types).transpose()
        };
        let set = set.unwrap_or_else(|| {
            let snapshot = proxy_snapshot(&self.ctx, name, labels, dp, identity);
            self.metrics.generations.inc();
            self.cache.set(&p.id, snapshot)
        });
        match set {
            Ok(changed) => {
                debug!(proxy = %p.id, changed, ?types, "snapshot regenerated");
                changed
            }
            // A bug in generation: the proxy keeps its last good snapshot, and it shows.
            Err(e) => {
                error!(proxy = %p.id, error = %e, "snapshot refused; the last good one stays");
                false
            }
        }
    }
}

/// Callers whose only change is in the instances of the services named with each: their
/// endpoints are patched where that is all a full translation would change. Returns how many
/// changed (and so are pushed), and the proxies that need a full translation after all.
pub(super) async fn patch_endpoints(
    ctx: Arc<MeshContext>,
    cache: SnapshotCache,
    metrics: Arc<XdsMetrics>,
    callers: Vec<(Proxy, BTreeSet<String>)>,
) -> (usize, Vec<Proxy>) {
    let results = blocking(move || {
        in_parallel(callers, |(p, services)| {
            let patch = match p.dataplane() {
                Some(dp) => {
                    let partial = outbounds_snapshot(&ctx, &p.id.name, &p.resource.labels, dp, &services);
                    cache.patch_endpoints(&p.id, &partial)
                }
                None => Patch::Diverged,
            };
            if patch != Patch::Diverged {
                metrics.endpoint_patches.inc();
            }
            debug!(proxy = %p.id, ?patch, "endpoints patched");
            (p, patch)
        })
    })
    .await;
    let mut pushed = 0;
    let mut whole = Vec::new();
    for (p, patch) in results {
        match patch {
            Patch::Patched(changed) => pushed += usize::from(changed),
            Patch::Diverged => whole.push(p),
        }
    }
    (pushed, whole)
}

/// Runs `f` on the blocking pool. A panic in it is a bug: it goes on in the caller, so the
/// task's supervisor sees it.
pub(super) async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// `f` of every item, in order, computed on up to as many threads as there are cores.
pub(super) fn in_parallel<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads == 1 || items.len() < SERIAL_BELOW {
        return items.into_iter().map(f).collect();
    }
    let per_thread = items.len().div_ceil(threads);
    let mut chunks: Vec<Vec<T>> = Vec::with_capacity(threads);
    let mut items = items.into_iter();
    loop {
        let chunk: Vec<T> = items.by_ref().take(per_thread).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| scope.spawn(move || chunk.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_order_of_the_items() {
        for n in [0, 1, SERIAL_BELOW - 1, SERIAL_BELOW, 1001] {
            let items: Vec<usize> = (0..n).collect();
            let doubled = in_parallel(items, |i| i * 2);
            assert_eq!(doubled, (0..n).map(|i| i * 2).collect::<Vec<_>>(), "{n} items");
        }
    }

    #[test]
    #[should_panic(expected = "item 700")]
    fn a_panic_in_a_thread_reaches_the_caller() {
        in_parallel((0..1000).collect(), |i: usize| {
            assert_ne!(i, 700, "item 700");
        });
    }
}
