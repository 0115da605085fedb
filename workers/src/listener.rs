//! Wakes in-process readers of the log when any process appends (PostgreSQL `LISTEN`).

use std::time::Duration;

use eventlog::store::NOTIFY_CHANNEL;
use eventlog::{Cursor, EventLog};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Listens on the append channel until `shutdown`. Reconnects after errors; every reconnect
/// also wakes the readers, since notifications sent while disconnected are lost.
pub fn spawn(pool: PgPool, log: EventLog, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        while !shutdown.is_cancelled() {
            let mut listener = match PgListener::connect_with(&pool).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "LISTEN connection failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            };
            if let Err(error) = listener.listen(NOTIFY_CHANNEL).await {
                tracing::warn!(%error, "LISTEN failed; retrying");
                continue;
            }
            log.notify_appended(Cursor::START);
            loop {
                tokio::select! {
                    received = listener.recv() => match received {
                        Ok(_) => log.notify_appended(Cursor::START),
                        Err(error) => {
                            tracing::warn!(%error, "LISTEN connection lost; reconnecting");
                            break;
                        }
                    },
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    })
}
