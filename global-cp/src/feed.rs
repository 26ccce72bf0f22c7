//! One change feed per replica, shared by every zone's sync stream.
//!
//! ```text
//!   store commit ──watch──> ChangeFeed::run: changes_since(head) ──> window of recent changes
//!                                                                      │ head (watch)
//!               zone streams: since(sent) from the window ────────────┘
//!                             (a stream behind the window reads the store itself)
//! ```
//!
//! Without it, every connected zone read the store after every commit: with a hundred zones,
//! a hundred identical reads per write.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use meridian_model::ResourceKey;
use meridian_proto::sync::Change as WireChange;
use meridian_store::{Change, ChangeLog, StoreError};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;
use tracing::warn;

/// How many recent changes the window holds: a zone that fell further behind (reconnecting,
/// slow) reads the store on its own until it catches up.
pub const WINDOW: usize = 4096;

/// Changes per read of the store.
const READ: u32 = 1000;

/// A change, and its form on the sync wire: encoded once, for every zone stream that sends it.
#[derive(Debug, PartialEq)]
pub struct FeedChange {
    pub change: Change,
    pub wire: WireChange,
}

impl FeedChange {
    pub fn new(change: Change) -> Self {
        let wire = match &change {
            Change::Upsert(s) => WireChange::upsert(s.revision, &s.resource),
            Change::Delete { key, revision, .. } => WireChange::delete(*revision, key),
        };
        Self { change, wire }
    }

    pub fn revision(&self) -> i64 {
        self.change.revision()
    }

    pub fn key(&self) -> ResourceKey {
        match &self.change {
            Change::Upsert(s) => s.resource.key(),
            Change::Delete { key, .. } => key.clone(),
        }
    }
}

/// The changes after `start` up to the head, oldest first: every one of them, as the store
/// gave them. Before the feed has read the store, `start` is `i64::MAX`: it holds nothing.
struct Window {
    start: i64,
    changes: VecDeque<Arc<FeedChange>>,
}

impl Window {
    fn head(&self) -> i64 {
        self.changes.back().map_or(self.start, |c| c.revision())
    }
}

/// How often the store is read for changes: by the feed (once per commit, for every zone),
/// and by streams behind its window (`meridian_sync_feed_reads_total`,
/// `meridian_sync_stream_reads_total`).
#[derive(Clone, Default)]
pub struct FeedReads {
    pub feed: Counter,
    pub behind: Counter,
}

/// A shared, bounded window over the store's change feed. Clones share it.
#[derive(Clone)]
pub struct ChangeFeed {
    window: Arc<RwLock<Window>>,
    head: watch::Receiver<i64>,
    publish: Arc<watch::Sender<i64>>,
    capacity: usize,
    reads: FeedReads,
}

impl ChangeFeed {
    /// An empty feed: it starts at the store's revision when [`ChangeFeed::run`] starts.
    pub fn new(capacity: usize, reads: FeedReads) -> Self {
        let (publish, head) = watch::channel(0);
        Self {
            window: Arc::new(RwLock::new(Window {
                start: i64::MAX,
                changes: VecDeque::new(),
            })),
            head,
            publish: Arc::new(publish),
            capacity: capacity.max(1),
            reads,
        }
    }

    /// Changes the revision of the last change the feed holds.
    pub fn watch(&self) -> watch::Receiver<i64> {
        self.head.clone()
    }

    /// Up to `limit` changes after `after`, oldest first; `None` when the window no longer
    /// reaches back that far (read the store instead).
    pub fn since(&self, after: i64, limit: usize) -> Option<Vec<Arc<FeedChange>>> {
        let window = self.window.read().unwrap_or_else(|e| e.into_inner());
        if after < window.start {
            // The caller reads the store itself.
            self.reads.behind.inc();
            return None;
        }
        // Revisions rise along the window: skip to the first one after `after`.
        let first = window.changes.partition_point(|c| c.revision() <= after);
        Some(window.changes.iter().skip(first).take(limit).cloned().collect())
    }

    /// Follows the store until `stop`: after each commit, reads what is new once for everyone.
    pub async fn run(
        self,
        store: Arc<dyn ChangeLog>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), StoreError> {
        let mut commits = store.watch();
        let mut delay = Duration::from_millis(100);
        // The window starts empty at the current revision; older changes are the store's.
        loop {
            match store.revision().await {
                Ok(revision) => {
                    self.reset(revision);
                    break;
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?delay, "the change feed cannot read the revision; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return Ok(()),
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        loop {
            commits.borrow_and_update();
            let mut delay = Duration::from_millis(100);
            while let Err(e) = self.catch_up(&*store).await {
                warn!(error = %e, retry_in = ?delay, "the change feed cannot read changes; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => return Ok(()),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            tokio::select! {
                changed = commits.changed() => if changed.is_err() { return Ok(()) },
                _ = stop.changed() => return Ok(()),
            }
        }
    }

    fn reset(&self, revision: i64) {
        let mut window = self.window.write().unwrap_or_else(|e| e.into_inner());
        *window = Window {
            start: revision,
            changes: VecDeque::new(),
        };
        drop(window);
        self.publish.send_replace(revision);
    }

    /// Reads every change after the head into the window.
    async fn catch_up(&self, store: &dyn ChangeLog) -> Result<(), StoreError> {
        loop {
            let head = self.window.read().unwrap_or_else(|e| e.into_inner()).head();
            self.reads.feed.inc();
            let changes = match store.changes_since(head, READ).await {
                Ok(changes) => changes,
                // Tombstones this feed had not read yet were compacted: start again from now;
                // streams behind it get a snapshot from the store.
                Err(StoreError::TooOld { .. }) => {
                    self.reset(store.revision().await?);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(last) = changes.last().map(Change::revision) else {
                return Ok(());
            };
            // A short read was everything committed: no second read to find nothing.
            let caught_up = changes.len() < READ as usize;
            {
                let mut window = self.window.write().unwrap_or_else(|e| e.into_inner());
                window
                    .changes
                    .extend(changes.into_iter().map(|c| Arc::new(FeedChange::new(c))));
                while window.changes.len() > self.capacity {
                    if let Some(dropped) = window.changes.pop_front() {
                        window.start = dropped.revision();
                    }
                }
            }
            self.publish.send_replace(last);
            if caught_up {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use meridian_model::{Format, parse_one};
    use meridian_store::{SqlStore, Store};

    use super::*;

    async fn store() -> (Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let sql = SqlStore::open_sqlite(dir.path()).await.expect("open");
        sql.migrate().await.expect("migrate");
        meridian_store::create_default_mesh(&sql).await.expect("mesh");
        (Arc::new(sql), dir)
    }

    async fn put(store: &dyn Store, name: &str) {
        let yaml = format!(
            "type: MeshTimeout\nname: {name}\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n  - targetRef: {{kind: Mesh}}\n    default: {{connectionTimeout: 1s}}\n"
        );
        let submission = parse_one(&yaml, Format::Yaml).expect("valid");
        meridian_store::put_with_defaults(store, submission)
            .await
            .expect("put");
    }

    async fn wait_for(feed: &ChangeFeed, revision: i64) {
        let mut head = feed.watch();
        tokio::time::timeout(Duration::from_secs(10), head.wait_for(|h| *h >= revision))
            .await
            .expect("in time")
            .expect("feed alive");
    }

    #[tokio::test]
    async fn the_window_serves_what_it_holds_and_sends_older_readers_to_the_store() {
        let (store, _dir) = store().await;
        put(&*store, "before").await;
        let started_at = store.revision().await.expect("revision");
        let feed = ChangeFeed::new(3, FeedReads::default());
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(feed.clone().run(store.clone(), stop));
        wait_for(&feed, started_at).await;
        assert!(
            feed.since(started_at - 1, 10).is_none(),
            "from before the feed started"
        );
        assert_eq!(feed.since(started_at, 10).map(|c| c.len()), Some(0));

        for name in ["a", "b"] {
            put(&*store, name).await;
        }
        let head = store.revision().await.expect("revision");
        wait_for(&feed, head).await;
        // What the store itself answers, change for change.
        let from_feed: Vec<Change> = feed
            .since(started_at, 10)
            .expect("held")
            .iter()
            .map(|c| c.change.clone())
            .collect();
        assert_eq!(
            from_feed,
            store.changes_since(started_at, 10).await.expect("store")
        );
        assert_eq!(
            feed.since(started_at, 1).expect("held").len(),
            1,
            "the limit holds"
        );
        assert_eq!(feed.since(head, 10).expect("held").len(), 0);

        // Past its capacity the window lets the oldest go, and readers that far back go to
        // the store.
        for name in ["c", "d"] {
            put(&*store, name).await;
        }
        let newest = store.revision().await.expect("revision");
        wait_for(&feed, newest).await;
        assert!(feed.since(started_at, 10).is_none());
        assert_eq!(feed.since(newest - 3, 10).expect("held").len(), 3);

        stop_tx.send(true).expect("stop");
        task.await.expect("joined").expect("ends cleanly");
    }
}
