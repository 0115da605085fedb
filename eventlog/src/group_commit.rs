//! Group commit: the appends of many concurrent commands in one transaction.
//!
//! A command that commits through [`EventLog::commit_grouped`] hands its appends, its
//! idempotency key and a function that renders its response to one committer task. The task
//! takes every command queued at that moment, appends all their events with one statement set,
//! stores each command's response with its key, and commits once: one transaction (and one
//! WAL flush) for the group instead of one per command. Each command still keeps its own
//! outcome: when any stream of the group conflicts, the group is rolled back and each command
//! is committed on its own, so only the conflicting one fails (and is decided again by its
//! caller). Durability is unchanged: a command hears back only after the commit that holds its
//! events.

use std::sync::Weak;

use tokio::sync::{mpsc, oneshot};

use crate::idempotency::{IdempotencyKey, StoredResponse};
use crate::store::{AppendError, Appended, EventLog, StreamAppend};
use crate::unit_of_work::{CommitError, Committed};

/// Renders a command's response from its commit.
pub type Respond = Box<dyn FnOnce(&Committed) -> StoredResponse + Send>;

/// Most commands in one group.
pub const MAX_GROUP: usize = 128;

/// One command waiting for the committer.
pub(crate) struct Job {
    pub batch: Vec<StreamAppend>,
    pub key: Option<IdempotencyKey>,
    pub respond: Respond,
    pub reply: oneshot::Sender<Result<(Committed, StoredResponse), CommitError>>,
}

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
    if group.len() == 1 {
        for job in group {
            let result = log
                .commit_one(&job.batch, job.key.as_ref(), job.respond)
                .await;
            let _ = job.reply.send(result);
        }
        return;
    }
    let batch: Vec<StreamAppend> = group.iter().flat_map(|j| j.batch.iter().cloned()).collect();
    let counts: Vec<usize> = group
        .iter()
        .map(|j| j.batch.iter().map(|a| a.events.len()).sum())
        .collect();
    match try_together(log, &batch, &counts).await {
        Ok(Some(appended)) => {
            // Render and store every response, then commit once.
            let outcome = finish_together(log, group, appended).await;
            if let Err((jobs, error)) = outcome {
                for reply in jobs {
                    let _ = reply.send(Err(clone_error(&error)));
                }
            }
        }
        Ok(None) => {
            // A conflict somewhere: each command on its own, so only the conflicting ones fail.
            for job in group {
                let result = log
                    .commit_one(&job.batch, job.key.as_ref(), job.respond)
                    .await;
                let _ = job.reply.send(result);
            }
        }
        Err(error) => {
            for job in group {
                let _ = job.reply.send(Err(clone_error(&error)));
            }
        }
    }
}

/// The group's transaction with every job's events appended, and each job's share of them;
/// `None` when a stream conflicted (the transaction is rolled back).
async fn try_together(
    log: &EventLog,
    batch: &[StreamAppend],
    counts: &[usize],
) -> Result<Option<(crate::Tx, Vec<Appended>)>, CommitError> {
    let mut tx = log.db().begin().await?;
    let appended = match log.append_in(&mut tx, batch).await {
        Ok(appended) => appended,
        Err(AppendError::Conflict { .. }) => {
            tx.rollback().await?;
            return Ok(None);
        }
        Err(error) => {
            tx.rollback().await?;
            return Err(error.into());
        }
    };
    // `append_in` returns the events in the order given: split them back per job.
    let mut events = appended.events.into_iter();
    let shares = counts
        .iter()
        .map(|count| Appended {
            events: events.by_ref().take(*count).collect(),
        })
        .collect();
    Ok(Some((tx, shares)))
}

type Replies = Vec<oneshot::Sender<Result<(Committed, StoredResponse), CommitError>>>;

async fn finish_together(
    log: &EventLog,
    group: Vec<Job>,
    (mut tx, shares): (crate::Tx, Vec<Appended>),
) -> Result<(), (Replies, CommitError)> {
    let mut done = Vec::with_capacity(group.len());
    for (job, appended) in group.into_iter().zip(shares) {
        let committed = Committed::new(appended);
        let response = (job.respond)(&committed);
        done.push((job.key, committed, response, job.reply));
    }
    let completions: Vec<(&IdempotencyKey, &StoredResponse)> = done
        .iter()
        .filter_map(|(key, _, response, _)| key.as_ref().map(|key| (key, response)))
        .collect();
    let stored = log
        .complete_idempotency_many_in(&mut tx, &completions)
        .await;
    let failure = match stored {
        Err(error) => {
            let _ = tx.rollback().await;
            Some(CommitError::from(error))
        }
        Ok(()) => tx.commit().await.err().map(CommitError::from),
    };
    if let Some(error) = failure {
        return Err((done.into_iter().map(|d| d.3).collect(), error));
    }
    if let Some(cursor) = done.iter().filter_map(|d| d.1.appended.last_cursor()).max() {
        log.notify_appended(cursor);
    }
    for (_, committed, response, reply) in done {
        let _ = reply.send(Ok((committed, response)));
    }
    Ok(())
}

/// The same failure for every command of a failed group.
fn clone_error(error: &CommitError) -> CommitError {
    match error {
        CommitError::Conflict => CommitError::Conflict,
        other => CommitError::Database(sqlx::Error::Protocol(format!(
            "group commit failed: {other}"
        ))),
    }
}

impl EventLog {
    /// Commits through the committer task when the log has one, else in a transaction of its
    /// own.
    pub async fn commit_grouped(
        &self,
        batch: Vec<StreamAppend>,
        key: Option<IdempotencyKey>,
        respond: Respond,
    ) -> Result<(Committed, StoredResponse), CommitError> {
        let Some(queue) = self.group_queue() else {
            return self.commit_one(&batch, key.as_ref(), respond).await;
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            batch,
            key,
            respond,
            reply,
        };
        if let Err(mpsc::error::SendError(job)) = queue.send(job) {
            return self
                .commit_one(&job.batch, job.key.as_ref(), job.respond)
                .await;
        }
        answer.await.map_err(|_| {
            CommitError::Database(sqlx::Error::Protocol("the committer stopped".into()))
        })?
    }

    /// One command's appends and response in a transaction of their own.
    pub(crate) async fn commit_one(
        &self,
        batch: &[StreamAppend],
        key: Option<&IdempotencyKey>,
        respond: Respond,
    ) -> Result<(Committed, StoredResponse), CommitError> {
        if batch.is_empty() && key.is_none() {
            let committed = Committed::new(Appended { events: Vec::new() });
            let response = respond(&committed);
            return Ok((committed, response));
        }
        let mut tx = self.db().begin().await?;
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
            self.complete_idempotency_in(&mut tx, key, &response)
                .await?;
        }
        tx.commit().await?;
        if let Some(cursor) = committed.appended.last_cursor() {
            self.notify_appended(cursor);
        }
        Ok((committed, response))
    }
}
