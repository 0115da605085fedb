//! Aggregates kept in memory between commands, so that a command does not read and fold a
//! stream it (or another request of this process) read or wrote a moment ago: an entity
//! type's schema, read by every write to its records; a session, read and appended to by every
//! message.
//!
//! The cache holds each stream's aggregate as folded at a version, with that version. A cached
//! aggregate is never trusted blindly: a command that decides on one has the stream's version
//! checked in the transaction that commits it (when it appends to the stream, the append's own
//! `(stream, sequence)` uniqueness checks it; otherwise a version check). A stale entry makes
//! that commit conflict; the entry is dropped and the command is decided again on a fresh
//! read. A refusal, or a command that changes nothing, decided on a cached aggregate is decided
//! again on a fresh read before it is answered.
//!
//! Aggregates enter the cache when their stream is read, and are replaced by the state a commit
//! of this process leaves. Which aggregate types are cached is set once per log
//! (`EventLog::cache_streams`), and so are the types whose aggregate is *handed out*: taken
//! out of the cache by the command that reads it instead of copied, and put back by that
//! command's commit. That is for streams nearly every reader appends to (a session: its copy
//! would grow with its conversation, twice per message); a concurrent reader of the same
//! stream meanwhile reads it from the log, which is always correct, because correctness never
//! rests on the cache. The cache weighs an aggregate by its stream's length (an
//! empty stream counts as one) and holds at most a fixed weight; when full, it drops a random
//! half of its entries. Streams longer than [`MAX_CACHED_STREAM`] events are not kept.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;

use crate::aggregate::Loaded;
use crate::cursor::Cursor;
use crate::store::StreamId;

/// The longest stream the cache keeps.
pub const MAX_CACHED_STREAM: u64 = 1_000;

/// An aggregate as folded at a version.
#[derive(Clone)]
struct Entry {
    state: Arc<dyn Any + Send + Sync>,
    version: u64,
    cursor: Option<Cursor>,
    created_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
}

impl Entry {
    fn weight(&self) -> usize {
        self.version.max(1) as usize
    }
}

/// Aggregates kept in memory (see the module documentation).
pub struct StreamCache {
    /// A handful of names, compared in turn: cheaper than hashing the name at every lookup.
    aggregate_types: Box<[String]>,
    /// Types whose aggregate is taken out of the cache by its reader, not copied.
    handed_out: Box<[String]>,
    /// Most weight held.
    capacity: usize,
    entries: Mutex<Entries>,
}

impl std::fmt::Debug for StreamCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamCache")
            .field("aggregate_types", &self.aggregate_types)
            .field("handed_out", &self.handed_out)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Entries {
    streams: HashMap<StreamId, Entry>,
    weight: usize,
}

impl StreamCache {
    /// Whether streams like `stream` are cached.
    pub fn caches(&self, stream: &StreamId) -> bool {
        self.aggregate_types.contains(&stream.aggregate_type)
    }

    fn get(&self, stream: &StreamId) -> Option<Entry> {
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

    /// Takes a stream's entry out of the cache.
    fn take(&self, stream: &StreamId) -> Option<Entry> {
        if !self.caches(stream) {
            return None;
        }
        let mut entries = self.entries.lock().expect("stream cache lock poisoned");
        let entry = entries.streams.remove(stream)?;
        entries.weight -= entry.weight();
        Some(entry)
    }

    /// Keeps an aggregate of a cached type (the caller checks [`StreamCache::caches`]).
    fn put(&self, stream: &StreamId, entry: Entry) {
        let mut entries = self.entries.lock().expect("stream cache lock poisoned");
        if let Some(old) = entries.streams.remove(stream) {
            entries.weight -= old.weight();
        }
        if entry.version > MAX_CACHED_STREAM {
            return;
        }
        if entries.weight + entry.weight() > self.capacity {
            let mut keep = false;
            entries.streams.retain(|_, _| {
                keep = !keep;
                keep
            });
            entries.weight = entries.streams.values().map(Entry::weight).sum();
        }
        entries.weight += entry.weight();
        entries.streams.insert(stream.clone(), entry);
    }

    /// Drops a stream that turned out stale.
    pub fn forget(&self, stream: &StreamId) {
        let mut entries = self.entries.lock().expect("stream cache lock poisoned");
        if let Some(old) = entries.streams.remove(stream) {
            entries.weight -= old.weight();
        }
    }
}

impl StreamCache {
    /// A cache of aggregates of `aggregate_types`, weighing up to `capacity` events in all;
    /// those of `handed_out` (among them) are handed to their reader instead of copied.
    pub fn new(aggregate_types: &[&str], handed_out: &[&str], capacity: usize) -> Self {
        StreamCache {
            aggregate_types: aggregate_types.iter().map(|t| t.to_string()).collect(),
            handed_out: handed_out.iter().map(|t| t.to_string()).collect(),
            capacity: capacity.max(1),
            entries: Mutex::new(Entries::default()),
        }
    }

    /// Whether the cache holds `stream` now.
    pub fn holds(&self, stream: &StreamId) -> bool {
        self.get(stream).is_some()
    }

    /// The stream's cached aggregate, if it is cached: taken out of the cache for a handed-out
    /// type, a copy otherwise.
    pub fn cached<A: Aggregate + Clone + 'static>(&self, stream: &StreamId) -> Option<Loaded<A>> {
        let entry = if self.handed_out.contains(&stream.aggregate_type) {
            self.take(stream)?
        } else {
            self.get(stream)?
        };
        let state = entry.state.downcast::<A>().ok()?;
        // Copied only while someone else holds the state too (the cache, for a type that is
        // not handed out).
        let aggregate = Arc::try_unwrap(state).unwrap_or_else(|shared| (*shared).clone());
        Some(Loaded {
            aggregate,
            version: entry.version,
            cursor: entry.cursor,
            created_at: entry.created_at,
            updated_at: entry.updated_at,
        })
    }

    /// Keeps a stream's aggregate as just read or committed, if streams of its type are
    /// cached.
    pub fn keep<A: Aggregate + Clone + 'static>(&self, stream: &StreamId, loaded: Loaded<A>) {
        if self.caches(stream) {
            self.put(
                stream,
                Entry {
                    state: Arc::new(loaded.aggregate),
                    version: loaded.version,
                    cursor: loaded.cursor,
                    created_at: loaded.created_at,
                    updated_at: loaded.updated_at,
                },
            );
        }
    }
}
