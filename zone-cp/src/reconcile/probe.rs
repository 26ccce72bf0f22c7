//! Zone-to-zone health: other zones' ingresses probed, the unreachable ones published.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use meridian_model::{Kind, Spec};
use meridian_store::Store;
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

/// Zone-to-zone health: every second, connects to each other zone's ingress (its advertised
/// address; see [`answers`]) and publishes the ones that did not answer, so their zones leave this zone's
/// endpoints until they answer again.
pub async fn probe_ingresses(
    store: Arc<dyn Store>,
    tx: watch::Sender<BTreeSet<String>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if let Ok(ingresses) = meridian_store::list_all(&*store, Kind::ZoneIngress, None).await {
            let mut probes = tokio::task::JoinSet::new();
            for stored in ingresses {
                let r = stored.resource;
                let Spec::ZoneIngress(z) = &r.spec else { continue };
                if r.key().synced_zone().is_none() {
                    continue;
                }
                let target = z.advertised();
                probes.spawn(async move { (r.name, answers(&target).await) });
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
        }
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}
