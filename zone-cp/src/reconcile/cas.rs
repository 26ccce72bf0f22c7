//! Mesh CAs for the reconciler: created by a job of their own on a standalone zone, and held
//! parsed in memory.
//!
//! ```text
//!   Reconciler: MeshCas::get (a local read; parsed once per CA) ──no CA: wanted──┐
//!        ^                                                                        v
//!        └──created── create_mesh_cas: MeshCa::ensure (a Raft write) <────────────┘
//! ```
//!
//! Generation never waits on consensus: the reconciler only reads CAs, and a mesh whose CA
//! is not there yet waits (its proxies keep what they have) until the job, or the sync from
//! global, brings it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_api::ca::{CaError, MeshCa, secret_name};
use meridian_store::{Secrets, Store, StoreError};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// The mesh CAs this node has read, parsed, by secret name, with the stored text they came
/// from (a CA replaced in the store is parsed again).
#[derive(Default)]
pub struct MeshCas {
    parsed: HashMap<String, (String, MeshCa)>,
}

impl MeshCas {
    /// The CA of `mesh`'s `backend`, if the store has it.
    pub async fn get(
        &mut self,
        store: &dyn Secrets,
        mesh: &str,
        backend: &str,
    ) -> Result<Option<MeshCa>, CaError> {
        let name = secret_name(mesh, backend);
        let Some(stored) = store.stored_secret(&name).await? else {
            self.parsed.remove(&name);
            return Ok(None);
        };
        if let Some((text, ca)) = self.parsed.get(&name)
            && *text == stored
        {
            return Ok(Some(ca.clone()));
        }
        let ca = MeshCa::from_secret(&stored)?;
        self.parsed.insert(name, (stored, ca.clone()));
        Ok(Some(ca))
    }
}

/// How soon a CA that could not be created is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// A mesh whose proxies wait for its CA: `(mesh, backend)`, as the reconciler asks for it.
pub type Wanted = (String, String);

/// On a standalone zone: makes the CA the reconciler asks for (a mesh with a builtin backend
/// enabled and no CA yet), and bumps `created` once it is stored, so the reconciler looks
/// again at once. Asked only when a mesh waits, it costs nothing per commit. Runs until `stop`
/// or until the reconciler is gone.
pub async fn create_mesh_cas(
    store: Arc<dyn Store>,
    mut wanted: mpsc::UnboundedReceiver<Wanted>,
    created: watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    loop {
        let (mesh, backend) = tokio::select! {
            asked = wanted.recv() => match asked {
                Some(asked) => asked,
                // The reconciler is gone: whatever ended it is for the supervisor to report,
                // not this job's end, so it waits for the stop like the rest.
                None => {
                    let _ = stop.wait_for(|s| *s).await;
                    return Ok(());
                }
            },
            _ = stop.changed() => return Ok(()),
        };
        // Made by this job, by another node's (and replicated), or not yet: the reconciler
        // asks again while it waits, so a failure is retried.
        loop {
            match ensure(&*store, &mesh, &backend).await {
                Ok(()) => {
                    created.send_modify(|n| *n += 1);
                    break;
                }
                Err(e) => {
                    warn!(mesh, backend, error = %e, retry_in = ?RETRY, "creating a mesh CA failed");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY) => {}
                        _ = stop.changed() => return Ok(()),
                    }
                }
            }
        }
    }
}

/// Makes sure `mesh`'s `backend` has its CA.
pub(super) async fn ensure(store: &dyn Store, mesh: &str, backend: &str) -> Result<(), CaError> {
    if store.stored_secret(&secret_name(mesh, backend)).await?.is_none() {
        MeshCa::ensure(store, mesh, backend).await?;
        info!(mesh, backend, "mesh CA created");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use meridian_model::{Format, parse_one};
    use meridian_store::SqlStore;

    use super::*;

    #[tokio::test]
    async fn the_job_makes_the_ca_it_is_asked_for_and_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = {
            let sql = SqlStore::open_sqlite(dir.path()).await.expect("open");
            sql.migrate().await.expect("migrate");
            Arc::new(sql)
        };
        let submission = parse_one("type: Mesh\nname: secure\n", Format::Yaml).expect("valid");
        meridian_store::put_with_defaults(&*store, submission)
            .await
            .expect("put");
        let (wanted, asked) = mpsc::unbounded_channel();
        let (created_tx, mut created) = watch::channel(0);
        let (stop_tx, stop) = watch::channel(false);
        let job = tokio::spawn(create_mesh_cas(store.clone(), asked, created_tx, stop));

        let mut cas = MeshCas::default();
        assert!(
            cas.get(&*store, "secure", "ca-1")
                .await
                .expect("readable")
                .is_none()
        );
        wanted.send(("secure".into(), "ca-1".into())).expect("job alive");
        tokio::time::timeout(Duration::from_secs(10), created.changed())
            .await
            .expect("told within 10 s")
            .expect("job alive");
        let ca = cas
            .get(&*store, "secure", "ca-1")
            .await
            .expect("readable")
            .expect("made");
        let again = cas
            .get(&*store, "secure", "ca-1")
            .await
            .expect("readable")
            .expect("kept");
        assert_eq!(ca.fingerprint(), again.fingerprint());
        // Asked again (the reconciler retries while it waits): the same CA, said again.
        wanted.send(("secure".into(), "ca-1".into())).expect("job alive");
        tokio::time::timeout(Duration::from_secs(10), created.changed())
            .await
            .expect("told within 10 s")
            .expect("job alive");
        let kept = cas
            .get(&*store, "secure", "ca-1")
            .await
            .expect("readable")
            .expect("kept");
        assert_eq!(kept.fingerprint(), ca.fingerprint());

        // The reconciler gone, the job waits for the stop (its end is not what to report).
        drop(wanted);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!job.is_finished(), "the job outlives its asker until the stop");
        stop_tx.send_replace(true);
        job.await.expect("joined").expect("ends cleanly");
    }
}
