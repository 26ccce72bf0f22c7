//! What global knows of each zone, across replicas.
//!
//! ```text
//!   sync stream tasks ──update──> Zones (this replica, in memory)
//!        ──every 2 s while a zone is connected, at once when one disconnects──>
//!   store status "zone-insight/ZONE/REPLICA" <──merge every replica's view── GET /zones
//! ```
//!
//! A zone is online while some replica holds a stream to it and has said so in the last
//! 10 s, so a replica that dies takes its zones offline with it, and a zone that moved to
//! another replica stays online.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_api::ApiError;
use meridian_model::{Kind, Spec};
use meridian_store::{SqlStore, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tracing::warn;

/// How often each replica restates the zones it holds.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// A zone no replica has restated for this long is offline.
const OFFLINE_AFTER: Duration = Duration::from_secs(10);
const PREFIX: &str = "zone-insight/";

/// One replica's view of a zone's sync.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneInsight {
    /// Open streams: a zone that reconnects can briefly have two, and is online while any is.
    pub streams: u32,
    pub connected_at_ms: Option<i64>,
    pub last_seen_ms: Option<i64>,
    /// The last revision the zone ACKed.
    pub acked_revision: i64,
    pub last_nack: Option<String>,
    pub last_nack_at_ms: Option<i64>,
    /// Why global refused items of the zone's last inventory that had refusals.
    pub inventory_refused: Vec<String>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// This replica's zones, written through to the store by [`Zones::run`].
#[derive(Clone)]
pub struct Zones {
    replica: String,
    inner: Arc<Mutex<BTreeMap<String, ZoneInsight>>>,
    urgent: Arc<Notify>,
}

impl Zones {
    /// `replica` names this global-cp process among those sharing the store.
    pub fn new(replica: impl Into<String>) -> Self {
        Self {
            replica: replica.into(),
            inner: Arc::default(),
            urgent: Arc::default(),
        }
    }

    pub fn update(&self, zone: &str, f: impl FnOnce(&mut ZoneInsight)) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(zone.to_owned()).or_default());
    }

    /// Writes the zones' state now rather than at the next heartbeat (a zone went away).
    pub fn flush_soon(&self) {
        self.urgent.notify_one();
    }

    fn local(&self) -> BTreeMap<String, ZoneInsight> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Writes this replica's view of every zone that is connected or changed, every
    /// heartbeat and when asked, until `stop` turns true.
    pub async fn run(self, store: Arc<dyn Store>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut written: BTreeMap<String, ZoneInsight> = BTreeMap::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT) => {}
                _ = self.urgent.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let now = now_ms();
            for (zone, mut insight) in self.local() {
                if insight.streams > 0 {
                    // The stream is open and HTTP/2 keepalives vouch for the zone.
                    insight.last_seen_ms = Some(now);
                    self.update(&zone, |z| z.last_seen_ms = Some(now));
                } else if written.get(&zone) == Some(&insight) {
                    continue;
                }
                let name = format!("{PREFIX}{zone}/{}", self.replica);
                let value = serde_json::to_string(&insight).unwrap_or_default();
                match store.put_status(&name, &value).await {
                    Ok(()) => {
                        written.insert(zone, insight);
                    }
                    Err(e) => warn!(error = %e, zone, "recording the zone's sync state failed"),
                }
            }
        }
    }
}

/// A zone as every replica's view adds up.
#[derive(Debug, Default, PartialEq)]
struct Merged {
    online: bool,
    newest: ZoneInsight,
    last_seen_ms: Option<i64>,
    acked_revision: i64,
    last_nack: Option<(i64, String)>,
}

fn merge(views: &[(i64, ZoneInsight)], now: i64) -> Merged {
    let mut m = Merged::default();
    let mut newest_at = i64::MIN;
    for (updated, z) in views {
        m.online |= z.streams > 0 && now - updated < OFFLINE_AFTER.as_millis() as i64;
        m.last_seen_ms = m.last_seen_ms.max(z.last_seen_ms);
        m.acked_revision = m.acked_revision.max(z.acked_revision);
        if let (Some(at), Some(nack)) = (z.last_nack_at_ms, &z.last_nack)
            && m.last_nack.as_ref().is_none_or(|(t, _)| at > *t)
        {
            m.last_nack = Some((at, nack.clone()));
        }
        if *updated > newest_at {
            newest_at = *updated;
            m.newest = z.clone();
        }
    }
    m
}

/// What global holds of a zone's inventory.
#[derive(Default)]
struct Inventory {
    dataplanes: u64,
    /// Where other zones reach the zone: its ZoneIngresses' advertised addresses.
    ingresses: Vec<String>,
}

/// Each zone's inventory: Dataplanes counted by the database from their names (a zone may
/// report tens of thousands), ZoneIngresses (a few per zone) read for their addresses.
async fn inventories(store: &SqlStore) -> Result<BTreeMap<String, Inventory>, StoreError> {
    let mut out: BTreeMap<String, Inventory> = store
        .count_by_zone(Kind::Dataplane)
        .await?
        .into_iter()
        .map(|(zone, dataplanes)| {
            let inventory = Inventory {
                dataplanes,
                ingresses: Vec::new(),
            };
            (zone, inventory)
        })
        .collect();
    for stored in meridian_store::list_all(store, Kind::ZoneIngress, None).await? {
        let r = &stored.resource;
        if let (Some(zone), Spec::ZoneIngress(ingress)) = (meridian_model::synced_zone(&r.name), &r.spec) {
            out.entry(zone.to_owned())
                .or_default()
                .ingresses
                .push(ingress.advertised());
        }
    }
    Ok(out)
}

fn time(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |ms| meridian_model::rfc3339(ms).into())
}

fn zone_json(name: &str, m: &Merged, inventory: Option<&Inventory>) -> Value {
    json!({
        "type": "Zone",
        "name": name,
        "state": if m.online { "Online" } else { "Offline" },
        "connectedAt": time(m.newest.connected_at_ms),
        "lastSeen": time(m.last_seen_ms),
        "ackedRevision": m.acked_revision,
        "lastNack": m.last_nack.as_ref().map(|(_, n)| n),
        "dataplanes": inventory.map_or(0, |i| i.dataplanes),
        "ingresses": inventory.map(|i| i.ingresses.clone()).unwrap_or_default(),
        "inventoryRefused": m.newest.inventory_refused,
    })
}

/// Every zone any replica has recorded, merged, by name. This replica's own view is taken
/// live rather than as last recorded.
async fn all(store: &dyn Store, zones: &Zones) -> Result<BTreeMap<String, Merged>, StoreError> {
    let now = now_ms();
    let mut views: BTreeMap<String, Vec<(i64, ZoneInsight)>> = BTreeMap::new();
    for status in store.statuses(PREFIX).await? {
        let Some((zone, replica)) = status.name[PREFIX.len()..].split_once('/') else {
            continue;
        };
        if replica == zones.replica {
            continue;
        }
        if let Ok(insight) = serde_json::from_str(&status.value) {
            views
                .entry(zone.to_owned())
                .or_default()
                .push((status.updated_ms, insight));
        }
    }
    for (zone, insight) in zones.local() {
        views.entry(zone).or_default().push((now, insight));
    }
    Ok(views
        .into_iter()
        .map(|(zone, v)| (zone, merge(&v, now)))
        .collect())
}

/// `GET /zones` and `GET /zones/{name}`: each zone's sync state and inventory.
pub fn routes(store: Arc<SqlStore>, zones: Zones) -> axum::Router {
    use axum::extract::{Path, State};
    use axum::routing::get;
    type ZoneState = State<(Arc<SqlStore>, Zones)>;
    async fn list(State((store, zones)): ZoneState) -> Result<axum::Json<Value>, ApiError> {
        let inventories = inventories(&store).await?;
        let items: Vec<Value> = all(&*store, &zones)
            .await?
            .iter()
            .map(|(n, z)| zone_json(n, z, inventories.get(n)))
            .collect();
        Ok(axum::Json(
            json!({ "total": items.len(), "items": items, "next": null }),
        ))
    }
    async fn one(
        State((store, zones)): ZoneState,
        Path(name): Path<String>,
    ) -> Result<axum::Json<Value>, ApiError> {
        let Some(zone) = all(&*store, &zones).await?.remove(&name) else {
            return Err(ApiError::not_found(format!("zone {name:?} has never connected")));
        };
        let inventories = inventories(&store).await?;
        Ok(axum::Json(zone_json(&name, &zone, inventories.get(&name))))
    }
    axum::Router::new()
        .route("/zones", get(list))
        .route("/zones/{name}", get(one))
        .with_state((store, zones))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zone_is_online_while_a_fresh_view_holds_a_stream() {
        let now = 100_000;
        let connected = ZoneInsight {
            streams: 1,
            acked_revision: 7,
            ..Default::default()
        };
        let gone = ZoneInsight {
            streams: 0,
            acked_revision: 9,
            last_nack: Some("bad".into()),
            last_nack_at_ms: Some(1),
            ..Default::default()
        };
        let m = merge(
            &[(now - 1_000, connected.clone()), (now - 500, gone.clone())],
            now,
        );
        assert!(m.online, "one replica still holds the zone");
        assert_eq!(m.acked_revision, 9);
        assert_eq!(m.last_nack, Some((1, "bad".into())));
        assert_eq!(m.newest, gone);
        // A replica that stopped restating the zone (it died) no longer vouches for it.
        assert!(!merge(&[(now - 11_000, connected)], now).online);
        assert!(!merge(&[(now, gone)], now).online);
    }
}
