//! Streams kept in memory between commands, so that a command does not read a stream it (or
//! another request of this process) read or wrote a moment ago: an entity type's schema, read
//! by every write to its records; a session, read and appended to by every message.
//!
//! A cached stream is never trusted blindly: a command that decides on a cached stream has the
//! stream's version checked in the transaction that commits it (when it appends to the stream,
//! the append's own `(stream, sequence)` uniqueness checks it; otherwise a version check). A
//! stale entry makes that commit conflict; the entry is dropped and the command is decided
//! again on a fresh read. A refusal, or a command that changes nothing, decided on a cached
//! stream is decided again on a fresh read before it is answered.
//!
//! Streams enter the cache when they are read, and are extended with the events a commit of
//! this process appends to them. Which aggregate types are cached is set once per log
//! ([`EventLog::cache_streams`]). The cache holds at most a fixed number of events (an empty
//! stream counts as one); when full, it drops a random half of its streams. Streams longer
//! than [`MAX_CACHED_STREAM`] events are not kept.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::store::{EventLog, RecordedEvent, StreamId};

/// A stream's events as last read or written, shared (a commit extends a history without
/// copying its events).
pub type History = Arc<Vec<Arc<RecordedEvent>>>;

/// A history of freshly read events.
pub(crate) fn history_of(events: Vec<RecordedEvent>) -> History {
    Arc::new(events.into_iter().map(Arc::new).collect())
}

/// The longest stream the cache keeps.
pub const MAX_CACHED_STREAM: usize = 1_000;

#[derive(Debug)]
pub(crate) struct StreamCache {
    aggregate_types: HashSet<String>,
    /// Most events held.
    capacity: usize,
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    streams: HashMap<StreamId, History>,
    /// Events held (each stream counts at least one).
    weight: usize,
}

fn weight(history: &History) -> usize {
    history.len().max(1)
}

impl StreamCache {
    fn caches(&self, stream: &StreamId) -> bool {
        self.aggregate_types.contains(&stream.aggregate_type)
    }

    fn get(&self, stream: &StreamId) -> Option<History> {
        if !self.caches(stream) {
            return None;
        }
        self.entries
            .lock()
            .expect("stream cache lock poisoned")
            .streams
            .get(stream)
            .cloned()
    }

    /// Keeps a stream of a cached type (the caller checks [`StreamCache::caches`]).
    fn put(&self, stream: &StreamId, history: History) {
        let mut entries = self.entries.lock().expect("stream cache lock poisoned");
        if let Some(old) = entries.streams.remove(stream) {
            entries.weight -= weight(&old);
        }
        if history.len() > MAX_CACHED_STREAM {
            return;
        }
        if entries.weight + weight(&history) > self.capacity {
            let mut keep = false;
            entries.streams.retain(|_, _| {
                keep = !keep;
                keep
            });
            entries.weight = entries.streams.values().map(weight).sum();
        }
        entries.weight += weight(&history);
        entries.streams.insert(stream.clone(), history);
    }

    fn forget(&self, stream: &StreamId) {
        let mut entries = self.entries.lock().expect("stream cache lock poisoned");
        if let Some(old) = entries.streams.remove(stream) {
            entries.weight -= weight(&old);
        }
    }
}

impl EventLog {
    /// Keeps streams of `aggregate_types`, up to `capacity` events in all, in memory for
    /// commands that may decide on cached state (see the module documentation). Set once;
    /// later calls are ignored.
    pub fn cache_streams(&self, aggregate_types: &[&str], capacity: usize) {
        let _ = self.stream_cache().set(StreamCache {
            aggregate_types: aggregate_types.iter().map(|t| t.to_string()).collect(),
            capacity: capacity.max(1),
            entries: Mutex::new(Entries::default()),
        });
    }

    /// Whether streams like `stream` are cached.
    pub(crate) fn caches(&self, stream: &StreamId) -> bool {
        self.stream_cache().get().is_some_and(|c| c.caches(stream))
    }

    /// The stream's cached history, if it is cached.
    pub(crate) fn cached(&self, stream: &StreamId) -> Option<History> {
        self.stream_cache().get()?.get(stream)
    }

    /// Remembers a stream's history as just read, if streams of its type are cached.
    pub(crate) fn remember(&self, stream: &StreamId, history: History) {
        if let Some(cache) = self.stream_cache().get()
            && cache.caches(stream)
        {
            cache.put(stream, history);
        }
    }

    /// Remembers `history` followed by the events of `stream` among `appended` (a commit of
    /// this process that wrote after `history`).
    pub(crate) fn remember_appended(
        &self,
        stream: &StreamId,
        history: &[Arc<RecordedEvent>],
        appended: &[RecordedEvent],
    ) {
        if !self.caches(stream) {
            return;
        }
        let mut extended = Vec::with_capacity(history.len() + appended.len());
        extended.extend_from_slice(history);
        extended.extend(
            appended
                .iter()
                .filter(|e| {
                    e.aggregate_id == stream.aggregate_id
                        && e.aggregate_type == stream.aggregate_type
                        && e.tenant_id.as_str() == stream.tenant_id.as_str()
                })
                .map(|e| Arc::new(e.clone())),
        );
        self.remember(stream, Arc::new(extended));
    }

    /// Drops a stream that turned out stale.
    pub(crate) fn forget(&self, stream: &StreamId) {
        if let Some(cache) = self.stream_cache().get() {
            cache.forget(stream);
        }
    }
}
