//! [`EventLog`]: the store with its committer and its stream cache, the handle every command
//! and reader of the log holds. Commands run on it ([`crate::command`],
//! [`crate::unit_of_work`]); it dereferences to the [`Store`] for appends and reads.

use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use cqrs_es::Aggregate;
use cqrs_es::persist::EventUpcaster;

use crate::aggregate::Loaded;
use crate::db::Db;
use crate::group_commit::{self, Commit, Committer, Outcome, Respond};
use crate::store::{InlineProjection, Store, StreamId};
use crate::stream_cache::StreamCache;

/// The event log. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// The group committer, once started.
    committer: OnceLock<Committer>,
    /// Streams kept in memory, once configured.
    cache: OnceLock<StreamCache>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

impl Deref for EventLog {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.inner.store
    }
}

impl EventLog {
    pub fn new(db: Db, upcasters: Vec<Box<dyn EventUpcaster>>) -> Self {
        Self::with_inline(db, upcasters, Vec::new())
    }

    /// A log that keeps `inline` projections up to date in the transaction of every append.
    pub fn with_inline(
        db: Db,
        upcasters: Vec<Box<dyn EventUpcaster>>,
        inline: Vec<Arc<dyn InlineProjection>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: Store::with_inline(db, upcasters, inline),
                committer: OnceLock::new(),
                cache: OnceLock::new(),
            }),
        }
    }

    /// The store under the log.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Starts group commit for this log (see [`crate::group_commit`]); needs a Tokio runtime.
    /// The committer stops when the last handle of the log is dropped.
    pub fn start_group_commit(&self) {
        self.inner
            .committer
            .get_or_init(|| Committer::start(&self.inner.store));
    }

    /// Commits through the committer task when the log has one, else in a transaction of its
    /// own.
    pub async fn commit_grouped(&self, commit: Commit, respond: Respond) -> Outcome {
        use tracing::Instrument;
        let span = crate::traced_span!("commit", grouped = self.inner.committer.get().is_some());
        async {
            match self.inner.committer.get() {
                Some(committer) => committer.commit(&self.inner.store, commit, respond).await,
                // Boxed: a rare path whose future would otherwise set the size of every
                // command's future (see `Committer::commit`).
                None => {
                    Box::pin(group_commit::commit_one(
                        &self.inner.store,
                        &commit,
                        &respond,
                    ))
                    .await
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Keeps aggregates of `aggregate_types`, weighing up to `capacity` events in all, in
    /// memory for commands that may decide on cached state; those of `handed_out` (among
    /// them) are handed to their reader instead of copied (see [`crate::stream_cache`]).
    /// Set once; later calls are ignored.
    pub fn cache_streams(&self, aggregate_types: &[&str], handed_out: &[&str], capacity: usize) {
        let _ = self
            .inner
            .cache
            .set(StreamCache::new(aggregate_types, handed_out, capacity));
    }

    /// Whether streams like `stream` are cached.
    pub(crate) fn caches(&self, stream: &StreamId) -> bool {
        self.inner.cache.get().is_some_and(|c| c.caches(stream))
    }

    /// Whether the cache holds `stream` now.
    pub(crate) fn is_cached(&self, stream: &StreamId) -> bool {
        self.inner.cache.get().is_some_and(|c| c.holds(stream))
    }

    /// The stream's cached aggregate, if it is cached.
    pub(crate) fn cached<A: Aggregate + Clone + 'static>(
        &self,
        stream: &StreamId,
    ) -> Option<Loaded<A>> {
        self.inner.cache.get()?.cached(stream)
    }

    /// Remembers a stream's aggregate as just read or committed, if streams of its type are
    /// cached.
    pub(crate) fn remember<A: Aggregate + Clone + 'static>(
        &self,
        stream: &StreamId,
        loaded: &Loaded<A>,
    ) {
        if self.caches(stream) {
            self.keep(stream, loaded.clone());
        }
    }

    /// [`EventLog::remember`], taking the aggregate instead of a copy.
    pub(crate) fn keep<A: Aggregate + Clone + 'static>(
        &self,
        stream: &StreamId,
        loaded: Loaded<A>,
    ) {
        if let Some(cache) = self.inner.cache.get() {
            cache.keep(stream, loaded);
        }
    }

    /// Drops a stream that turned out stale.
    pub(crate) fn forget(&self, stream: &StreamId) {
        if let Some(cache) = self.inner.cache.get() {
            cache.forget(stream);
        }
    }
}
