//! Idempotency records: the stored response of the first request with an `Idempotency-Key`.
//!
//! The life of a key, in the manner of Stripe's idempotency keys:
//! 1. **Claim** (own transaction): insert the record `in_flight`, locked for a while. A second
//!    request with the same key and body sees `in_flight` and is told so; with another body it
//!    is told the key was reused.
//! 2. **Complete** (in the transaction that appends the command's events): store the response.
//!    Events and record commit together, so a crash can never leave one without the other.
//!
//! A message to an agent claims its key in the transaction that records the user's message
//! ([`EventLog::insert_new_many_in`]); when the key turns out taken, the message is not
//! recorded and the request claims the key as above.
//!
//! Record writes skip the first step: their group commit stores the response under a key no
//! request holds yet, in the transaction of the events ([`EventLog::insert_new_many_in`]);
//! when the key turns out taken, their events are not committed and the request claims the
//! key as above, which replays the stored response or reports the running request.
//! 3. **Replay**: a later request with the key and the same body gets the stored response.
//!
//! A request that dies between claim and commit leaves an `in_flight` record and no events;
//! when its lock expires, a retry takes the record over and runs the command afresh.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;

use crate::db::Tx;
use crate::sql::{Statement, Texts};
use crate::store::Store;

/// A response as stored for replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    /// Headers to replay, lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Identifies one idempotency record. Its strings are shared: a request's key is copied into
/// each attempt of its command and into its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub tenant_id: Arc<str>,
    /// The operation the key is used for (an HTTP route's operation id): a key names one
    /// request per tenant and operation, so the same key on two operations gives two
    /// independent results. Never empty: the empty scope is that of records written before
    /// keys had one (see [`LEGACY_SCOPE`]).
    pub scope: Arc<str>,
    pub key: Arc<str>,
    /// Hash of method, path, tenant and canonical body.
    pub request_hash: Arc<str>,
}

impl IdempotencyKey {
    /// The key as the set of taken keys [`EventLog::insert_new_many_in`] answers holds it.
    pub fn id(&self) -> (String, String, String) {
        (
            self.tenant_id.to_string(),
            self.scope.to_string(),
            self.key.to_string(),
        )
    }
}

/// The scope of records stored before keys were scoped by operation. Such a record still
/// answers for its key, on every operation, until it expires: a retry of the request it
/// stored (same hash, so the same operation) adopts it into its own scope and replays it;
/// any other request with its key is refused as a reuse, as it was when it was stored.
pub const LEGACY_SCOPE: &str = "";

/// The condition, on `idempotency_records`, that no legacy record holds the key of
/// `$tenant`/`$key` (SQL expressions).
fn no_legacy_record(tenant: &str, key: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM idempotency_records legacy \
         WHERE legacy.tenant_id = {tenant} AND legacy.scope = '' \
         AND legacy.idempotency_key = {key})"
    )
}

/// States of [`Store::legacy_keys`].
const LEGACY_UNKNOWN: u8 = 0;
const LEGACY_PRESENT: u8 = 1;
const LEGACY_GONE: u8 = 2;

impl Store {
    /// Whether legacy records may exist. Only the migration that scoped the keys wrote them, so
    /// once none is left none ever comes back: the statements of every claim and group commit
    /// then skip the legacy check (it would cost a more complex statement, planned each time,
    /// in every group commit).
    async fn legacy_records(&self) -> Result<bool, sqlx::Error> {
        use std::sync::atomic::Ordering;
        match self.legacy_keys().load(Ordering::Relaxed) {
            LEGACY_GONE => return Ok(false),
            LEGACY_PRESENT => return Ok(true),
            _ => {}
        }
        let present = self
            .db()
            .fetch_optional(Statement::new(
                "SELECT 1 FROM idempotency_records WHERE scope = '' LIMIT 1",
            ))
            .await?
            .is_some();
        self.legacy_keys().store(
            if present { LEGACY_PRESENT } else { LEGACY_GONE },
            Ordering::Relaxed,
        );
        Ok(present)
    }
}

/// A record to insert under a key no request holds yet ([`EventLog::insert_new_many_in`]).
#[derive(Debug, Clone, Copy)]
pub enum NewRecord<'a> {
    /// The command is committed with its response.
    Completed(&'a StoredResponse),
    /// The command's first step is committed; a later commit stores its response.
    InFlight { locked_until: DateTime<Utc> },
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller owns the key now and must complete or release it.
    Proceed,
    /// The key was used before with the same request; here is its response.
    Replay(StoredResponse),
    /// The key was used before with another request.
    Mismatch,
    /// A request with this key is still running.
    InFlight,
}

impl Store {
    /// Claims `key` for a request, locking it for `lock_for`.
    pub async fn claim_idempotency(
        &self,
        key: &IdempotencyKey,
        lock_for: Duration,
    ) -> Result<Claim, sqlx::Error> {
        let now = Utc::now();
        let locked_until = now + chrono::Duration::from_std(lock_for).unwrap_or_default();
        // The usual case, a new key, is one statement in its own implicit transaction; only a
        // key seen before needs the transaction below.
        let legacy = self.legacy_records().await?;
        let insert_sql = if legacy {
            format!(
                "INSERT INTO idempotency_records \
                 (tenant_id, scope, idempotency_key, request_hash, state, locked_until, \
                 created_at) \
                 SELECT $1, $2, $3, $4, 'in_flight', $5, $6 WHERE {} \
                 ON CONFLICT (tenant_id, scope, idempotency_key) DO NOTHING",
                no_legacy_record("$1", "$3")
            )
        } else {
            "INSERT INTO idempotency_records \
             (tenant_id, scope, idempotency_key, request_hash, state, locked_until, created_at) \
             VALUES ($1, $2, $3, $4, 'in_flight', $5, $6) \
             ON CONFLICT (tenant_id, scope, idempotency_key) DO NOTHING"
                .to_string()
        };
        let insert = || {
            Statement::new(&insert_sql)
                .bind(&*key.tenant_id)
                .bind(&*key.scope)
                .bind(&*key.key)
                .bind(&*key.request_hash)
                .bind(locked_until)
                .bind(now)
        };
        let inserted = self.db().execute(insert()).await?;
        if inserted == 1 {
            return Ok(Claim::Proceed);
        }
        let mut tx = self.db().begin().await?;
        // A record stored before keys had a scope answers first (see [`LEGACY_SCOPE`]).
        let legacy = if !legacy {
            None
        } else {
            tx.fetch_optional_as::<(String,)>(
                Statement::new(
                    "SELECT request_hash FROM idempotency_records \
                     WHERE tenant_id = $1 AND scope = '' AND idempotency_key = $2",
                )
                .bind(&*key.tenant_id)
                .bind(&*key.key),
            )
            .await?
        };
        match legacy {
            Some((hash,)) if hash != *key.request_hash => {
                tx.rollback().await?;
                return Ok(Claim::Mismatch);
            }
            Some(_) => {
                tx.execute(
                    Statement::new(
                        "UPDATE idempotency_records SET scope = $2 \
                         WHERE tenant_id = $1 AND scope = '' AND idempotency_key = $3",
                    )
                    .bind(&*key.tenant_id)
                    .bind(&*key.scope)
                    .bind(&*key.key),
                )
                .await?;
            }
            None => {}
        }
        let inserted = tx.execute(insert()).await?;
        let claim = if inserted == 1 {
            Claim::Proceed
        } else {
            let row = tx
                .fetch_optional(
                    Statement::new(
                        "SELECT request_hash, state, status_code, response_headers, \
                         response_body FROM idempotency_records \
                         WHERE tenant_id = $1 AND scope = $2 AND idempotency_key = $3",
                    )
                    .bind(&*key.tenant_id)
                    .bind(&*key.scope)
                    .bind(&*key.key),
                )
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            let hash: String = row.try_get("request_hash")?;
            let state: String = row.try_get("state")?;
            if hash != *key.request_hash {
                Claim::Mismatch
            } else if state == "completed" {
                let status: i32 = row.try_get("status_code")?;
                let headers: Json<Vec<(String, String)>> = row.try_get("response_headers")?;
                Claim::Replay(StoredResponse {
                    status: status as u16,
                    headers: headers.0,
                    body: row.try_get("response_body")?,
                })
            } else {
                // In flight: take it over only if its lock has expired (its request died).
                let taken = tx
                    .execute(
                        Statement::new(
                            "UPDATE idempotency_records SET locked_until = $4 \
                             WHERE tenant_id = $1 AND scope = $2 AND idempotency_key = $3 \
                             AND state = 'in_flight' AND locked_until < $5",
                        )
                        .bind(&*key.tenant_id)
                        .bind(&*key.scope)
                        .bind(&*key.key)
                        .bind(locked_until)
                        .bind(now),
                    )
                    .await?;
                if taken == 1 {
                    Claim::Proceed
                } else {
                    Claim::InFlight
                }
            }
        };
        tx.commit().await?;
        Ok(claim)
    }

    /// Inserts a record for each of `keys` inside `tx` (the transaction that appends the
    /// commands' events), for keys that no request holds yet: completed with its response,
    /// or in flight. Returns the keys that were taken already (usually none: the rows the
    /// insert returns are read only when some are missing); the caller must not commit their
    /// commands. One statement per 100 keys, in key order, so that two
    /// transactions inserting the same keys cannot deadlock. The keys must be distinct.
    pub async fn insert_new_many_in(
        &self,
        tx: &mut Tx,
        keys: &[(&IdempotencyKey, NewRecord<'_>)],
    ) -> Result<std::collections::HashSet<(String, String, String), crate::FastHasher>, sqlx::Error>
    {
        let mut keys = keys.to_vec();
        keys.sort_by(|a, b| {
            (&a.0.tenant_id, &a.0.scope, &a.0.key).cmp(&(&b.0.tenant_id, &b.0.scope, &b.0.key))
        });
        let now = Utc::now();
        let legacy = self.legacy_records().await?;
        let mut taken = std::collections::HashSet::default();
        static TEXTS: Texts = Texts::new(100);
        let backend = tx.backend();
        for chunk in keys.chunks(100) {
            // A key a legacy record holds counts as taken: the request then claims it, which
            // replays or refuses as the record says.
            let sql = if legacy {
                let rows = backend.typed_values(
                    chunk.len(),
                    &[
                        "text",
                        "text",
                        "text",
                        "text",
                        "text",
                        "int4",
                        "jsonb",
                        "bytea",
                        "timestamptz",
                        "timestamptz",
                    ],
                );
                Cow::Owned(format!(
                    "WITH fresh (tenant_id, scope, idempotency_key, request_hash, state, \
                     status_code, response_headers, response_body, locked_until, created_at) \
                     AS (VALUES {rows}) \
                     INSERT INTO idempotency_records \
                     (tenant_id, scope, idempotency_key, request_hash, state, status_code, \
                     response_headers, response_body, locked_until, created_at) \
                     SELECT * FROM fresh WHERE {} \
                     ON CONFLICT (tenant_id, scope, idempotency_key) DO NOTHING \
                     RETURNING tenant_id, scope, idempotency_key",
                    no_legacy_record("fresh.tenant_id", "fresh.idempotency_key")
                ))
            } else {
                TEXTS.get(backend, chunk.len(), || {
                    format!(
                        "INSERT INTO idempotency_records \
                         (tenant_id, scope, idempotency_key, request_hash, state, status_code, \
                         response_headers, response_body, locked_until, created_at) \
                         VALUES {} ON CONFLICT (tenant_id, scope, idempotency_key) DO NOTHING \
                         RETURNING tenant_id, scope, idempotency_key",
                        backend.values(chunk.len(), 10)
                    )
                })
            };
            let mut insert = Statement::new(&sql).persistent(!legacy && TEXTS.recurs(chunk.len()));
            for (key, record) in chunk {
                let (state, response, locked_until) = match record {
                    NewRecord::Completed(response) => ("completed", Some(*response), now),
                    NewRecord::InFlight { locked_until } => ("in_flight", None, *locked_until),
                };
                insert.push(&*key.tenant_id);
                insert.push(&*key.scope);
                insert.push(&*key.key);
                insert.push(&*key.request_hash);
                insert.push(state);
                insert.push(response.map(|r| i32::from(r.status)));
                insert.push(response.map(|r| Json(&r.headers)));
                insert.push(response.map(|r| r.body.as_slice()));
                insert.push(locked_until);
                insert.push(now);
            }
            let rows = tx.fetch_all(insert).await?;
            if rows.len() < chunk.len() {
                let inserted = rows
                    .iter()
                    .map(|row| row.decode::<(String, String, String)>())
                    .collect::<Result<std::collections::HashSet<_, crate::FastHasher>, _>>()?;
                taken.extend(
                    chunk
                        .iter()
                        .map(|(key, _)| key.id())
                        .filter(|id| !inserted.contains(id)),
                );
            }
        }
        Ok(taken)
    }

    /// Stores the response of a claimed key inside `tx` (the command's own transaction).
    pub async fn complete_idempotency_in(
        &self,
        tx: &mut Tx,
        key: &IdempotencyKey,
        response: &StoredResponse,
    ) -> Result<(), sqlx::Error> {
        tx.execute(
            Statement::new(
                "UPDATE idempotency_records SET state = 'completed', status_code = $4, \
                 response_headers = $5, response_body = $6 \
                 WHERE tenant_id = $1 AND scope = $2 AND idempotency_key = $3",
            )
            .bind(&*key.tenant_id)
            .bind(&*key.scope)
            .bind(&*key.key)
            .bind(i32::from(response.status))
            .bind(Json(&response.headers))
            .bind(response.body.as_slice()),
        )
        .await?;
        Ok(())
    }

    /// [`EventLog::complete_idempotency_in`] for many keys, in one statement per 100 keys
    /// (group commit).
    pub async fn complete_idempotency_many_in(
        &self,
        tx: &mut Tx,
        completions: &[(&IdempotencyKey, &StoredResponse)],
    ) -> Result<(), sqlx::Error> {
        static TEXTS: Texts = Texts::new(100);
        let backend = tx.backend();
        for chunk in completions.chunks(100) {
            let sql = TEXTS.get(backend, chunk.len(), || {
                let rows = backend.typed_values(
                    chunk.len(),
                    &["text", "text", "text", "int4", "jsonb", "bytea"],
                );
                format!(
                    "WITH done (tenant_id, scope, idempotency_key, status_code, \
                     response_headers, response_body) AS (VALUES {rows}) \
                     UPDATE idempotency_records SET state = 'completed', \
                     status_code = done.status_code, response_headers = done.response_headers, \
                     response_body = done.response_body \
                     FROM done WHERE idempotency_records.tenant_id = done.tenant_id \
                     AND idempotency_records.scope = done.scope \
                     AND idempotency_records.idempotency_key = done.idempotency_key"
                )
            });
            let mut update = Statement::new(&sql).persistent(TEXTS.recurs(chunk.len()));
            for (key, response) in chunk {
                update.push(&*key.tenant_id);
                update.push(&*key.scope);
                update.push(&*key.key);
                update.push(i32::from(response.status));
                update.push(Json(&response.headers));
                update.push(response.body.as_slice());
            }
            tx.execute(update).await?;
        }
        Ok(())
    }

    /// Stores the response of a claimed key that wrote no events.
    pub async fn complete_idempotency(
        &self,
        key: &IdempotencyKey,
        response: &StoredResponse,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.db().begin().await?;
        self.complete_idempotency_in(&mut tx, key, response).await?;
        tx.commit().await
    }

    /// Gives a claimed key up (the request failed without an answer worth replaying), so that
    /// a retry runs afresh.
    pub async fn release_idempotency(&self, key: &IdempotencyKey) -> Result<(), sqlx::Error> {
        let mut tx = self.db().begin().await?;
        tx.execute(
            Statement::new(
                "DELETE FROM idempotency_records \
                 WHERE tenant_id = $1 AND scope = $2 AND idempotency_key = $3 \
                 AND state = 'in_flight'",
            )
            .bind(&*key.tenant_id)
            .bind(&*key.scope)
            .bind(&*key.key),
        )
        .await?;
        tx.commit().await
    }

    /// Deletes records created before `before`. Returns how many.
    pub async fn prune_idempotency(&self, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        let mut tx = self.db().begin().await?;
        let deleted = tx
            .execute(
                Statement::new("DELETE FROM idempotency_records WHERE created_at < $1")
                    .bind(before),
            )
            .await?;
        tx.commit().await?;
        if deleted > 0 {
            // Legacy records expire like the others: look again.
            self.legacy_keys()
                .store(LEGACY_UNKNOWN, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(deleted)
    }
}
