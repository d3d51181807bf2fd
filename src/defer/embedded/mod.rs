//! The embedded store: a redb database in a directory of its own.
//!
//! Why redb: pure Rust (no C toolchain, no system library), ACID
//! transactions with copy-on-write B-trees, one file, and every commit
//! synced to disk before it returns (`Durability::Immediate`, redb's
//! default and the one used here): a request is on disk before its `202`
//! leaves, and an outcome before the status endpoint shows it. Claims and
//! releases are committed without a sync: a crash can only undo them,
//! which puts the request back to wait, as opening the store does with
//! every claim left by a dead process. One in 32 of them is synced all
//! the same: redb frees the pages a commit replaced only at a synced
//! commit, and a replayer probing a dead back end claims and releases for
//! days with no append or outcome between (unsynced only, 60,000 claims
//! and releases of 100 requests grew the file to 8 GiB). A crash between
//! two commits loses nothing committed; redb repairs its free-space
//! bookkeeping on the next open. One process opens
//! a store at a time (redb locks the file); replicas that share a backlog
//! use the Redis store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use redb::Database;

use super::store::{
    Appended, Claimed, DeferStore, Deferred, Outcome, Status, StoreConfig, StoreError, StoreFuture,
    Ticket,
};

mod inner;

/// The file the store keeps in its directory.
pub const FILE_NAME: &str = "deferred.redb";

/// The embedded store (feature `defer`): a redb database, every commit
/// synced to disk before it returns.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

struct Inner {
    db: Database,
    config: StoreConfig,
    path: PathBuf,
    /// Unsynced commits so far: every [`SYNC_EVERY`](inner::SYNC_EVERY)th
    /// is synced (see [`Inner::write_unsynced`]).
    unsynced_commits: std::sync::atomic::AtomicU64,
}

fn io(err: impl std::fmt::Display) -> StoreError {
    StoreError::Io(err.to_string())
}

fn pending_key(rank: u8) -> String {
    format!("pending:{rank}")
}

/// The stores this process has open, by file: opened once, shared after.
static OPEN: std::sync::OnceLock<
    std::sync::Mutex<std::collections::HashMap<PathBuf, std::sync::Weak<Inner>>>,
> = std::sync::OnceLock::new();

impl EmbeddedStore {
    /// Opens (or creates) the store in directory `dir`. A store this
    /// process already has open (the one [`BrownoutLayer::from_policy`](crate::BrownoutLayer::from_policy)
    /// opened, say) is shared, not opened twice (redb allows one opener).
    ///
    /// A directory that cannot be created or read, a file where the
    /// directory should be, a directory holding other files but no store,
    /// and a store file that is not a redb database or is corrupt are all
    /// [`StoreError::Open`] naming the path: never an empty queue in its
    /// place. Requests a previous process had claimed but not settled (it
    /// died mid-replay) are put back in their place, to be replayed again.
    pub fn open(dir: impl AsRef<Path>, config: StoreConfig) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        let fail = |path: &Path, why: String| StoreError::Open {
            path: path.to_owned(),
            why,
        };
        if dir.exists() && !dir.is_dir() {
            return Err(fail(dir, "is not a directory".to_owned()));
        }
        std::fs::create_dir_all(dir).map_err(|e| fail(dir, format!("cannot create it: {e}")))?;
        let file = dir.join(FILE_NAME);
        let others = std::fs::read_dir(dir)
            .map_err(|e| fail(dir, format!("cannot read it: {e}")))?
            .filter_map(Result::ok)
            .filter(|e| e.file_name() != FILE_NAME)
            .count();
        if !file.exists() && others > 0 {
            return Err(fail(
                dir,
                format!(
                    "holds {others} other file(s) but no {FILE_NAME}: not a deferral store \
                     (give an empty or new directory)"
                ),
            ));
        }
        // One process opens a store once: a second open of the same
        // directory (the stack's own and one opened by hand) shares it.
        let key = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
        let mut open = OPEN
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        open.retain(|_, store| store.strong_count() > 0);
        if let Some(inner) = open.get(&key).and_then(std::sync::Weak::upgrade) {
            return Ok(Self { inner });
        }
        let db = Database::create(&file).map_err(|e| fail(&file, e.to_string()))?;
        let store = Inner {
            db,
            config,
            path: file.clone(),
            unsynced_commits: std::sync::atomic::AtomicU64::new(0),
        };
        store
            .recover()
            .map_err(|e| fail(&file, format!("cannot read it back: {e}")))?;
        let inner = Arc::new(store);
        open.insert(key, Arc::downgrade(&inner));
        Ok(Self { inner })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || op(&inner))
                .await
                .map_err(io)?
        })
    }
}

impl DeferStore for EmbeddedStore {
    fn now(&self) -> SystemTime {
        self.inner.config.clock.system_time()
    }

    fn append(&self, request: Deferred) -> StoreFuture<'_, Appended> {
        self.run(move |s| s.append(request))
    }

    fn claim(&self) -> StoreFuture<'_, Option<Claimed>> {
        self.run(|s| s.claim())
    }

    fn release(&self, ticket: Ticket) -> StoreFuture<'_, ()> {
        self.run(move |s| s.release(&ticket))
    }

    fn complete(&self, ticket: Ticket, outcome: Outcome) -> StoreFuture<'_, bool> {
        self.run(move |s| s.complete(&ticket, &outcome))
    }

    fn expire(&self) -> StoreFuture<'_, u64> {
        self.run(|s| s.expire())
    }

    fn status(&self, ticket: Ticket) -> StoreFuture<'_, Option<Status>> {
        self.run(move |s| s.status(&ticket))
    }

    fn ticket_for_key(&self, key: String) -> StoreFuture<'_, Option<Ticket>> {
        self.run(move |s| s.ticket_for_key(&key))
    }

    fn pending(&self) -> StoreFuture<'_, Vec<u64>> {
        self.run(|s| s.pending())
    }

    fn oldest(&self) -> StoreFuture<'_, Option<SystemTime>> {
        self.run(|s| s.oldest())
    }
}
