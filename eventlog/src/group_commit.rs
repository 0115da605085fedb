//! Group commit: the commits of many concurrent commands in one transaction.
//!
//! A command that commits through the log (`EventLog::commit_grouped`) hands a [`Commit`] (its appends,
//! its idempotency key, the streams it decided on without reading them) and a function that
//! renders its response to one committer task. The task takes every command queued at that
//! moment and, in one transaction (and one WAL flush) for the group:
//! 1. checks the versions of the streams the commands decided on unread (cached or assumed
//!    new, see [`crate::stream_cache`]); a command whose stream moved fails with
//!    [`CommitError::Conflict`] and is decided again by its caller on a fresh read;
//! 2. appends every remaining command's events (in the common case, where no stream moved,
//!    steps 1 and 2 are one statement: the insert checks the versions itself);
//! 3. stores each command's response with its idempotency key (claimed before, or new), or
//!    claims a new key for a command that answers later ([`KeyUse::Claim`]), and commits. When another request holds a new key, the group is rolled back, that command
//!    fails with [`CommitError::KeyTaken`] (its caller then replays the stored response) and
//!    the others are committed again without it.
//!
//! Up to [`GROUPS_IN_FLIGHT`] groups commit at once (one on SQLite). Each command keeps its own outcome: when anything fails before the commit (a stream that
//! conflicts in the append, a database error), the group is rolled back and each command is
//! committed on its own, so only the failing one fails. Durability is unchanged: a command
//! hears back only after the commit that holds its events.

use std::collections::HashSet;
use std::sync::Weak;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use crate::idempotency::{IdempotencyKey, NewRecord, StoredResponse};
use crate::store::{AppendError, Appended, Store, StreamAppend, StreamId};

/// Why a commit did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Another writer changed a stream the command decided on; nothing was written.
    #[error("a stream was modified concurrently")]
    Conflict,
    /// The idempotency key to claim in the commit is held by another request; nothing was
    /// written.
    #[error("the idempotency key is taken")]
    KeyTaken,
    #[error(transparent)]
    Append(AppendError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The committer task is gone (the gateway is stopping); nothing was written.
    #[error("the committer stopped")]
    Stopped,
    /// The commit of the command's group failed; whether it took effect is unknown, so the
    /// command must not be run again as if it had not.
    #[error("group commit failed: {0}")]
    Unknown(String),
}

impl From<AppendError> for CommitError {
    fn from(error: AppendError) -> Self {
        match error {
            AppendError::Conflict { .. } => Self::Conflict,
            AppendError::Database(error) => Self::Database(error),
            other => Self::Append(other),
        }
    }
}

/// What a commit wrote.
#[derive(Debug)]
pub struct Committed {
    pub appended: Appended,
    /// The time of the commit's events (the time of the commit when it wrote none).
    pub recorded_at: DateTime<Utc>,
}

impl Committed {
    /// What a commit that wrote `appended` reports.
    pub fn new(appended: Appended) -> Self {
        let recorded_at = appended
            .events
            .last()
            .map_or_else(Utc::now, |e| e.recorded_at);
        Self {
            appended,
            recorded_at,
        }
    }
}

/// Renders a command's response from its commit.
pub type Respond = Box<dyn Fn(&Committed) -> StoredResponse + Send + Sync>;

/// Most commands in one group.
pub const MAX_GROUP: usize = 128;

/// How a commit uses an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyUse {
    /// The request claimed the key before running (it is `in_flight`): store the response.
    Claimed(IdempotencyKey),
    /// Claim the key in the commit itself and store the response; when another request holds
    /// the key, nothing is written ([`CommitError::KeyTaken`]).
    Unclaimed(IdempotencyKey),
    /// Claim the key in the commit itself, `in_flight` until the given time, without a
    /// response (the command's first step; a later commit stores the response). When another
    /// request holds the key, nothing is written ([`CommitError::KeyTaken`]).
    Claim(IdempotencyKey, DateTime<Utc>),
}

impl KeyUse {
    pub fn key(&self) -> &IdempotencyKey {
        match self {
            Self::Claimed(key) | Self::Unclaimed(key) | Self::Claim(key, _) => key,
        }
    }

    /// The key that the commit claims, if not claimed before.
    fn to_claim(&self) -> Option<&IdempotencyKey> {
        match self {
            Self::Claimed(_) => None,
            Self::Unclaimed(key) | Self::Claim(key, _) => Some(key),
        }
    }

    /// The record the commit inserts for a key not claimed before (`response` is the
    /// command's).
    fn new_record<'a>(
        &'a self,
        response: &'a StoredResponse,
    ) -> Option<(&'a IdempotencyKey, NewRecord<'a>)> {
        match self {
            Self::Claimed(_) => None,
            Self::Unclaimed(key) => Some((key, NewRecord::Completed(response))),
            Self::Claim(key, until) => Some((
                key,
                NewRecord::InFlight {
                    locked_until: *until,
                },
            )),
        }
    }
}

/// What one command commits.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    pub batch: Vec<StreamAppend>,
    pub key: Option<KeyUse>,
    /// Streams the command decided on without reading them in this attempt and does not
    /// append to, with the version it took them at; checked in the commit's transaction.
    pub reads: Vec<(StreamId, u64)>,
}

/// One command waiting for the committer.
pub(crate) struct Job {
    pub commit: Commit,
    pub respond: Respond,
    pub reply: oneshot::Sender<Outcome>,
}

/// What a commit reports to its command.
pub type Outcome = Result<(Committed, StoredResponse), CommitError>;

/// The sending side, kept by the log; the task ends when the log is dropped.
type Queue = mpsc::UnboundedSender<Job>;

/// The committer: the queue of its task. Owned by the log; the task ends when it is dropped.
#[derive(Debug)]
pub struct Committer {
    queue: Queue,
}

/// Most groups committing at once on PostgreSQL: while one waits for its WAL flush, the next
/// one is already being written (measured at 64 clients: 1 → 7.1k, 2 → 7.4k, 4 → 6.6k
/// creates/s). SQLite has one writer, so there one group at a time, as large as possible.
/// A group forms only once the group before it has sent its `COMMIT` (or finished): the
/// commands that arrive while it writes its rows wait for the next group instead of
/// starting a group of one beside it, so groups stay large while the WAL flush still
/// overlaps the next group's writes.
pub const GROUPS_IN_FLIGHT: usize = 2;

/// The turn to form a group, held by the group that formed last until it sends its
/// `COMMIT` (taken out and dropped there) or ends (see [`GROUPS_IN_FLIGHT`]).
type Turn = Option<tokio::sync::OwnedSemaphorePermit>;

impl Committer {
    /// Starts a committer task for `store`; needs a Tokio runtime.
    pub fn start(store: &Store) -> Self {
        Self {
            queue: start(store.downgrade(), store.db().backend()),
        }
    }

    /// Commits through the committer task; in a transaction of its own if the task is gone.
    pub async fn commit(&self, store: &Store, commit: Commit, respond: Respond) -> Outcome {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            commit,
            respond,
            reply,
        };
        if let Err(mpsc::error::SendError(job)) = self.queue.send(job) {
            // Boxed: inline, this rare path's future (its transaction's statements) made
            // this one about ten times its size, and with it every command's future, which
            // is copied as it is handed down the layers of the router.
            return Box::pin(commit_one(store, &job.commit, &job.respond)).await;
        }
        answer.await.map_err(|_| CommitError::Stopped)?
    }
}

/// Starts the committer of `log`; returns its queue.
fn start(log: Weak<crate::store::Inner>, backend: crate::Backend) -> Queue {
    let (sender, mut receiver) = mpsc::unbounded_channel::<Job>();
    let in_flight = match backend {
        crate::Backend::Postgres => GROUPS_IN_FLIGHT,
        crate::Backend::Sqlite => 1,
    };
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(in_flight));
    let turns = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
    tokio::spawn(async move {
        loop {
            // A group forms once a slot is free and the group before it is committing, so
            // commands queue up meanwhile.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let Ok(turn) = turns.clone().acquire_owned().await else {
                break;
            };
            let Some(first) = receiver.recv().await else {
                break;
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match receiver.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            let Some(inner) = log.upgrade() else {
                break;
            };
            let log = Store::from_inner(inner);
            tokio::spawn(async move {
                commit_group(&log, group, Some(turn)).await;
                drop(slot);
            });
        }
    });
    sender
}

async fn commit_group(log: &Store, group: Vec<Job>, mut turn: Turn) {
    // A second command of the group with the same new key waits for the first one's outcome.
    let first_of_key: Vec<bool> = {
        let mut keys = HashSet::with_hasher(crate::FastHasher::default());
        group
            .iter()
            .map(|job| {
                job.commit
                    .key
                    .as_ref()
                    .and_then(KeyUse::to_claim)
                    .is_none_or(|key| keys.insert((&*key.tenant_id, &*key.scope, &*key.key)))
            })
            .collect()
    };
    let mut first_of_key = first_of_key.into_iter();
    let (mut group, repeated): (Vec<Job>, Vec<Job>) = group
        .into_iter()
        .partition(|_| first_of_key.next().unwrap_or(true));
    while group.len() > 1 {
        match together(log, group, &mut turn).await {
            GroupEnd::Done => group = Vec::new(),
            GroupEnd::Again(rest) => group = rest,
            GroupEnd::Alone(rest) => {
                group = rest;
                break;
            }
        }
    }
    // What is left goes on its own, so only a failing command fails.
    for job in group {
        let outcome = commit_one_in_turn(log, &job.commit, &job.respond, &mut turn).await;
        let _ = job.reply.send(outcome);
    }
    for job in repeated {
        let _ = job.reply.send(Err(CommitError::KeyTaken));
    }
}
/// How [`together`] ended.
enum GroupEnd {
    /// Every command was answered.
    Done,
    /// Commands whose keys were taken were answered and the group rolled back: these are
    /// the others, to commit together again.
    Again(Vec<Job>),
    /// The group failed before its commit and was rolled back: these commands (none of them
    /// answered) are to be committed one by one.
    Alone(Vec<Job>),
}

/// Commits the group in one transaction.
async fn together(log: &Store, mut group: Vec<Job>, turn: &mut Turn) -> GroupEnd {
    let Ok(mut tx) = log.db().begin().await else {
        return GroupEnd::Alone(group);
    };
    macro_rules! or_alone {
        ($result:expr) => {
            match $result {
                Ok(value) => value,
                Err(_) => {
                    let _ = tx.rollback().await;
                    return GroupEnd::Alone(group);
                }
            }
        };
    }

    // 1. and 2. Every command's events (split back per command afterwards), appended in one
    // statement with the check of the streams the commands decided on unread.
    let reads: Vec<(StreamId, u64)> = group
        .iter()
        .flat_map(|job| job.commit.reads.iter().cloned())
        .collect();
    let unless_moved = or_alone!(
        log.append_unless_moved_in(&mut tx, &appends(&group), &reads)
            .await
    );
    let appended = match unless_moved {
        Some(appended) => appended,
        None => {
            // Nothing was written: the commands whose streams moved are decided again by
            // their callers, and the others are appended.
            let stale: HashSet<StreamId, crate::FastHasher> =
                or_alone!(log.stale_reads_in(&mut tx, &reads).await)
                    .into_iter()
                    .collect();
            let (moved, rest): (Vec<Job>, Vec<Job>) = group.into_iter().partition(|job| {
                job.commit
                    .reads
                    .iter()
                    .any(|(stream, _)| stale.contains(stream))
            });
            group = rest;
            for job in moved {
                let _ = job.reply.send(Err(CommitError::Conflict));
            }
            or_alone!(log.append_in(&mut tx, &appends(&group)).await)
        }
    };
    let mut events = appended.events.into_iter();
    let shares: Vec<Committed> = group
        .iter()
        .map(|job| {
            let count = job.commit.batch.iter().map(|a| a.events.len()).sum();
            Committed::new(Appended {
                events: events.by_ref().take(count).collect(),
            })
        })
        .collect();

    // 3. Responses stored with their keys: claimed keys completed, new ones stored if no
    // other request holds them.
    let responses: Vec<StoredResponse> = group
        .iter()
        .zip(&shares)
        .map(|(job, committed)| (job.respond)(committed))
        .collect();
    let old_answers: Vec<(&IdempotencyKey, &StoredResponse)> = group
        .iter()
        .zip(&responses)
        .filter_map(|(job, response)| match &job.commit.key {
            Some(KeyUse::Claimed(key)) => Some((key, response)),
            _ => None,
        })
        .collect();
    let new_records: Vec<(&IdempotencyKey, NewRecord<'_>)> = group
        .iter()
        .zip(&responses)
        .filter_map(|(job, response)| job.commit.key.as_ref()?.new_record(response))
        .collect();
    or_alone!(
        log.complete_idempotency_many_in(&mut tx, &old_answers)
            .await
    );
    if !new_records.is_empty() {
        let taken = or_alone!(log.insert_new_many_in(&mut tx, &new_records).await);
        if !taken.is_empty() {
            // Keys that another request holds: their commands must write nothing.
            let _ = tx.rollback().await;
            let (taken, rest): (Vec<Job>, Vec<Job>) = group.into_iter().partition(|job| {
                job.commit
                    .key
                    .as_ref()
                    .and_then(KeyUse::to_claim)
                    .is_some_and(|key| taken.contains(&key.id()))
            });
            for job in taken {
                let _ = job.reply.send(Err(CommitError::KeyTaken));
            }
            return GroupEnd::Again(rest);
        }
    }
    turn.take();
    if let Err(error) = log
        .commit_appended(tx, shares.iter().flat_map(|c| &c.appended.events))
        .await
    {
        // Whether a failed commit took effect is unknown: no command may be run again.
        let error = CommitError::from(error);
        for job in group {
            let _ = job.reply.send(Err(clone_error(&error)));
        }
        return GroupEnd::Done;
    }
    for ((job, committed), response) in group.into_iter().zip(shares).zip(responses) {
        let _ = job.reply.send(Ok((committed, response)));
    }
    GroupEnd::Done
}

/// Every command's appends, in the group's order.
fn appends(group: &[Job]) -> Vec<&StreamAppend> {
    group
        .iter()
        .flat_map(|job| job.commit.batch.iter())
        .collect()
}

/// The same failure for every command of a failed group.
fn clone_error(error: &CommitError) -> CommitError {
    CommitError::Unknown(error.to_string())
}

/// One command's commit in a transaction of its own (the steps of the module documentation).
pub async fn commit_one(store: &Store, commit: &Commit, respond: &Respond) -> Outcome {
    commit_one_in_turn(store, commit, respond, &mut None).await
}

/// [`commit_one`], passing the turn to form a group on as it sends its `COMMIT`.
async fn commit_one_in_turn(
    store: &Store,
    commit: &Commit,
    respond: &Respond,
    turn: &mut Turn,
) -> Outcome {
    let Commit { batch, key, reads } = commit;
    if batch.is_empty() && key.is_none() && reads.is_empty() {
        let committed = Committed::new(Appended { events: Vec::new() });
        let response = respond(&committed);
        return Ok((committed, response));
    }
    let mut tx = store.db().begin().await?;
    let appended = match store.append_unless_moved_in(&mut tx, batch, reads).await {
        Ok(Some(appended)) => appended,
        Ok(None) => {
            tx.rollback().await?;
            return Err(CommitError::Conflict);
        }
        Err(error) => {
            tx.rollback().await?;
            return Err(error.into());
        }
    };
    let committed = Committed::new(appended);
    let response = respond(&committed);
    if let Some(KeyUse::Claimed(key)) = key {
        store
            .complete_idempotency_in(&mut tx, key, &response)
            .await?;
    } else if let Some(record) = key.as_ref().and_then(|k| k.new_record(&response))
        && !store
            .insert_new_many_in(&mut tx, &[record])
            .await?
            .is_empty()
    {
        tx.rollback().await?;
        return Err(CommitError::KeyTaken);
    }
    turn.take();
    store
        .commit_appended(tx, &committed.appended.events)
        .await?;
    Ok((committed, response))
}
