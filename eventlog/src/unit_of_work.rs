//! Several commands on several aggregates, committed together or not at all.
//!
//! A [`UnitOfWork`] loads each stream it touches once, runs commands on the loaded state (a
//! later command sees an earlier one's events, also on the same stream), and commits every
//! stream's new events in one append, each with the version it was loaded at. When another
//! writer changed any of those streams in between, the commit reports
//! [`CommitError::Conflict`] and nothing is written: the caller decides everything again on
//! a fresh unit of work.
//!
//! A command that fails leaves the unit of work in an unspecified state: drop it.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use domain::metadata::EventMetadata;

use crate::aggregate::{CommandError, Loaded, fold};
use crate::cursor::Cursor;
use crate::group_commit::{Commit, KeyUse};
pub use crate::group_commit::{CommitError, Committed};
use crate::idempotency::StoredResponse;
use crate::log::EventLog;
use crate::store::{AppendError, NewEvent, RecordedEvent, StreamAppend, StreamId};

/// One stream as a unit of work holds it.
pub struct Staged<A: Aggregate> {
    /// The state after the loaded events and the staged ones.
    pub aggregate: A,
    /// The stream's version when it was loaded.
    pub loaded_version: u64,
    /// Events decided in this unit of work, not yet appended.
    pub pending: Vec<A::Event>,
    /// Cursor, first and last time of the loaded events.
    pub cursor: Option<Cursor>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl<A: Aggregate> Staged<A> {
    /// The stream's version with the staged events.
    pub fn version(&self) -> u64 {
        self.loaded_version + self.pending.len() as u64
    }
}

trait AnyStaged: Send + Sync {
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn new_events(&self) -> Result<(u64, Vec<NewEvent>), serde_json::Error>;
    /// Puts the state a commit left in the stream cache.
    fn remember_committed(
        self: Box<Self>,
        log: &EventLog,
        stream: &StreamId,
        appended: &[Arc<RecordedEvent>],
    );
}

impl<A: Aggregate + Clone + 'static> AnyStaged for Staged<A> {
    fn remember_committed(
        self: Box<Self>,
        log: &EventLog,
        stream: &StreamId,
        appended: &[Arc<RecordedEvent>],
    ) {
        let mine: Vec<&RecordedEvent> = appended
            .iter()
            .map(|event| &**event)
            .filter(|e| {
                e.aggregate_id == stream.aggregate_id
                    && e.aggregate_type == stream.aggregate_type
                    && e.tenant_id.as_str() == stream.tenant_id.as_str()
            })
            .collect();
        let (Some(first), Some(last)) = (mine.first(), mine.last()) else {
            return;
        };
        if mine.len() != self.pending.len() || last.sequence as u64 != self.version() {
            return;
        }
        let version = self.version();
        log.keep(
            stream,
            Loaded {
                aggregate: self.aggregate,
                version,
                cursor: Some(last.cursor),
                created_at: self.created_at.or(Some(first.recorded_at)),
                updated_at: Some(last.recorded_at),
            },
        );
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn new_events(&self) -> Result<(u64, Vec<NewEvent>), serde_json::Error> {
        let events = self
            .pending
            .iter()
            .map(NewEvent::from_domain)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((self.loaded_version, events))
    }
}

/// Most streams read by one prefetch query (two bound values each).
const PREFETCH_CHUNK: usize = 500;

/// Commands on several streams, committed in one transaction.
///
/// A speculative unit of work ([`UnitOfWork::speculative`]) may decide without reading: on
/// cached streams (see [`crate::stream_cache`]) and on streams its caller expects to be new
/// ([`UnitOfWork::assume_new`]). Its commit checks those streams' versions (by the append for
/// streams it writes, by a version check for the others), so a wrong guess is a
/// [`CommitError::Conflict`]. A refusal decided on such state may be wrong as well: when
/// [`UnitOfWork::unverified`] is true, decide again on a non-speculative unit of work before
/// answering with it.
pub struct UnitOfWork<'a> {
    log: &'a EventLog,
    streams: BTreeMap<StreamId, Box<dyn AnyStaged>>,
    /// Streams read ahead by [`UnitOfWork::prefetch`] (or assumed new), not yet staged.
    prefetched: HashMap<StreamId, Vec<RecordedEvent>, crate::FastHasher>,
    speculative: bool,
    /// Streams taken from the cache or assumed new instead of read.
    unread: HashSet<StreamId, crate::FastHasher>,
}

impl<'a> UnitOfWork<'a> {
    pub fn new(log: &'a EventLog) -> Self {
        Self {
            log,
            streams: BTreeMap::new(),
            prefetched: HashMap::default(),
            speculative: false,
            unread: HashSet::default(),
        }
    }

    /// A unit of work that decides on cached streams and on streams assumed new.
    pub fn speculative(log: &'a EventLog) -> Self {
        Self {
            speculative: true,
            ..Self::new(log)
        }
    }

    /// Whether anything was decided on state that was not read (a refusal then needs a
    /// second opinion on read state).
    pub fn unverified(&self) -> bool {
        !self.unread.is_empty()
    }

    /// Takes `streams` as empty without reading them (speculative units of work only; the
    /// others read them when used). For streams that should not exist yet, such as a record
    /// created under a fresh id.
    pub fn assume_new(&mut self, streams: &[StreamId]) {
        if !self.speculative {
            return;
        }
        for stream in streams {
            if !self.streams.contains_key(stream) && !self.prefetched.contains_key(stream) {
                self.prefetched.insert(stream.clone(), Vec::new());
                self.unread.insert(stream.clone());
            }
        }
    }

    /// The stream's cached aggregate, for a speculative unit of work.
    fn cached_state<A: Aggregate + Clone + 'static>(
        &mut self,
        stream: &StreamId,
    ) -> Option<Loaded<A>> {
        if !self.speculative {
            return None;
        }
        let loaded = self.log.cached::<A>(stream)?;
        self.unread.insert(stream.clone());
        Some(loaded)
    }

    /// Reads the streams (of one tenant) that the coming commands will need, in one query
    /// instead of one per stream. Streams already read, and cached ones (speculative units
    /// of work), are skipped.
    pub async fn prefetch(&mut self, streams: &[StreamId]) -> Result<(), sqlx::Error> {
        let mut wanted: Vec<StreamId> = Vec::with_capacity(streams.len());
        for stream in streams {
            if self.streams.contains_key(stream) || self.prefetched.contains_key(stream) {
                continue;
            }
            // A cached stream is taken from the cache when it is staged (or read then, if it
            // was dropped meanwhile).
            if !(self.speculative && self.log.is_cached(stream)) {
                wanted.push(stream.clone());
            }
        }
        wanted.sort();
        wanted.dedup();
        for chunk in wanted.chunks(PREFETCH_CHUNK) {
            let mut read: HashMap<StreamId, Vec<_>, crate::FastHasher> =
                chunk.iter().map(|s| (s.clone(), Vec::new())).collect();
            for event in self.log.load_many(chunk).await? {
                let stream = StreamId::new(
                    chunk[0].tenant_id.clone(),
                    event.aggregate_type.clone(),
                    event.aggregate_id.clone(),
                );
                if let Some(history) = read.get_mut(&stream) {
                    history.push(event);
                }
            }
            self.prefetched.extend(read);
        }
        Ok(())
    }

    /// The stream's state in this unit of work, loading it on first use.
    pub async fn state<A>(
        &mut self,
        stream: &StreamId,
    ) -> Result<&Staged<A>, CommandError<A::Error>>
    where
        A: Aggregate + Clone + 'static,
    {
        Ok(&*self.staged_mut::<A>(stream).await?)
    }

    async fn staged_mut<A>(
        &mut self,
        stream: &StreamId,
    ) -> Result<&mut Staged<A>, CommandError<A::Error>>
    where
        A: Aggregate + Clone + 'static,
    {
        if !self.streams.contains_key(stream) {
            let loaded = match self.prefetched.remove(stream) {
                Some(history) => {
                    let loaded = fold::<A>(&history)?;
                    if !self.unread.contains(stream) {
                        self.log.remember(stream, &loaded);
                    }
                    loaded
                }
                None => match self.cached_state::<A>(stream) {
                    Some(loaded) => loaded,
                    None => self.log.load_aggregate::<A>(stream).await?,
                },
            };
            let Loaded {
                aggregate,
                version,
                cursor,
                created_at,
                updated_at,
            } = loaded;
            let staged = Staged {
                aggregate,
                loaded_version: version,
                pending: Vec::new(),
                cursor,
                created_at,
                updated_at,
            };
            self.streams.insert(stream.clone(), Box::new(staged));
        }
        let staged = self
            .streams
            .get_mut(stream)
            .expect("inserted above")
            .as_any_mut()
            .downcast_mut::<Staged<A>>()
            .expect("a stream id names one aggregate type");
        Ok(staged)
    }

    /// Runs `command` on the stream's staged state; its events are staged for the commit.
    pub async fn execute<A>(
        &mut self,
        stream: &StreamId,
        command: A::Command,
        services: &A::Services,
    ) -> Result<&Staged<A>, CommandError<A::Error>>
    where
        A: Aggregate + Clone + 'static,
    {
        let staged = self.staged_mut::<A>(stream).await?;
        let sink = EventSink::default();
        staged
            .aggregate
            .handle(command, services, &sink)
            .await
            .map_err(CommandError::Rejected)?;
        staged.pending.extend(sink.collect().await);
        Ok(&*staged)
    }

    /// Appends every staged event in one transaction, and, with an idempotency key, stores
    /// the response that `respond` renders from the commit in the same transaction. With
    /// group commit started, that transaction may hold other commands' appends too.
    pub async fn commit(
        self,
        metadata: &EventMetadata,
        key: Option<KeyUse>,
        respond: impl Fn(&Committed) -> StoredResponse + Send + Sync + 'static,
    ) -> Result<(Committed, StoredResponse), CommitError> {
        let mut batch = Vec::new();
        let mut reads = Vec::new();
        for (stream, staged) in &self.streams {
            let (expected_version, events) = staged
                .new_events()
                .map_err(|e| CommitError::Append(AppendError::from(e)))?;
            if !events.is_empty() {
                batch.push(StreamAppend {
                    stream: stream.clone(),
                    expected_version,
                    events,
                    metadata: metadata.clone(),
                });
            } else if self.unread.contains(stream) {
                reads.push((stream.clone(), expected_version));
            }
        }
        let commit = Commit { batch, key, reads };
        let result = self.log.commit_grouped(commit, Box::new(respond)).await;
        match &result {
            Ok((committed, _)) => {
                // The cache follows what this commit wrote.
                for (stream, staged) in self.streams {
                    if self.log.caches(&stream) {
                        staged.remember_committed(self.log, &stream, &committed.appended.events);
                    }
                }
            }
            // Whatever was cached may be what conflicted.
            Err(CommitError::Conflict) => {
                for stream in &self.unread {
                    self.log.forget(stream);
                }
            }
            Err(_) => {}
        }
        result
    }
}
