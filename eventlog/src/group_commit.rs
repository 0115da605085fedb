//! Group commit: the commits of many concurrent commands in one transaction.
//!
//! A command that commits through [`EventLog::commit_grouped`] hands a [`Commit`] (its appends,
//! its idempotency key, the streams it decided on without reading them) and a function that
//! renders its response to one committer task. The task takes every command queued at that
//! moment and, in one transaction (and one WAL flush) for the group:
//! 1. checks the versions of the streams the commands decided on unread (cached or assumed
//!    new, see [`crate::stream_cache`]); a command whose stream moved fails with
//!    [`CommitError::Conflict`] and is decided again by its caller on a fresh read;
//! 2. claims the idempotency keys not claimed yet; a command whose key another request holds
//!    writes nothing and fails with [`CommitError::KeyTaken`] (its caller then replays the
//!    stored response);
//! 3. appends every remaining command's events;
//! 4. stores each command's response with its key, and commits.
//!
//! Each command keeps its own outcome: when anything fails before the commit (a stream that
//! conflicts in the append, a database error), the group is rolled back and each command is
//! committed on its own, so only the failing one fails. Durability is unchanged: a command
//! hears back only after the commit that holds its events.

use std::collections::HashSet;
use std::sync::Weak;

use tokio::sync::{mpsc, oneshot};

use crate::idempotency::{IdempotencyKey, StoredResponse};
use crate::store::{Appended, EventLog, StreamAppend, StreamId};
use crate::unit_of_work::{CommitError, Committed};

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
}

impl KeyUse {
    pub fn key(&self) -> &IdempotencyKey {
        match self {
            Self::Claimed(key) | Self::Unclaimed(key) => key,
        }
    }

    fn to_claim(&self) -> Option<&IdempotencyKey> {
        match self {
            Self::Claimed(_) => None,
            Self::Unclaimed(key) => Some(key),
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

type Outcome = Result<(Committed, StoredResponse), CommitError>;

/// The sending side, kept by the log; the task ends when the log is dropped.
pub(crate) type Queue = mpsc::UnboundedSender<Job>;

/// Starts the committer of `log`; returns its queue.
pub(crate) fn start(log: Weak<crate::store::Inner>) -> Queue {
    let (sender, mut receiver) = mpsc::unbounded_channel::<Job>();
    tokio::spawn(async move {
        while let Some(first) = receiver.recv().await {
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
            let log = EventLog::from_inner(inner);
            commit_group(&log, group).await;
        }
    });
    sender
}

async fn commit_group(log: &EventLog, group: Vec<Job>) {
    let group = if group.len() == 1 {
        group
    } else {
        match together(log, group).await {
            Ok(()) => return,
            Err(rest) => rest,
        }
    };
    // Each command on its own, so only a failing one fails.
    for job in group {
        let outcome = log.commit_one(&job.commit, &job.respond).await;
        let _ = job.reply.send(outcome);
    }
}

/// Commits the group in one transaction. Returns the commands still to commit when the
/// group failed before its commit (rolled back; none of them has been answered).
async fn together(log: &EventLog, mut group: Vec<Job>) -> Result<(), Vec<Job>> {
    let Ok(mut tx) = log.db().begin().await else {
        return Err(group);
    };
    macro_rules! or_alone {
        ($result:expr) => {
            match $result {
                Ok(value) => value,
                Err(_) => {
                    let _ = tx.rollback().await;
                    return Err(group);
                }
            }
        };
    }

    // 1. Commands decided on streams that moved since are decided again.
    let reads: Vec<(StreamId, u64)> = group
        .iter()
        .flat_map(|job| job.commit.reads.iter().cloned())
        .collect();
    if !reads.is_empty() {
        let stale: HashSet<StreamId> = or_alone!(log.stale_reads_in(&mut tx, &reads).await)
            .into_iter()
            .collect();
        if !stale.is_empty() {
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
        }
    }

    // 2. Keys not claimed yet are claimed; a command whose key is taken writes nothing.
    let wanted: Vec<&IdempotencyKey> = group
        .iter()
        .filter_map(|job| job.commit.key.as_ref().and_then(KeyUse::to_claim))
        .collect();
    if !wanted.is_empty() {
        let mut claimed = or_alone!(log.claim_many_in(&mut tx, &wanted).await);
        let (taken, rest): (Vec<Job>, Vec<Job>) = group.into_iter().partition(|job| {
            job.commit
                .key
                .as_ref()
                .and_then(KeyUse::to_claim)
                // The first command of the group with a key keeps it; a second one is taken.
                .is_some_and(|key| !claimed.remove(&(key.tenant_id.clone(), key.key.clone())))
        });
        group = rest;
        for job in taken {
            let _ = job.reply.send(Err(CommitError::KeyTaken));
        }
    }

    // 3. Every remaining command's events, split back per command afterwards.
    let batch: Vec<StreamAppend> = group
        .iter()
        .flat_map(|job| job.commit.batch.iter().cloned())
        .collect();
    let appended = if batch.is_empty() {
        Appended { events: Vec::new() }
    } else {
        or_alone!(log.append_in(&mut tx, &batch).await)
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

    // 4. Responses stored with their keys, then one commit.
    let responses: Vec<StoredResponse> = group
        .iter()
        .zip(&shares)
        .map(|(job, committed)| (job.respond)(committed))
        .collect();
    let completions: Vec<(&IdempotencyKey, &StoredResponse)> = group
        .iter()
        .zip(&responses)
        .filter_map(|(job, response)| job.commit.key.as_ref().map(|k| (k.key(), response)))
        .collect();
    or_alone!(
        log.complete_idempotency_many_in(&mut tx, &completions)
            .await
    );
    if let Err(error) = tx.commit().await {
        // Whether a failed commit took effect is unknown: no command may be run again.
        let error = CommitError::from(error);
        for job in group {
            let _ = job.reply.send(Err(clone_error(&error)));
        }
        return Ok(());
    }
    if let Some(cursor) = shares.iter().filter_map(|c| c.appended.last_cursor()).max() {
        log.notify_appended(cursor);
    }
    for ((job, committed), response) in group.into_iter().zip(shares).zip(responses) {
        let _ = job.reply.send(Ok((committed, response)));
    }
    Ok(())
}

/// The same failure for every command of a failed group.
fn clone_error(error: &CommitError) -> CommitError {
    CommitError::Database(sqlx::Error::Protocol(format!(
        "group commit failed: {error}"
    )))
}

impl EventLog {
    /// Commits through the committer task when the log has one, else in a transaction of its
    /// own.
    pub async fn commit_grouped(&self, commit: Commit, respond: Respond) -> Outcome {
        let Some(queue) = self.group_queue() else {
            return self.commit_one(&commit, &respond).await;
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            commit,
            respond,
            reply,
        };
        if let Err(mpsc::error::SendError(job)) = queue.send(job) {
            return self.commit_one(&job.commit, &job.respond).await;
        }
        answer.await.map_err(|_| {
            CommitError::Database(sqlx::Error::Protocol("the committer stopped".into()))
        })?
    }

    /// One command's commit in a transaction of its own (the steps of the module
    /// documentation).
    pub(crate) async fn commit_one(&self, commit: &Commit, respond: &Respond) -> Outcome {
        let Commit { batch, key, reads } = commit;
        if batch.is_empty() && key.is_none() && reads.is_empty() {
            let committed = Committed::new(Appended { events: Vec::new() });
            let response = respond(&committed);
            return Ok((committed, response));
        }
        let mut tx = self.db().begin().await?;
        if !reads.is_empty() && !self.stale_reads_in(&mut tx, reads).await?.is_empty() {
            tx.rollback().await?;
            return Err(CommitError::Conflict);
        }
        if let Some(wanted) = key.as_ref().and_then(KeyUse::to_claim)
            && self.claim_many_in(&mut tx, &[wanted]).await?.is_empty()
        {
            tx.rollback().await?;
            return Err(CommitError::KeyTaken);
        }
        let appended = if batch.is_empty() {
            Appended { events: Vec::new() }
        } else {
            match self.append_in(&mut tx, batch).await {
                Ok(appended) => appended,
                Err(error) => {
                    tx.rollback().await?;
                    return Err(error.into());
                }
            }
        };
        let committed = Committed::new(appended);
        let response = respond(&committed);
        if let Some(key) = key {
            self.complete_idempotency_in(&mut tx, key.key(), &response)
                .await?;
        }
        tx.commit().await?;
        if let Some(cursor) = committed.appended.last_cursor() {
            self.notify_appended(cursor);
        }
        Ok((committed, response))
    }
}
