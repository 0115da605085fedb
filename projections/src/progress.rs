//! In-process signal of each projector's progress, used to answer read-your-writes queries
//! without polling when the projector runs in this process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use eventlog::Cursor;
use tokio::sync::watch;

/// One watch channel per projector name, and the failure of each projector that is failing.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    channels: Arc<Mutex<HashMap<String, watch::Sender<Cursor>>>>,
    failures: Arc<Mutex<HashMap<String, Failure>>>,
}

/// Why a projector stands still: the event it cannot apply and the error it gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The event it fails on, when its batch was narrowed down to one event.
    pub event_id: Option<uuid::Uuid>,
    pub error: String,
    /// When it first failed in this run of failures.
    pub since: chrono::DateTime<chrono::Utc>,
    /// Failed tries in a row.
    pub attempts: u32,
}

impl Progress {
    fn sender(&self, name: &str) -> watch::Sender<Cursor> {
        let mut channels = self.channels.lock().expect("progress lock poisoned");
        channels
            .entry(name.to_string())
            .or_insert_with(|| watch::channel(Cursor::START).0)
            .clone()
    }

    /// Records that projector `name` has committed up to `cursor`.
    pub fn advance(&self, name: &str, cursor: Cursor) {
        self.sender(name).send_if_modified(|current| {
            let moved = cursor > *current;
            if moved {
                *current = cursor;
            }
            moved
        });
    }

    /// Records that projector `name` failed on `event_id` (when known) with `error`.
    pub fn fail(&self, name: &str, event_id: Option<uuid::Uuid>, error: String) {
        let mut failures = self.failures.lock().expect("progress lock poisoned");
        let previous = failures.get(name);
        let failure = Failure {
            since: previous.map_or_else(chrono::Utc::now, |p| p.since),
            attempts: previous.map_or(1, |p| p.attempts.saturating_add(1)),
            event_id: event_id.or(previous.and_then(|p| p.event_id)),
            error,
        };
        failures.insert(name.to_string(), failure);
    }

    /// Records that projector `name` applies events again.
    pub fn recovered(&self, name: &str) {
        self.failures
            .lock()
            .expect("progress lock poisoned")
            .remove(name);
    }

    /// Why projector `name` stands still, if it does.
    pub fn failure(&self, name: &str) -> Option<Failure> {
        self.failures
            .lock()
            .expect("progress lock poisoned")
            .get(name)
            .cloned()
    }

    /// A receiver that changes when projector `name` advances in this process.
    pub fn subscribe(&self, name: &str) -> watch::Receiver<Cursor> {
        self.sender(name).subscribe()
    }
}

/// Whether a projection had caught up with a cursor when a query asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// The projection has applied the cursor's event.
    Fresh,
    /// The wait ran out first; `events_behind` events between the projection's checkpoint and
    /// the cursor were not applied yet.
    Stale { events_behind: u64 },
}

/// Waits, at most `timeout`, until projector `name` has applied the event at `target`.
/// Wakes on in-process progress, and reads the checkpoint every 25 ms so that a projector
/// running in another process is seen as well.
pub async fn wait_until(
    log: &eventlog::EventLog,
    progress: &Progress,
    name: &str,
    target: Cursor,
    timeout: std::time::Duration,
) -> Result<Freshness, sqlx::Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut local = progress.subscribe(name);
    loop {
        if *local.borrow_and_update() >= target {
            return Ok(Freshness::Fresh);
        }
        let checkpoint = crate::checkpoints::read(log.db(), name)
            .await?
            .unwrap_or(Cursor::START);
        if checkpoint >= target {
            return Ok(Freshness::Fresh);
        }
        if tokio::time::Instant::now() >= deadline {
            // Bounded: a stale answer must not wait for a count of the whole log.
            let (behind, _) = log.backlog_up_to(checkpoint, MAX_COUNTED_LAG).await?;
            let (beyond_target, _) = log.backlog_up_to(target, MAX_COUNTED_LAG).await?;
            return Ok(Freshness::Stale {
                events_behind: behind.saturating_sub(beyond_target).max(1),
            });
        }
        let nap = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + POLL));
        tokio::select! {
            _ = local.changed() => {}
            _ = nap => {}
        }
    }
}

const POLL: std::time::Duration = std::time::Duration::from_millis(25);

/// How far a projector is behind the log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    pub checkpoint: Cursor,
    /// Readable events after the checkpoint.
    pub events: u64,
    /// Age of the oldest event not applied yet; 0 when caught up.
    pub seconds: f64,
}

/// The most events a lag counts: beyond it, `events` is this number and means at least as
/// many (a lag is measured by `/ready` and `/metrics`, whose cost must not grow with the log).
pub const MAX_COUNTED_LAG: u64 = 10_000;

/// The lag of projector (or relay) `name`.
pub async fn lag(log: &eventlog::EventLog, name: &str) -> Result<Lag, sqlx::Error> {
    let checkpoint = crate::checkpoints::read(log.db(), name)
        .await?
        .unwrap_or(Cursor::START);
    let (events, oldest) = log.backlog_up_to(checkpoint, MAX_COUNTED_LAG).await?;
    let seconds = oldest.map_or(0.0, |oldest| {
        (chrono::Utc::now() - oldest).num_milliseconds().max(0) as f64 / 1000.0
    });
    Ok(Lag {
        checkpoint,
        events,
        seconds,
    })
}
