//! Sending a message to an agent (`POST /v1/sessions/{sessionId}/messages`): the one command
//! of the gateway with a side effect outside its database, the provider call.
//!
//! It follows the recovery points of Stripe-style idempotency keys. Each step commits before
//! the next begins:
//! 1. **Claim** the `Idempotency-Key` (required). A replay gets the stored answer.
//! 2. **Record the user message** (`UserMessageRecorded`) under an id derived from tenant,
//!    session and key. The message is now durable: it is never lost, whatever happens next.
//! 3. **Call the providers** (outside any transaction); each attempt is recorded as it ends
//!    (`ProviderCallAttempted`).
//! 4. **Record the reply with its usage** (`AssistantMessageRecorded`) and the stored
//!    response in one transaction. This is the only step that bills.
//!
//! A crash between 2 and 4 leaves the key claimed and the message recorded without a reply.
//! Once the key's lock expires (`idempotency_lock_secs`), a retry with the same key takes it
//! over: step 2 finds the message already there and records nothing, step 3 asks the
//! provider again, and step 4 bills that one reply. The lost reply of the crashed request was
//! never recorded, so it is never billed; and the aggregate refuses a second reply for one
//! message, so two requests racing after a takeover still bill once.
//!
//! When every provider fails, `MessageFailed` is recorded, nothing is billed, and the key is
//! released: a retry with the same key asks the providers again for the same message.
//!
//! The usual message takes two commits, both through the group commit (shared with other
//! requests' commits) and both deciding on the session, agent and budgets as this process
//! last saw them (the stream cache; the commit checks their versions):
//! - steps 1 and 2 together: the key is claimed in the transaction that records the user
//!   message, so either both happen or neither;
//! - the successful provider attempt is recorded with the reply (a failed one is recorded as
//!   it ends, before the next attempt).
//!
//! Anything else (a key already used, a refusal, a session another request changed, a
//! message recorded before) takes the step-by-step path above, on freshly read state, which
//! decides and answers it.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::agent::{Agent, AgentConfig};
use domain::budget::{Budget, BudgetCommand, Enforcement, TENANT_SCOPE, agent_scope};
use domain::provider::{BoxFuture, ChatMessage, ChatRole, ChunkSink, micros_to_usd};
use domain::session::{AssistantReply, ProviderAttempt, Session, SessionCommand, SessionError};
use eventlog::group_commit::KeyUse;
use eventlog::idempotency::{IdempotencyKey, StoredResponse};
use eventlog::unit_of_work::{CommitError, Committed, UnitOfWork};
use eventlog::{CommandError, StreamId};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::context::Context;
use crate::error::{Error, FieldError};
use crate::idempotency::{self, Claimed, EVENT_POSITION_HEADER, Refused};
use crate::providers::{AttemptRecorder, CallPlan};
use crate::state::App;

type Ctx = Context;

/// A message exchange whose user message is recorded and whose reply is still to come.
pub struct Exchange {
    state: App,
    ctx: Ctx,
    key: IdempotencyKey,
    stream: StreamId,
    session_id: String,
    agent_id: String,
    agent: AgentConfig,
    message_id: String,
    reply_id: String,
    /// What the providers are shown: the conversation up to the user's message.
    context: Vec<ChatMessage>,
    /// The budgets that apply (tenant, agent), to tell when a reply crosses one.
    budgets: Vec<(StreamId, Budget)>,
    /// Successful provider attempts, recorded with the reply.
    succeeded: std::sync::Mutex<Vec<ProviderAttempt>>,
}

/// What renders the answer to a message: the parts of an [`Exchange`] that the response
/// names, owned, so that a commit can render it.
#[derive(Debug, Clone)]
struct Answer {
    session_id: String,
    agent_id: String,
    primary_provider: String,
    fallback_provider: Option<String>,
    key: String,
    request_id: String,
}

/// The state steps 1 and 2 leave.
struct Recorded {
    agent_id: String,
    agent: AgentConfig,
    context: Vec<ChatMessage>,
    budgets: Vec<(StreamId, Budget)>,
}

/// The ids of a message and of its reply: `msg_` and 32 hex digits of a hash of the parts
/// (and of the parts and `reply`), so that the same request gets the same ids. The reply's
/// hash goes on from a copy of the message's, so the parts are hashed once.
fn derived_ids(parts: &[&str]) -> (String, String) {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    let message = hasher.clone().finalize();
    hasher.update(b"reply\0");
    let reply = hasher.finalize();
    let id = |digest: &[u8]| {
        let mut id = String::with_capacity(4 + 32);
        id.push_str("msg_");
        idempotency::push_hex(&mut id, &digest[..16]);
        id
    };
    (id(&message), id(&reply))
}

/// The stream of a session.
pub fn session_stream(ctx_tenant: &domain::names::TenantId, session_id: &str) -> StreamId {
    StreamId::new(ctx_tenant.clone(), Session::TYPE, session_id)
}

/// The stream of an agent.
pub fn agent_stream(ctx_tenant: &domain::names::TenantId, agent_id: &str) -> StreamId {
    StreamId::new(ctx_tenant.clone(), Agent::TYPE, agent_id)
}

/// Maps a session's refusals.
pub fn session_error(session_id: &str, agent_id: &str) -> impl Fn(SessionError) -> Error {
    let (session_id, agent_id) = (session_id.to_string(), agent_id.to_string());
    move |error| match error {
        SessionError::NotFound => Error::SessionNotFound(session_id.clone()),
        SessionError::Closed => Error::SessionClosed(session_id.clone()),
        SessionError::AgentArchived => Error::AgentArchived(agent_id.clone()),
        SessionError::Invalid { field, message } => {
            Error::Validation(vec![FieldError { field, message }])
        }
        SessionError::AlreadyExists
        | SessionError::UnknownMessage(_)
        | SessionError::AlreadyAnswered(_) => Error::internal(error),
    }
}

fn command_error(
    error: CommandError<SessionError>,
    reject: impl Fn(SessionError) -> Error,
) -> Error {
    match error {
        CommandError::Rejected(error) => reject(error),
        CommandError::Conflict => Error::ConcurrentModification,
        CommandError::Database(error) => error.into(),
        other => Error::internal(other),
    }
}

/// A stored first answer, replayed: 200 instead of 201 and `idempotency.replayed: true`.
pub fn replay(stored: &StoredResponse) -> Refused {
    if stored.status != 201 {
        return Refused::Replayed(stored.clone());
    }
    let mut replayed = stored.clone();
    replayed.status = 200;
    if let Ok(mut body) = serde_json::from_slice::<Value>(&stored.body) {
        body["metadata"]["idempotency"]["replayed"] = Value::Bool(true);
        replayed.body = body.to_string().into_bytes();
    }
    Refused::Replayed(replayed)
}

/// Steps 1 and 2: claims the key and records the user message. `Err` is the response to
/// send instead (a replay or a refusal).
pub async fn prepare(
    state: &App,
    ctx: Ctx,
    session_id: String,
    content: String,
) -> Result<Exchange, Refused> {
    let Some(raw_key) = ctx.idempotency_key.clone() else {
        return Err(Error::IdempotencyKeyRequired.into());
    };
    let (identity, stream, message_id, reply_id) = names(&ctx, &raw_key, &session_id, &content);
    if let Some(key) = idempotency::key_of(&ctx, &identity)
        && let Some(recorded) =
            claim_and_record(state, &ctx, &key, &stream, &message_id, &content).await
    {
        return Ok(Exchange {
            state: state.clone(),
            ctx,
            key,
            stream,
            session_id,
            agent_id: recorded.agent_id,
            agent: recorded.agent,
            message_id,
            reply_id,
            context: recorded.context,
            budgets: recorded.budgets,
            succeeded: Default::default(),
        });
    }
    // Boxed: the step-by-step path is the rare one, and its future, inline, would make every
    // message's future (copied as it moves through the router) twice its size.
    Box::pin(prepare_step_by_step(
        state, ctx, raw_key, session_id, content,
    ))
    .await
}

/// What identifies a message (its idempotency identity: the message, not how its answer is
/// delivered), its session's stream, and the ids of the message and of its reply (derived
/// from the key, so that a retry names the same ones).
fn names(
    ctx: &Ctx,
    raw_key: &str,
    session_id: &str,
    content: &str,
) -> (Value, StreamId, String, String) {
    let (message_id, reply_id) = derived_ids(&[ctx.tenant.as_str(), session_id, raw_key]);
    (
        json!({ "role": "user", "content": content }),
        session_stream(&ctx.tenant, session_id),
        message_id,
        reply_id,
    )
}

/// [`prepare`] when the message could not be claimed and recorded in one commit: the key is
/// claimed first, then the message recorded on state read from the log.
async fn prepare_step_by_step(
    state: &App,
    ctx: Ctx,
    raw_key: String,
    session_id: String,
    content: String,
) -> Result<Exchange, Refused> {
    let (identity, stream, message_id, reply_id) = names(&ctx, &raw_key, &session_id, &content);
    let key = match idempotency::claim(state, &ctx, &identity).await {
        Ok(Claimed::Run(Some(key))) => key,
        Ok(Claimed::Run(None)) => unreachable!("the request has a key"),
        Ok(Claimed::Replay(stored)) => return Err(replay(&stored)),
        Err(error) => return Err(error.into()),
    };
    let fail = |error: Error| {
        let state = state.clone();
        let key = key.clone();
        async move { Refused::Failed(idempotency::release(&state, &key, error).await) }
    };
    let loaded = match state.log.load_aggregate::<Session>(&stream).await {
        Ok(loaded) => loaded,
        Err(error) => return Err(fail(command_error(error, Error::internal)).await),
    };
    if !loaded.aggregate.exists() {
        let error = Error::SessionNotFound(session_id.clone());
        return Err(idempotency::refuse(state, &ctx.request_id, Some(&key), error).await);
    }
    let agent_id = loaded.aggregate.agent_id().to_string();
    let agent = match state
        .log
        .load_aggregate::<Agent>(&agent_stream(&ctx.tenant, &agent_id))
        .await
    {
        Ok(loaded) => loaded.aggregate,
        Err(error) => return Err(fail(Error::internal(error)).await),
    };
    let Some(config) = agent.config().cloned() else {
        let error =
            anyhow::anyhow!("session {session_id} names agent {agent_id}, which has no events");
        return Err(fail(Error::internal(error)).await);
    };
    let prompt = prompt_tokens(
        &config,
        loaded
            .aggregate
            .recent_tokens(state.settings.context_messages),
        &content,
    );
    let budgets =
        match check_budgets(state, &ctx.tenant, &agent_id, &config, &message_id, prompt).await {
            Ok(budgets) => budgets,
            // Not stored for replay: once the budget is raised, the same request may proceed.
            Err(error) => return Err(fail(error).await),
        };
    let release = |error: Error| {
        let state = state.clone();
        let tenant = ctx.tenant.to_string();
        let message_id = message_id.clone();
        async move {
            if let Err(failure) =
                projections::usage::release(state.log.db(), &tenant, &message_id).await
            {
                tracing::warn!(%failure, "could not release a budget reservation; it expires");
            }
            error
        }
    };
    let command = SessionCommand::RecordUserMessage {
        message_id: message_id.clone(),
        content,
        agent_status: agent.status(),
    };
    let outcome = match state
        .log
        .execute::<Session>(&stream, command, &(), &ctx.metadata("RecordUserMessage"))
        .await
    {
        Ok(outcome) => outcome,
        Err(CommandError::Rejected(error)) => {
            let error = release(session_error(&session_id, &agent_id)(error)).await;
            return Err(idempotency::refuse(state, &ctx.request_id, Some(&key), error).await);
        }
        Err(error) => {
            let error = release(command_error(error, Error::internal)).await;
            return Err(fail(error).await);
        }
    };
    state
        .metrics
        .events_appended(Session::TYPE, outcome.events.len());
    let context = outcome
        .aggregate
        .context_for(&message_id, state.settings.context_messages);
    let exchange = Exchange {
        state: state.clone(),
        ctx,
        key: key.clone(),
        stream,
        session_id,
        agent_id,
        agent: config,
        message_id,
        reply_id,
        context,
        budgets,
        succeeded: Default::default(),
    };
    if let Some(stored) = exchange.respond(&outcome.aggregate, outcome.updated_at) {
        // Answered by an earlier request whose idempotency record is gone: answer with that
        // reply; nothing new is recorded or billed.
        return Err(
            match state.log.complete_idempotency(&exchange.key, &stored).await {
                Ok(()) => replay(&stored),
                Err(error) => fail(error.into()).await,
            },
        );
    }
    Ok(exchange)
}

/// Steps 1 and 2 in one commit (see the module documentation), deciding on cached state.
/// `None` when this message needs the step-by-step path: nothing was written then.
async fn claim_and_record(
    state: &App,
    ctx: &Ctx,
    key: &IdempotencyKey,
    stream: &StreamId,
    message_id: &str,
    content: &str,
) -> Option<Recorded> {
    let mut uow = UnitOfWork::speculative(&state.log);
    let session = &uow.state::<Session>(stream).await.ok()?.aggregate;
    if !session.exists() {
        return None;
    }
    let agent_id = session.agent_id().to_string();
    let recent = session.recent_tokens(state.settings.context_messages);
    let agent_stream = agent_stream(&ctx.tenant, &agent_id);
    let scopes = [TENANT_SCOPE.to_string(), agent_scope(&agent_id)];
    let mut streams: Vec<StreamId> = scopes
        .iter()
        .map(|scope| budget_stream(&ctx.tenant, scope))
        .collect();
    streams.push(agent_stream.clone());
    uow.prefetch(&streams).await.ok()?;
    let agent = &uow.state::<Agent>(&agent_stream).await.ok()?.aggregate;
    let (config, agent_status) = (agent.config()?.clone(), agent.status());
    let mut budgets = Vec::new();
    for stream in &streams[..2] {
        let budget = &uow.state::<Budget>(stream).await.ok()?.aggregate;
        if budget.limit().is_some() {
            budgets.push((stream.clone(), budget.clone()));
        }
    }
    let prompt = prompt_tokens(&config, recent, content);
    // No waiting here: a message that would wait for others takes the step-by-step path,
    // which waits once.
    let no_wait = std::time::Duration::ZERO;
    admit(
        state,
        &ctx.tenant,
        &config,
        &budgets,
        message_id,
        prompt,
        no_wait,
    )
    .await
    .ok()?;
    let command = SessionCommand::RecordUserMessage {
        message_id: message_id.to_string(),
        content: content.to_string(),
        agent_status,
    };
    let staged = uow.execute::<Session>(stream, command, &()).await.ok()?;
    if staged.pending.is_empty() {
        // Recorded before (a retry after a crash): the step-by-step path knows what follows.
        return None;
    }
    let context = staged
        .aggregate
        .context_for(message_id, state.settings.context_messages);
    let until = Utc::now()
        + chrono::Duration::from_std(state.settings.idempotency_lock()).unwrap_or_default();
    // Only claimed here: the response is stored with the reply.
    let unused = |_: &Committed| StoredResponse {
        status: 202,
        headers: Vec::new(),
        body: Vec::new(),
    };
    match uow
        .commit(
            &ctx.metadata("RecordUserMessage"),
            Some(KeyUse::Claim(key.clone(), until)),
            unused,
        )
        .await
    {
        Ok((committed, _)) => {
            state
                .metrics
                .events_appended(Session::TYPE, committed.appended.events.len());
            Some(Recorded {
                agent_id,
                agent: config,
                context,
                budgets,
            })
        }
        Err(error @ (CommitError::Conflict | CommitError::KeyTaken)) => {
            tracing::debug!(%error, "a message takes the step-by-step path");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "recording a message with its key failed; trying step by step");
            None
        }
    }
}

/// The stream of a budget (`tenant` or `agent:<id>`).
pub fn budget_stream(tenant: &domain::names::TenantId, scope: &str) -> StreamId {
    StreamId::new(tenant.clone(), Budget::TYPE, scope)
}

/// The budgets that apply to a message to `agent_id`, read from their streams, with the
/// message admitted under the hard ones (see [`admit`]).
async fn check_budgets(
    state: &App,
    tenant: &domain::names::TenantId,
    agent_id: &str,
    agent: &AgentConfig,
    message_id: &str,
    prompt: u64,
) -> Result<Vec<(StreamId, Budget)>, Error> {
    let mut budgets = Vec::new();
    for scope in [TENANT_SCOPE.to_string(), agent_scope(agent_id)] {
        let stream = budget_stream(tenant, &scope);
        let loaded = state
            .log
            .load_aggregate::<Budget>(&stream)
            .await
            .map_err(Error::internal)?;
        if loaded.aggregate.limit().is_some() {
            budgets.push((stream, loaded.aggregate));
        }
    }
    let wait = state.settings.budget_wait();
    admit(state, tenant, agent, &budgets, message_id, prompt, wait).await?;
    Ok(budgets)
}

/// Replies are bounded by this many tokens when the agent sets no `maxTokens`, for the
/// reservation of their cost.
const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 1024;

/// The tokens of the prompt a message sends (system prompt, the `recent` tokens of the
/// conversation, the message itself), estimated before it is recorded.
fn prompt_tokens(agent: &AgentConfig, recent: u64, content: &str) -> u64 {
    let system = agent
        .system_prompt
        .as_deref()
        .map_or(0, domain::provider::estimate_tokens);
    system + recent + domain::provider::estimate_tokens(content)
}

/// Admits a message under the hard budgets among `budgets`: refuses with `BUDGET_EXCEEDED`
/// when one is spent, and otherwise reserves an upper bound of the reply's cost (the prompt
/// and the agent's `maxTokens`, at the highest price of its providers) until the reply is
/// billed or the message fails. While messages in flight hold the rest of a budget, it waits
/// for them (at most `wait`: `GATEWAY_BUDGET_WAIT_MS`, then 503 `BUDGET_CONTENDED`). So concurrent
/// messages never spend past a hard budget together: at most the one message admitted when
/// nothing else was in flight goes past it, by at most its own reply.
async fn admit(
    state: &App,
    tenant: &domain::names::TenantId,
    agent: &AgentConfig,
    budgets: &[(StreamId, Budget)],
    message_id: &str,
    prompt: u64,
    wait: std::time::Duration,
) -> Result<(), Error> {
    let limits: Vec<projections::usage::HardLimit> = budgets
        .iter()
        .filter_map(|(stream, budget)| match budget.limit() {
            Some((limit, Enforcement::Hard)) => Some(projections::usage::HardLimit {
                scope: stream.aggregate_id.clone(),
                limit_micros: limit,
            }),
            _ => None,
        })
        .collect();
    if limits.is_empty() {
        return Ok(());
    }
    let output = agent
        .max_tokens
        .map_or(DEFAULT_MAX_OUTPUT_TOKENS, u64::from);
    let estimate = state
        .providers
        .highest_price(agent)
        .cost_micros(prompt, output)
        .unwrap_or(i64::MAX as u64);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let now = Utc::now();
        let reservation = projections::usage::Reservation {
            message_id: message_id.to_string(),
            month: projections::usage::month_of(now),
            estimate,
            now_ms: now.timestamp_millis(),
            // A request that dies holds it no longer than its idempotency key.
            expires_at_ms: now.timestamp_millis()
                + state.settings.idempotency_lock().as_millis() as i64,
        };
        let decision =
            projections::usage::admit(state.log.db(), tenant.as_str(), &limits, &reservation)
                .await?;
        match decision {
            projections::usage::Admission::Admitted => return Ok(()),
            projections::usage::Admission::Exceeded {
                scope,
                limit_micros,
                spent_micros,
            } => {
                return Err(Error::BudgetExceeded {
                    scope,
                    limit_micros,
                    spent_micros,
                });
            }
            projections::usage::Admission::Contended => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::BudgetContended);
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

/// Records each failed provider attempt as an event as soon as it ends; keeps a successful
/// one for the commit of the reply.
struct Recorder<'a> {
    exchange: &'a Exchange,
}

impl AttemptRecorder for Recorder<'_> {
    fn record(&self, attempt: ProviderAttempt) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let exchange = self.exchange;
            if attempt.succeeded() {
                exchange
                    .succeeded
                    .lock()
                    .expect("attempts lock poisoned")
                    .push(attempt);
                return;
            }
            exchange.record_attempt(attempt).await;
        })
    }
}

impl Exchange {
    /// Records one provider attempt in a commit of its own.
    async fn record_attempt(&self, attempt: ProviderAttempt) {
        let command = SessionCommand::RecordProviderAttempt {
            message_id: self.message_id.clone(),
            attempt,
        };
        let metadata = self.ctx.metadata(command.name());
        if let Err(error) = self
            .state
            .log
            .execute::<Session>(&self.stream, command, &(), &metadata)
            .await
        {
            tracing::warn!(%error, "a provider attempt could not be recorded");
        }
    }

    /// Records the successful attempts not recorded yet, each in a commit of its own.
    async fn record_succeeded(&self) {
        let attempts = std::mem::take(&mut *self.succeeded.lock().expect("attempts lock poisoned"));
        for attempt in attempts {
            self.record_attempt(attempt).await;
        }
    }

    /// Steps 3 and 4: asks the providers, then records the reply and the stored response
    /// together. `on_chunk` streams the reply; `disconnected` tells whether the client of a
    /// stream has gone (the reply is still taken whole and billed).
    pub async fn answer(
        mut self,
        on_chunk: Option<ChunkSink<'_>>,
        disconnected: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<StoredResponse, Error> {
        let state = self.state.clone();
        let mut messages = Vec::new();
        if let Some(prompt) = self.agent.system_prompt.as_ref().filter(|p| !p.is_empty()) {
            messages.push(ChatMessage {
                role: ChatRole::System,
                content: prompt.as_str().into(),
            });
        }
        messages.append(&mut self.context);
        let plan = CallPlan {
            providers: self
                .agent
                .providers()
                .map(|p| (p.to_string(), self.agent.model_for(p).map(String::from)))
                .collect(),
            messages: messages.into(),
            temperature: self.agent.temperature,
            max_tokens: self.agent.max_tokens,
        };
        let answer = state
            .providers
            .call(&plan, &Recorder { exchange: &self }, on_chunk)
            .await;
        let Some(answer) = answer else {
            return Err(Box::pin(self.record_failure()).await);
        };
        let price = state
            .providers
            .price(&answer.provider, &answer.completion.model);
        let completion = answer.completion;
        let reply = AssistantReply {
            message_id: self.reply_id.as_str().into(),
            reply_to: self.message_id.as_str().into(),
            agent_id: self.agent_id.as_str().into(),
            // Within MAX_REPORTED_TOKENS (checked as the provider answered) and
            // MAX_PRICE_MICROS_PER_1K (checked at start), every cost fits.
            cost_micros: price
                .cost_micros(completion.tokens_in, completion.tokens_out)
                .unwrap_or(i64::MAX as u64),
            content: completion.content.into(),
            provider: answer.provider.into(),
            model: completion.model.into(),
            tokens_in: completion.tokens_in,
            tokens_out: completion.tokens_out,
            price,
            fallback_used: answer.fallback_used,
            streamed: on_chunk.is_some(),
            client_disconnected: on_chunk.is_some() && disconnected(),
            incomplete: answer.incomplete,
        };
        let command = SessionCommand::RecordAssistantReply(reply);
        let metadata = self.ctx.metadata(command.name());
        match self.record_reply(command.clone(), &metadata).await {
            Ok(stored) => {
                self.record_thresholds().await;
                Ok(stored)
            }
            // Boxed, as the failure above: rare paths that would otherwise set the size of
            // every message's future.
            Err(None) => Box::pin(self.record_reply_step_by_step(command, &metadata)).await,
            Err(Some(error)) => Err(Box::pin(idempotency::release(&state, &self.key, error)).await),
        }
    }

    /// Records a failed message (every provider failed): its attempts, then the failure;
    /// the error to answer with.
    async fn record_failure(&self) -> Error {
        let state = &self.state;
        self.record_succeeded().await;
        let command = SessionCommand::RecordMessageFailure {
            message_id: self.message_id.clone(),
        };
        let metadata = self.ctx.metadata(command.name());
        let attempts = match state
            .log
            .execute::<Session>(&self.stream, command, &(), &metadata)
            .await
        {
            Ok(outcome) => attempts_of(&outcome.aggregate, &self.message_id),
            Err(error) => {
                tracing::warn!(%error, "a failed message could not be recorded");
                self.attempts().await
            }
        };
        let error = Error::AllProvidersFailed {
            attempts: serde_json::to_value(summarise(&attempts))
                .expect("attempts serialize to JSON"),
        };
        idempotency::release(state, &self.key, error).await
    }

    /// [`Exchange::record_reply`] when the reply could not be recorded on the cached session:
    /// the attempts one by one, then the reply on the session read from the log.
    async fn record_reply_step_by_step(
        &self,
        command: SessionCommand,
        metadata: &domain::metadata::EventMetadata,
    ) -> Result<StoredResponse, Error> {
        let state = &self.state;
        let reject = session_error(&self.session_id, &self.agent_id);
        self.record_succeeded().await;
        let respond = |outcome: &eventlog::CommandOutcome<Session>| {
            let mut stored = self.respond(&outcome.aggregate, outcome.updated_at)?;
            if let Some(cursor) = outcome.cursor {
                stored
                    .headers
                    .push((EVENT_POSITION_HEADER.to_string(), cursor.to_string()));
            }
            Some(stored)
        };
        match state
            .log
            .execute_with::<Session, _>(
                &self.stream,
                command,
                &(),
                metadata,
                Some(&self.key),
                respond,
            )
            .await
        {
            Ok((outcome, Some(stored))) => {
                state
                    .metrics
                    .events_appended(Session::TYPE, outcome.events.len());
                self.record_thresholds().await;
                Ok(stored)
            }
            Ok((_, None)) => Err(idempotency::release(
                state,
                &self.key,
                Error::internal(anyhow::anyhow!("a recorded reply is missing")),
            )
            .await),
            Err(CommandError::Rejected(SessionError::AlreadyAnswered(_))) => {
                // Another request with this key took it over and answered first; its reply
                // stands and this one is not billed.
                let loaded = state
                    .log
                    .load_aggregate::<Session>(&self.stream)
                    .await
                    .map_err(|e| command_error(e, &reject))?;
                self.respond(&loaded.aggregate, loaded.updated_at)
                    .ok_or_else(|| Error::internal(anyhow::anyhow!("reply vanished")))
            }
            Err(error) => {
                Err(idempotency::release(state, &self.key, command_error(error, &reject)).await)
            }
        }
    }

    /// Records the successful attempts and the reply, completing the key, in one group
    /// commit, deciding on the cached session. `Err(None)` when the reply needs the
    /// step-by-step path (nothing was written); `Err(Some(_))` when the commit failed.
    async fn record_reply(
        &self,
        reply: SessionCommand,
        metadata: &domain::metadata::EventMetadata,
    ) -> Result<StoredResponse, Option<Error>> {
        let log = &self.state.log;
        let mut uow = UnitOfWork::speculative(log);
        let attempts = self
            .succeeded
            .lock()
            .expect("attempts lock poisoned")
            .clone();
        for attempt in attempts {
            let command = SessionCommand::RecordProviderAttempt {
                message_id: self.message_id.clone(),
                attempt,
            };
            uow.execute::<Session>(&self.stream, command, &())
                .await
                .map_err(|_| None)?;
        }
        let staged = uow
            .execute::<Session>(&self.stream, reply, &())
            .await
            .map_err(|_| None)?;
        let exchange = staged.aggregate.shared_exchange(&self.message_id);
        let answer = self.answer_parts();
        // What `render` needs, checked without rendering: the answer is rendered once, in the
        // commit.
        if exchange.as_ref().and_then(|e| e.reply.as_ref()).is_none() {
            return Err(None);
        }
        let respond = move |committed: &Committed| {
            let mut stored = answer
                .render(exchange.as_deref(), Some(committed.recorded_at))
                .expect("checked before the commit");
            if let Some(cursor) = committed.appended.last_cursor() {
                stored
                    .headers
                    .push((EVENT_POSITION_HEADER.to_string(), cursor.to_string()));
            }
            stored
        };
        match uow
            .commit(metadata, Some(KeyUse::Claimed(self.key.clone())), respond)
            .await
        {
            Ok((committed, stored)) => {
                self.succeeded
                    .lock()
                    .expect("attempts lock poisoned")
                    .clear();
                self.state
                    .metrics
                    .events_appended(Session::TYPE, committed.appended.events.len());
                Ok(stored)
            }
            Err(CommitError::Conflict | CommitError::KeyTaken) => Err(None),
            Err(CommitError::Database(error)) => Err(Some(error.into())),
            Err(other) => Err(Some(Error::internal(
                anyhow::Error::new(other).context("recording a reply"),
            ))),
        }
    }

    /// Records `BudgetThresholdReached` for each budget this month's spend has reached (once
    /// per month; the aggregate ignores repeats). A failure here is logged: the next reply
    /// tries again.
    async fn record_thresholds(&self) {
        let month = projections::usage::month_of(Utc::now());
        for (stream, budget) in &self.budgets {
            let scope = stream.aggregate_id.clone();
            let spent = match projections::usage::spend(
                self.state.log.db(),
                self.ctx.tenant.as_str(),
                std::slice::from_ref(&scope),
                &month,
            )
            .await
            {
                Ok(spent) => spent.get(&scope).copied().unwrap_or(0),
                Err(error) => {
                    tracing::warn!(%error, "could not read a budget's spend");
                    continue;
                }
            };
            let reached = budget
                .limit()
                .is_some_and(|(limit, _)| spent as u64 >= limit);
            if !reached || budget.alerted(&month) {
                continue;
            }
            let command = BudgetCommand::RecordThresholdReached {
                month: month.clone(),
                spent_micros: spent as u64,
            };
            let metadata = self.ctx.metadata(command.name());
            // Boxed: once a month per budget, and its future would otherwise be most of
            // this one's (which every reply awaits).
            if let Err(error) = Box::pin(self.state.log.execute::<Budget>(
                stream,
                command,
                &(),
                &metadata,
            ))
            .await
            {
                tracing::warn!(%error, "could not record a budget threshold");
            }
        }
    }

    /// The attempts recorded for this message so far, from its session's stream.
    async fn attempts(&self) -> Vec<ProviderAttempt> {
        match self.state.log.load_aggregate::<Session>(&self.stream).await {
            Ok(loaded) => attempts_of(&loaded.aggregate, &self.message_id),
            Err(error) => {
                tracing::warn!(%error, "could not reload the attempts of a message");
                Vec::new()
            }
        }
    }

    /// Seed 004's response body of a sent message, from the session's state once the reply
    /// is recorded (`None` while it is not).
    fn respond(&self, session: &Session, at: Option<DateTime<Utc>>) -> Option<StoredResponse> {
        self.answer_parts()
            .render(session.exchange(&self.message_id), at)
    }

    fn answer_parts(&self) -> Answer {
        Answer {
            session_id: self.session_id.clone(),
            agent_id: self.agent_id.clone(),
            primary_provider: self.agent.primary_provider.clone(),
            fallback_provider: self.agent.fallback_provider.clone(),
            key: self.key.key.to_string(),
            request_id: self.ctx.request_id.clone(),
        }
    }
}

impl Answer {
    /// The answer, once `exchange` (the message's, in the session) has its reply.
    fn render(
        &self,
        exchange: Option<&domain::session::Exchange>,
        at: Option<DateTime<Utc>>,
    ) -> Option<StoredResponse> {
        let exchange = exchange?;
        let reply = exchange.reply.as_ref()?;
        let attempts = exchange.attempts.as_slice();
        let summary = summarise(attempts);
        let attempted = |provider: &str| attempts.iter().any(|a| a.provider == provider);
        let fallback = self.fallback_provider.as_deref();
        let body = AnswerBody {
            message: AnswerMessage {
                content: &reply.content,
                created_at: at.unwrap_or_else(Utc::now),
                id: &reply.message_id,
                incomplete: reply.incomplete,
                reply_to: &reply.reply_to,
                role: "assistant",
                session_id: &self.session_id,
            },
            metadata: AnswerMetadata {
                agent_id: &self.agent_id,
                attempts: summary,
                client_disconnected: reply.client_disconnected,
                fallback_attempted: fallback.filter(|f| attempted(f)),
                fallback_used: reply.fallback_used,
                idempotency: AnswerIdempotency {
                    key: &self.key,
                    replayed: false,
                },
                model: &reply.model,
                primary_attempted: &self.primary_provider,
                provider_used: &reply.provider,
                request_id: &self.request_id,
                streamed: reply.streamed,
                usage: AnswerUsage {
                    cost_micros: reply.cost_micros,
                    cost_usd: micros_to_usd(reply.cost_micros),
                    pricing: AnswerPricing {
                        usd_per_1k_tokens: reply.price.usd_per_1k_tokens(),
                    },
                    tokens_in: reply.tokens_in,
                    tokens_out: reply.tokens_out,
                },
            },
        };
        Some(idempotency::json_response(201, Vec::new(), &body))
    }
}

// Seed 004's body of a sent message, serialized straight from the reply (no `Value` tree
// built and dropped per message). Fields are declared in alphabetical order, the order a
// `serde_json::Value` object serializes its keys in, so the body is what it always was.

#[derive(serde::Serialize, utoipa::ToSchema)]
/// The answer to a message: the reply, and how it was produced and billed.
pub struct AnswerBody<'a> {
    pub message: AnswerMessage<'a>,
    pub metadata: AnswerMetadata<'a>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnswerMessage<'a> {
    pub content: &'a str,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub created_at: DateTime<Utc>,
    pub id: &'a str,
    /// The provider's stream broke: the part received was recorded and billed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
    pub reply_to: &'a str,
    /// `assistant`.
    pub role: &'static str,
    pub session_id: &'a str,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnswerMetadata<'a> {
    pub agent_id: &'a str,
    /// One entry per provider asked, in order, with its calls.
    #[schema(value_type = Vec<Object>)]
    pub attempts: Vec<ProviderSummary<'a>>,
    pub client_disconnected: bool,
    pub fallback_attempted: Option<&'a str>,
    pub fallback_used: bool,
    pub idempotency: AnswerIdempotency<'a>,
    pub model: &'a str,
    pub primary_attempted: &'a str,
    pub provider_used: &'a str,
    pub request_id: &'a str,
    pub streamed: bool,
    pub usage: AnswerUsage,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AnswerIdempotency<'a> {
    pub key: &'a str,
    pub replayed: bool,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnswerUsage {
    pub cost_micros: u64,
    pub cost_usd: f64,
    pub pricing: AnswerPricing,
    pub tokens_in: u64,
    pub tokens_out: u64,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnswerPricing {
    usd_per_1k_tokens: f64,
}

/// The provider attempts recorded for `message_id`.
fn attempts_of(session: &Session, message_id: &str) -> Vec<ProviderAttempt> {
    session
        .exchange(message_id)
        .map(|e| e.attempts.clone())
        .unwrap_or_default()
}

/// Seed 004's `attempts[]`: one entry per provider asked, in order, with its retries, the
/// total latency, the last HTTP status and, when it failed, the last error code.
pub fn summarise(attempts: &[ProviderAttempt]) -> Vec<ProviderSummary<'_>> {
    let mut providers: Vec<&str> = Vec::new();
    for attempt in attempts {
        if !providers.contains(&attempt.provider.as_str()) {
            providers.push(&attempt.provider);
        }
    }
    providers
        .into_iter()
        .map(|provider| {
            let calls: Vec<Call<'_>> = attempts
                .iter()
                .filter(|a| a.provider == provider)
                .map(Call)
                .collect();
            let last = calls.last().expect("at least one call per provider").0;
            let succeeded = last.succeeded();
            ProviderSummary {
                error_code: if succeeded {
                    None
                } else {
                    last.error_code.as_deref()
                },
                http_status: last.http_status,
                latency_ms: calls.iter().map(|c| c.0.latency_ms).sum(),
                provider,
                retries: calls.len() - 1,
                status: if succeeded { "success" } else { "error" },
                calls,
            }
        })
        .collect()
}

// Serialized straight from the attempts, as the answer's body is (no `Value` tree built and
// dropped per message), with fields in alphabetical order: the order a `serde_json::Value`
// object, which these once were, serializes its keys in.

/// One provider's entry of [`summarise`].
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSummary<'a> {
    calls: Vec<Call<'a>>,
    error_code: Option<&'a str>,
    http_status: Option<u16>,
    latency_ms: u64,
    provider: &'a str,
    retries: usize,
    /// `success` or `error`: how the provider's last call ended.
    status: &'static str,
}

/// One call of a [`ProviderSummary`]: a [`ProviderAttempt`] with its fields in alphabetical
/// order.
#[derive(Debug)]
pub struct Call<'a>(&'a ProviderAttempt);

impl serde::Serialize for Call<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let a = self.0;
        let mut call = serializer.serialize_struct("ProviderAttempt", 8)?;
        call.serialize_field("attempt", &a.attempt)?;
        call.serialize_field("errorCode", &a.error_code)?;
        call.serialize_field("httpStatus", &a.http_status)?;
        call.serialize_field("latencyMs", &a.latency_ms)?;
        match &a.model {
            Some(model) => call.serialize_field("model", model)?,
            None => call.skip_field("model")?,
        }
        call.serialize_field("provider", &a.provider)?;
        match &a.retry_after_ms {
            Some(after) => call.serialize_field("retryAfterMs", after)?,
            None => call.skip_field("retryAfterMs")?,
        }
        call.serialize_field("status", &a.status)?;
        call.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::provider::Price;
    use domain::session::Exchange;

    /// The ids a retried message is recognised by never change between versions: SHA-256 of
    /// the NUL-terminated parts (and `reply`), as computed elsewhere (Python's hashlib).
    #[test]
    fn message_ids_are_the_hashes_of_their_parts() {
        assert_eq!(
            derived_ids(&["acme", "sess-1", "key-1"]),
            (
                "msg_3721f1bd9536396b8e2d5ad022617eaf".to_string(),
                "msg_0fea63b1f9134b1d33eb7034455f6d55".to_string()
            )
        );
        // Parts longer than one block of the hash.
        let (session, key) = ("s".repeat(70), "k".repeat(100));
        assert_eq!(
            derived_ids(&["acme", &session, &key]),
            (
                "msg_676af59f106410f80191419de3253af5".to_string(),
                "msg_18419f705309d601d21a6881ec61e299".to_string()
            )
        );
    }

    fn attempt(provider: &str, status: &str) -> ProviderAttempt {
        ProviderAttempt {
            provider: provider.into(),
            model: Some("m-1".into()),
            attempt: 1,
            status: status.into(),
            http_status: Some(if status == "success" { 200 } else { 503 }),
            latency_ms: 7,
            error_code: (status != "success").then(|| "PROVIDER_ERROR".to_string()),
            retry_after_ms: None,
        }
    }

    /// The body is written from structs, whose fields must come in the order a
    /// `serde_json::Value` object (sorted keys) gives: the same bytes as ever.
    #[test]
    fn answer_body_keeps_sorted_keys() {
        for incomplete in [false, true] {
            let exchange = Exchange {
                content: "hello".into(),
                attempts: vec![
                    ProviderAttempt {
                        model: None,
                        retry_after_ms: Some(250),
                        ..attempt("vendorA", "error")
                    },
                    ProviderAttempt {
                        attempt: 2,
                        ..attempt("vendorA", "error")
                    },
                    attempt("vendorB", "success"),
                ],
                reply: Some(AssistantReply {
                    message_id: "msg_2".into(),
                    reply_to: "msg_1".into(),
                    agent_id: "agent-1".into(),
                    content: "hi \"there\"".into(),
                    provider: "vendorB".into(),
                    model: "m-1".into(),
                    tokens_in: 12,
                    tokens_out: 30,
                    cost_micros: 1_260,
                    price: Price {
                        micro_usd_per_1k_tokens: 30_000,
                    },
                    fallback_used: true,
                    streamed: false,
                    client_disconnected: false,
                    incomplete,
                }),
                failed: false,
            };
            let answer = Answer {
                session_id: "sess-1".into(),
                agent_id: "agent-1".into(),
                primary_provider: "vendorA".into(),
                fallback_provider: Some("vendorB".into()),
                key: "key-1".into(),
                request_id: "req-1".into(),
            };
            let at = DateTime::parse_from_rfc3339("2026-11-23T10:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc);
            let stored = answer.render(Some(&exchange), Some(at)).expect("a reply");
            let value: Value = serde_json::from_slice(&stored.body).unwrap();
            assert_eq!(stored.body, serde_json::to_vec(&value).unwrap());
            assert_eq!(
                value["message"]["incomplete"].as_bool(),
                incomplete.then_some(true)
            );
            assert_eq!(
                value["metadata"]["usage"]["pricing"]["usdPer1kTokens"],
                0.03
            );
            assert_eq!(value["metadata"]["fallbackAttempted"], "vendorB");
            assert_eq!(value["message"]["createdAt"], "2026-11-23T10:00:00.123456Z");
            let attempts = &value["metadata"]["attempts"];
            assert_eq!(attempts[0]["retries"], 1);
            assert_eq!(attempts[0]["latencyMs"], 14);
            assert_eq!(attempts[0]["errorCode"], "PROVIDER_ERROR");
            assert_eq!(attempts[0]["calls"][0]["retryAfterMs"], 250);
            assert!(attempts[0]["calls"][0].get("model").is_none());
            assert_eq!(attempts[1]["calls"][0]["model"], "m-1");
            assert_eq!(attempts[1]["errorCode"], Value::Null);
        }
    }
}
