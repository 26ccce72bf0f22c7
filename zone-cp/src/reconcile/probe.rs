//! Zone-to-zone health: other zones' ingresses probed, the unreachable ones published.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

/// How often other zones' ingresses are probed, and how long a connect may take.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// Whether something at `target` takes a connection and holds it: an ingress waits for the
/// caller's TLS hello, so a connection closed at once (a cut link, a proxy with nothing
/// behind it) counts as unreachable, like a refused or timed-out one.
async fn answers(target: &str) -> bool {
    use tokio::io::AsyncReadExt;
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(target)).await
    else {
        return false;
    };
    let mut byte = [0u8; 1];
    match tokio::time::timeout(PROBE_HOLD, stream.read(&mut byte)).await {
        Err(_) => true,
        Ok(Ok(n)) => n > 0,
        Ok(Err(_)) => false,
    }
}

/// How long a probe connection must stay open.
const PROBE_HOLD: Duration = Duration::from_millis(200);

/// Other zones' ingresses to probe: resource name to advertised `HOST:PORT`, as the
/// reconciler's view of the zone has them.
pub type IngressTargets = BTreeMap<String, String>;

/// Zone-to-zone health: every second (and at once when the ingresses change), connects to
/// each other zone's ingress (its advertised address; see [`answers`]) and publishes the ones
/// that did not answer, so their zones leave this zone's endpoints until they answer again.
/// Which ingresses there are comes from the reconciler's view (`targets`), not the store.
pub async fn probe_ingresses(
    mut targets: watch::Receiver<IngressTargets>,
    tx: watch::Sender<BTreeSet<String>>,
    mut shutdown: watch::Receiver<bool>,
) {
    // A channel whose sender is gone would be ready at once, forever: the last targets stay.
    let mut following = true;
    loop {
        let current = targets.borrow_and_update().clone();
        let mut probes = tokio::task::JoinSet::new();
        for (name, target) in current {
            probes.spawn(async move { (name, answers(&target).await) });
        }
        let mut unreachable = BTreeSet::new();
        while let Some(Ok((name, ok))) = probes.join_next().await {
            if !ok {
                unreachable.insert(name);
            }
        }
        tx.send_if_modified(|current| {
            if *current == unreachable {
                return false;
            }
            for gone in unreachable.difference(current) {
                warn!(ingress = %gone, "another zone's ingress stopped answering; its zone leaves the endpoints");
            }
            for back in current.difference(&unreachable) {
                info!(ingress = %back, "another zone's ingress answers again");
            }
            *current = unreachable;
            true
        });
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            changed = targets.changed(), if following => following = changed.is_ok(),
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ingress stand-in: takes connections and holds them, as one waiting for a TLS hello.
    async fn holding() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        addr
    }

    /// An address nothing listens on.
    async fn refusing() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr").to_string()
    }

    #[tokio::test]
    async fn the_ingresses_the_view_names_are_probed_as_they_change() {
        let (up, down) = (holding().await, refusing().await);
        let only_up = IngressTargets::from([("zone-2.up".to_owned(), up.clone())]);
        let (targets_tx, targets) = watch::channel(only_up.clone());
        let (tx, mut unreachable) = watch::channel(BTreeSet::new());
        let (stop_tx, stop) = watch::channel(false);
        let prober = tokio::spawn(probe_ingresses(targets, tx, stop));
        let wait = |unreachable: &mut watch::Receiver<BTreeSet<String>>, want: Vec<&str>| {
            let want: BTreeSet<String> = want.into_iter().map(str::to_owned).collect();
            let mut unreachable = unreachable.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(10), unreachable.wait_for(|u| *u == want))
                    .await
                    .unwrap_or_else(|_| panic!("unreachable never became {want:?}"))
                    .map(drop)
                    .expect("prober running");
            }
        };
        let mut both = only_up.clone();
        both.insert("zone-3.down".to_owned(), down);
        targets_tx.send_replace(both);
        wait(&mut unreachable, vec!["zone-3.down"]).await;
        // Gone from the view, gone from what is unreachable.
        targets_tx.send_replace(only_up);
        wait(&mut unreachable, vec![]).await;
        stop_tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), prober)
            .await
            .expect("stops")
            .expect("no panic");
    }
}
