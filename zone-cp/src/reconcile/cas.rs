//! Mesh CAs for the reconciler: created by a job of their own on a standalone zone, and held
//! parsed in memory.
//!
//! ```text
//!   Mesh with mTLS ──commit──> create_mesh_cas: MeshCa::ensure (a Raft write) ──created──┐
//!                                                                                        v
//!   Reconciler: MeshCas::get (a local read; parsed once per CA) <── retries waiting meshes
//! ```
//!
//! Generation never waits on consensus: the reconciler only reads CAs, and a mesh whose CA
//! is not there yet waits (its proxies keep what they have) until the job, or the sync from
//! global, brings it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_api::ca::{CaError, MeshCa, secret_name};
use meridian_model::{Kind, Spec};
use meridian_store::{Secrets, Store, StoreError};
use tokio::sync::watch;
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

/// On a standalone zone: creates the CA of every mesh's enabled builtin backend that has
/// none, after each commit, and bumps `created` when it made or found one, so the
/// reconciler looks again at once. Runs until `stop`.
pub async fn create_mesh_cas(
    store: Arc<dyn Store>,
    created: watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let mut commits = store.watch();
    // The CAs seen so far: one new here (made by this job, or by another node's and
    // replicated) is news for the reconciler, which may be waiting for it.
    let mut known = std::collections::BTreeSet::new();
    loop {
        let failed = match ensure_all(&*store).await {
            Ok(present) => {
                if present.iter().any(|name| !known.contains(name)) {
                    created.send_modify(|n| *n += 1);
                }
                known = present;
                false
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?RETRY, "creating mesh CAs failed");
                true
            }
        };
        tokio::select! {
            changed = commits.changed() => if changed.is_err() { return Ok(()) },
            _ = tokio::time::sleep(RETRY), if failed => {}
            _ = stop.changed() => return Ok(()),
        }
        commits.borrow_and_update();
    }
}

/// Makes sure every mesh with a builtin mTLS backend enabled has its CA; the names of those
/// CAs, all present now.
pub(super) async fn ensure_all(store: &dyn Store) -> Result<std::collections::BTreeSet<String>, CaError> {
    let mut present = std::collections::BTreeSet::new();
    for mesh in meridian_store::list_all(store, Kind::Mesh, None).await? {
        let Spec::Mesh(spec) = &mesh.resource.spec else {
            continue;
        };
        let Some(backend) = spec.enabled_ca() else {
            continue;
        };
        let name = secret_name(&mesh.resource.name, &backend.name);
        if store.stored_secret(&name).await?.is_none() {
            MeshCa::ensure(store, &mesh.resource.name, &backend.name).await?;
            info!(mesh = %mesh.resource.name, backend = %backend.name, "mesh CA created");
        }
        present.insert(name);
    }
    Ok(present)
}

#[cfg(test)]
mod tests {
    use meridian_model::{Format, parse_one};
    use meridian_store::SqlStore;

    use super::*;

    #[tokio::test]
    async fn the_job_makes_the_ca_of_a_mesh_that_enables_mtls_and_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = {
            let sql = SqlStore::open_sqlite(dir.path()).await.expect("open");
            sql.migrate().await.expect("migrate");
            Arc::new(sql)
        };
        let put = |yaml: &str| {
            let (store, submission) = (store.clone(), parse_one(yaml, Format::Yaml).expect("valid"));
            async move {
                meridian_store::put_with_defaults(&*store, submission)
                    .await
                    .expect("put")
            }
        };
        put("type: Mesh\nname: plain\n").await;
        let (created_tx, mut created) = watch::channel(0);
        let (stop_tx, stop) = watch::channel(false);
        let job = tokio::spawn(create_mesh_cas(store.clone(), created_tx, stop));

        put("type: Mesh\nname: secure\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n").await;
        tokio::time::timeout(Duration::from_secs(10), created.changed())
            .await
            .expect("told within 10 s")
            .expect("job alive");
        let mut cas = MeshCas::default();
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
        assert!(
            cas.get(&*store, "plain", "ca-1")
                .await
                .expect("readable")
                .is_none()
        );
        // Nothing left to make: the one CA is there.
        let present = ensure_all(&*store).await.expect("ensure");
        assert_eq!(
            present.into_iter().collect::<Vec<_>>(),
            [secret_name("secure", "ca-1")]
        );

        stop_tx.send(true).expect("stop");
        job.await.expect("joined").expect("ends cleanly");
    }
}
