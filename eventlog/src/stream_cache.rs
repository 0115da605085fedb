//! Streams kept in memory between commands, so that a command does not read a stream that
//! rarely changes (an entity type's schema, read by every write to its records) from the
//! database each time.
//!
//! A cached stream is never trusted blindly: a unit of work that decides on a cached stream
//! has the stream's version checked in the transaction that commits it (when it appends to
//! the stream, the append's own `(stream, sequence)` uniqueness checks it). A stale entry
//! makes that commit conflict; the entry is dropped and the command is decided again on a
//! fresh read.
//!
//! Which aggregate types are cached is set once per log ([`EventLog::cache_streams`]). The
//! cache holds at most a fixed number of streams; when full, it drops a random half.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::store::{EventLog, RecordedEvent, StreamId};

/// A stream's events as last read or written.
pub type History = Arc<Vec<RecordedEvent>>;

#[derive(Debug)]
pub(crate) struct StreamCache {
    aggregate_types: HashSet<String>,
    capacity: usize,
    entries: Mutex<HashMap<StreamId, History>>,
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
            .get(stream)
            .cloned()
    }

    /// Keeps a stream of a cached type (the caller checks [`StreamCache::caches`]).
    fn put(&self, stream: &StreamId, history: History) {
        if history.is_empty() {
            return;
        }
        let mut entries = self.entries.lock().expect("stream cache lock poisoned");
        if entries.len() >= self.capacity && !entries.contains_key(stream) {
            let mut keep = false;
            entries.retain(|_, _| {
                keep = !keep;
                keep
            });
        }
        entries.insert(stream.clone(), history);
    }

    fn forget(&self, stream: &StreamId) {
        self.entries
            .lock()
            .expect("stream cache lock poisoned")
            .remove(stream);
    }
}

impl EventLog {
    /// Keeps up to `capacity` streams of `aggregate_types` in memory for units of work that
    /// may decide on cached state (see the module documentation). Set once; later calls are
    /// ignored.
    pub fn cache_streams(&self, aggregate_types: &[&str], capacity: usize) {
        let _ = self.stream_cache().set(StreamCache {
            aggregate_types: aggregate_types.iter().map(|t| t.to_string()).collect(),
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        });
    }

    /// The stream's cached history, if it is cached.
    pub(crate) fn cached(&self, stream: &StreamId) -> Option<History> {
        self.stream_cache().get()?.get(stream)
    }

    /// Remembers a stream's history as just read, if streams of its type are cached.
    pub(crate) fn remember(&self, stream: &StreamId, history: &[RecordedEvent]) {
        if let Some(cache) = self.stream_cache().get()
            && cache.caches(stream)
        {
            cache.put(stream, Arc::new(history.to_vec()));
        }
    }

    /// Drops a stream that turned out stale.
    pub(crate) fn forget(&self, stream: &StreamId) {
        if let Some(cache) = self.stream_cache().get() {
            cache.forget(stream);
        }
    }
}
