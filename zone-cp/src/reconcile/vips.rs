//! The job that gives services their virtual IPs: asked by the reconciler (on the leader)
//! when a mesh with transparent proxies has a service without one, it writes the mesh's
//! VirtualIPs through the zone's Raft log, where every node reads it from.
//!
//! Each write starts from what is stored and keeps every address already given
//! ([`meridian_model::policies::virtual_ips::allocate`]), and is a compare-and-set on the
//! stored version: two writers (an old and a new leader) cannot lose each other's addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use meridian_model::policies::virtual_ips::{Range, VirtualIpsSpec, allocate};
use meridian_model::{Kind, Resource, ResourceKey, Spec, Submission};
use meridian_store::{Store, StoreError};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// A mesh, and every service it has now.
pub type Wanted = (String, BTreeSet<String>);

/// How long the job gathers asks before writing: registrations come in bursts, and one
/// write then covers them all.
const GATHER: Duration = Duration::from_millis(200);
const RETRY: Duration = Duration::from_secs(1);

pub async fn allocate_vips(
    store: Arc<dyn Store>,
    range: Range,
    mut wanted: mpsc::UnboundedReceiver<Wanted>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    loop {
        let first = tokio::select! {
            asked = wanted.recv() => match asked {
                Some(asked) => asked,
                None => {
                    let _ = stop.wait_for(|s| *s).await;
                    return Ok(());
                }
            },
            _ = stop.changed() => return Ok(()),
        };
        tokio::select! {
            _ = tokio::time::sleep(GATHER) => {}
            _ = stop.changed() => return Ok(()),
        }
        let mut latest: BTreeMap<String, BTreeSet<String>> = BTreeMap::from([first]);
        while let Ok((mesh, services)) = wanted.try_recv() {
            latest.insert(mesh, services);
        }
        for (mesh, services) in latest {
            while let Err(e) = write(&*store, &mesh, &services, range).await {
                warn!(mesh, error = %e, retry_in = ?RETRY, "allocating virtual IPs failed");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = stop.changed() => return Ok(()),
                }
            }
        }
    }
}

/// Brings `mesh`'s VirtualIPs to `services`, keeping what is given; retried on a conflict.
pub(crate) async fn write(
    store: &dyn Store,
    mesh: &str,
    services: &BTreeSet<String>,
    range: Range,
) -> Result<(), StoreError> {
    let key = ResourceKey::new(Kind::VirtualIPs, mesh, mesh);
    loop {
        let stored = match store.get(&key).await {
            Ok(stored) => Some(stored),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let current = match stored.as_ref().map(|s| &s.resource.spec) {
            Some(Spec::VirtualIPs(v)) => v.services.clone(),
            _ => BTreeMap::new(),
        };
        let names: BTreeSet<&str> = services.iter().map(String::as_str).collect();
        let Some(next) = allocate(&current, &names, range) else {
            return Err(StoreError::Internal(format!(
                "the virtual IP range {range} has no room for {} services (zone-cp --vip-range)",
                names.len()
            )));
        };
        if next == current {
            return Ok(());
        }
        let added = next.keys().filter(|s| !current.contains_key(*s)).count();
        let submission = Submission {
            resource: Resource {
                mesh: mesh.to_owned(),
                name: mesh.to_owned(),
                labels: Default::default(),
                spec: Spec::VirtualIPs(VirtualIpsSpec { services: next }),
            },
            expected_version: Some(stored.as_ref().map_or(0, |s| s.version)),
            trace: None,
        };
        match store.put(submission).await {
            Ok(_) => {
                info!(mesh, added, services = services.len(), "virtual IPs allocated");
                return Ok(());
            }
            // Someone else wrote meanwhile: start again from what they wrote.
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use meridian_model::policies::virtual_ips::DEFAULT_RANGE;
    use meridian_model::{Format, parse_one};
    use meridian_store::SqlStore;

    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    async fn stored(store: &dyn Store) -> (i64, BTreeMap<String, std::net::Ipv4Addr>) {
        let s = store
            .get(&ResourceKey::new(Kind::VirtualIPs, "default", "default"))
            .await
            .expect("stored");
        let Spec::VirtualIPs(v) = s.resource.spec else {
            panic!("not VirtualIPs")
        };
        (s.version, v.services)
    }

    #[tokio::test]
    async fn writes_keep_every_address_given_and_skip_when_nothing_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sql = SqlStore::open_sqlite(dir.path()).await.expect("open");
        sql.migrate().await.expect("migrate");
        let store: Arc<dyn Store> = Arc::new(sql);
        store
            .put(parse_one("type: Mesh\nname: default\n", Format::Yaml).expect("valid"))
            .await
            .expect("mesh");
        write(&*store, "default", &set(&["a", "b"]), DEFAULT_RANGE)
            .await
            .expect("write");
        let (v1, first) = stored(&*store).await;
        write(&*store, "default", &set(&["a", "b"]), DEFAULT_RANGE)
            .await
            .expect("write");
        assert_eq!(stored(&*store).await.0, v1, "no write when nothing changes");
        write(&*store, "default", &set(&["a", "b", "c"]), DEFAULT_RANGE)
            .await
            .expect("write");
        let (v2, more) = stored(&*store).await;
        assert_eq!(v2, v1 + 1);
        assert_eq!((more["a"], more["b"]), (first["a"], first["b"]));
        let tiny = "10.0.0.0/30".parse().expect("range");
        let err = write(&*store, "default", &set(&["x", "y", "z"]), tiny)
            .await
            .expect_err("full");
        assert!(err.to_string().contains("no room"), "{err}");
    }
}
