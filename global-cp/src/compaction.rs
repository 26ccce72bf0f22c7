//! Tombstone compaction. Global remembers each deletion for `retention`, so a zone that was
//! away can catch up from the changes it missed. A zone away for longer gets a snapshot instead
//! (see [`crate::sync`]). The replicas that share a store take turns through its lease; only
//! the holder compacts.
//!
//! Tombstones carry no time, only a revision. So each tick records the store's revision then,
//! and a revision recorded at least `retention` ago bounds what can go: every tombstone at or
//! below it is at least that old. Those records start over when the process starts, so after
//! a restart nothing goes for a full `retention`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use meridian_store::prelude::*;
use meridian_store::{Lease, SqlStore, StoreError, TOMBSTONE_COMPACTION};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// How often a replica looks: a tenth of the retention, from 100 ms to a minute.
fn tick(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// Revisions the store had, and when: what [`Compactor::due`] reads the horizon from.
struct Compactor {
    retention: Duration,
    seen: VecDeque<(Instant, i64)>,
}

impl Compactor {
    /// Records that the store was at `revision` at `now`; returns the newest revision recorded
    /// at least `retention` ago, if one was not returned before.
    fn due(&mut self, now: Instant, revision: i64) -> Option<i64> {
        if self.seen.back().is_none_or(|&(_, r)| r != revision) {
            self.seen.push_back((now, revision));
        }
        let mut up_to = None;
        while let Some(&(at, r)) = self.seen.front() {
            if now.duration_since(at) < self.retention {
                break;
            }
            up_to = Some(r);
            self.seen.pop_front();
        }
        up_to
    }
}

/// Compacts tombstones older than `retention` whenever this replica holds the lease, until
/// `stop` turns true. Store failures are logged and retried on the next tick.
pub async fn run(
    store: Arc<SqlStore>,
    retention: Duration,
    compacted: Counter,
    mut stop: watch::Receiver<bool>,
) {
    let mut compactor = Compactor {
        retention,
        seen: VecDeque::new(),
    };
    let mut lease: Option<Lease> = None;
    let mut ticks = tokio::time::interval(tick(retention));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let revision = match store.revision().await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "tombstone compaction: reading the revision failed");
                continue;
            }
        };
        // Every replica keeps records, so whichever takes the lease next can compact at once.
        let Some(up_to) = compactor.due(Instant::now(), revision) else {
            continue;
        };
        if let Err(e) = compact(&store, &mut lease, up_to, &compacted).await {
            warn!(error = %e, up_to, "tombstone compaction failed; retrying on the next tick");
        }
    }
}

async fn compact(
    store: &SqlStore,
    lease: &mut Option<Lease>,
    up_to: i64,
    compacted: &Counter,
) -> Result<(), StoreError> {
    if let Some(held) = lease
        && !held.holds().await
    {
        info!("tombstone compaction: lease lost");
        *lease = None;
    }
    if lease.is_none() {
        *lease = store.try_lease(TOMBSTONE_COMPACTION).await?;
        if lease.is_some() {
            info!("tombstone compaction: this replica compacts");
        }
    }
    if lease.is_none() {
        debug!("tombstone compaction: another replica holds the lease");
        return Ok(());
    }
    let removed = store.compact_tombstones(up_to).await?;
    compacted.inc_by(removed);
    if removed > 0 {
        info!(removed, horizon = up_to, "tombstones compacted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_revisions_older_than_the_retention_are_due() {
        let mut c = Compactor {
            retention: Duration::from_secs(10),
            seen: VecDeque::new(),
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(c.due(at(0), 5), None);
        assert_eq!(c.due(at(4), 9), None);
        assert_eq!(c.due(at(9), 9), None, "nothing is 10 s old yet");
        assert_eq!(c.due(at(10), 12), Some(5), "what the store had 10 s ago");
        assert_eq!(c.due(at(11), 12), None, "each revision is due once");
        assert_eq!(c.due(at(30), 12), Some(12), "the newest one old enough");
        assert_eq!(c.due(at(31), 12), None);
    }

    #[test]
    fn ticks_follow_the_retention_within_bounds() {
        assert_eq!(tick(Duration::from_secs(1)), Duration::from_millis(100));
        assert_eq!(tick(Duration::from_millis(10)), Duration::from_millis(100));
        assert_eq!(tick(Duration::from_secs(24 * 3600)), Duration::from_secs(60));
    }
}
