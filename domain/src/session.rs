//! The conversation session: one customer talking to one agent.
//!
//! A message exchange is recorded in steps, each its own command, so that a crash between
//! them loses nothing and doubles nothing (the recovery points of the message flow):
//! 1. `RecordUserMessage`: the user's message, under an id derived from the request's
//!    idempotency key. Recording an id that is already there changes nothing, so a retry
//!    after a crash resumes instead of repeating.
//! 2. `RecordProviderAttempt`, once per provider call, whatever its outcome.
//! 3. `RecordAssistantReply`: the reply and its usage, once per user message. This is the
//!    only event that bills, and the aggregate refuses a second one for the same message.
//!    Or `RecordMessageFailure` when every provider failed (nothing billed; a retry of the
//!    same request may still answer the message later).
//!
//! Rules: a closed session takes no new messages; a session cannot be created for, and takes
//! no messages to, an archived agent.

use std::collections::BTreeMap;
use std::sync::Arc;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::agent::AgentStatus;
use crate::provider::{ChatMessage, ChatRole, Price};

/// Longest message content, in characters.
pub const MAX_CONTENT_LEN: usize = 32_000;
/// Longest customer id.
pub const MAX_CUSTOMER_ID_LEN: usize = 200;

/// Whether a session takes messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    #[default]
    Active,
    Closed,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Closed => "closed",
        }
    }
}

/// The outcome of one provider call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderAttempt {
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// 1 for the provider's first call of this message, 2 for its first retry, …
    pub attempt: u32,
    /// `success` or `error`.
    pub status: String,
    #[serde(default)]
    pub http_status: Option<u16>,
    pub latency_ms: u64,
    /// `TIMEOUT`, `RATE_LIMITED`, `PROVIDER_ERROR`, `BAD_RESPONSE`, `REQUEST_REJECTED`.
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ProviderAttempt {
    pub fn succeeded(&self) -> bool {
        self.status == "success"
    }
}

/// An assistant reply and what it cost.
// Its strings are shared: a reply is copied into the command kept for a fallback and into
// the event the session applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssistantReply {
    /// The reply's own message id.
    #[schema(value_type = String)]
    pub message_id: Arc<str>,
    /// The user message it answers.
    #[schema(value_type = String)]
    pub reply_to: Arc<str>,
    /// The agent of the session, so that usage can be attributed without another stream.
    #[serde(default)]
    #[schema(value_type = String)]
    pub agent_id: Arc<str>,
    #[schema(value_type = String)]
    pub content: Arc<str>,
    #[schema(value_type = String)]
    pub provider: Arc<str>,
    #[schema(value_type = String)]
    pub model: Arc<str>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// `price.cost_micros(tokens_in, tokens_out)`, fixed when the reply was recorded.
    pub cost_micros: u64,
    /// The price in force when the reply was recorded; a later price change never rewrites
    /// this.
    pub price: Price,
    pub fallback_used: bool,
    #[serde(default)]
    pub streamed: bool,
    /// The client went away before the end of a streamed reply; the whole reply was still
    /// taken from the provider and billed.
    #[serde(default)]
    pub client_disconnected: bool,
    /// The provider failed after the first chunk: `content` is what it had produced, and
    /// that is what was billed.
    #[serde(default)]
    pub incomplete: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SessionCommand {
    CreateSession {
        id: String,
        agent_id: String,
        agent_status: AgentStatus,
        customer_id: Option<String>,
        metadata: Map<String, Value>,
    },
    CloseSession,
    RecordUserMessage {
        message_id: String,
        content: String,
        agent_status: AgentStatus,
    },
    RecordProviderAttempt {
        message_id: String,
        attempt: ProviderAttempt,
    },
    RecordAssistantReply(AssistantReply),
    RecordMessageFailure {
        message_id: String,
    },
}

impl SessionCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::CreateSession { .. } => "CreateSession",
            Self::CloseSession => "CloseSession",
            Self::RecordUserMessage { .. } => "RecordUserMessage",
            Self::RecordProviderAttempt { .. } => "RecordProviderAttempt",
            Self::RecordAssistantReply(_) => "RecordAssistantReply",
            Self::RecordMessageFailure { .. } => "RecordMessageFailure",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum SessionEvent {
    /// A conversation session with an agent was opened.
    #[serde(rename_all = "camelCase")]
    SessionCreated {
        id: String,
        agent_id: String,
        #[serde(default)]
        customer_id: Option<String>,
        metadata: Map<String, Value>,
    },
    /// A session was closed; it takes no more messages.
    #[serde(rename_all = "camelCase")]
    SessionClosed { id: String },
    /// A user's message was recorded, before it is sent to a provider.
    #[serde(rename_all = "camelCase")]
    UserMessageRecorded {
        session_id: String,
        message_id: String,
        content: String,
    },
    /// One call to a provider for a message, successful or not (retries and fallbacks each have one).
    #[serde(rename_all = "camelCase")]
    ProviderCallAttempted {
        session_id: String,
        message_id: String,
        #[serde(flatten)]
        attempt: ProviderAttempt,
    },
    /// The assistant's reply to a message, with the provider, tokens and exact cost that bill it.
    #[serde(rename_all = "camelCase")]
    AssistantMessageRecorded {
        session_id: String,
        #[serde(flatten)]
        reply: AssistantReply,
    },
    /// No provider could answer a message.
    #[serde(rename_all = "camelCase")]
    MessageFailed {
        session_id: String,
        message_id: String,
        error_code: String,
    },
}

/// The recorded type of each [`SessionEvent`] (its `event_type`, the name it is stored and
/// decoded under; pinned to the variants by a test): a reader that wants some of a session's
/// events tells them by it before it decodes any.
impl SessionEvent {
    pub const SESSION_CREATED: &'static str = "SessionCreated";
    pub const SESSION_CLOSED: &'static str = "SessionClosed";
    pub const USER_MESSAGE_RECORDED: &'static str = "UserMessageRecorded";
    pub const PROVIDER_CALL_ATTEMPTED: &'static str = "ProviderCallAttempted";
    pub const ASSISTANT_MESSAGE_RECORDED: &'static str = "AssistantMessageRecorded";
    pub const MESSAGE_FAILED: &'static str = "MessageFailed";
}

impl DomainEvent for SessionEvent {
    fn event_type(&self) -> String {
        match self {
            Self::SessionCreated { .. } => "SessionCreated",
            Self::SessionClosed { .. } => "SessionClosed",
            Self::UserMessageRecorded { .. } => "UserMessageRecorded",
            Self::ProviderCallAttempted { .. } => "ProviderCallAttempted",
            Self::AssistantMessageRecorded { .. } => "AssistantMessageRecorded",
            Self::MessageFailed { .. } => "MessageFailed",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        <Self as crate::versioned::Versioned>::VERSION.to_string()
    }
}

impl crate::versioned::Versioned for SessionEvent {
    const VERSION: &'static str = "1.0";
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("a session with this id already exists")]
    AlreadyExists,
    #[error("no such session")]
    NotFound,
    #[error("the session is closed")]
    Closed,
    #[error("the agent is archived")]
    AgentArchived,
    #[error("no message '{0}' in this session")]
    UnknownMessage(String),
    #[error("message '{0}' already has a reply")]
    AlreadyAnswered(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

/// One user message and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Exchange {
    pub content: String,
    pub attempts: Vec<ProviderAttempt>,
    pub reply: Option<AssistantReply>,
    pub failed: bool,
}

/// A session, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Session {
    id: Option<String>,
    agent_id: String,
    customer_id: Option<String>,
    metadata: Map<String, Value>,
    status: SessionStatus,
    /// Shared: the answer to a message is rendered from its exchange after the session moves on.
    exchanges: BTreeMap<String, Arc<Exchange>>,
    /// The conversation so far, in order, by message id: what a provider is shown as
    /// context.
    conversation: Vec<(String, ChatMessage)>,
}

impl Session {
    pub fn exists(&self) -> bool {
        self.id.is_some()
    }

    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    pub fn status(&self) -> SessionStatus {
        self.status
    }

    pub fn customer_id(&self) -> Option<&str> {
        self.customer_id.as_deref()
    }

    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }

    /// User and assistant messages recorded so far.
    pub fn message_count(&self) -> usize {
        self.conversation.len()
    }

    pub fn exchange(&self, message_id: &str) -> Option<&Exchange> {
        self.exchanges.get(message_id).map(Arc::as_ref)
    }

    /// [`Session::exchange`], shared (a reference count, not a copy of its messages).
    pub fn shared_exchange(&self, message_id: &str) -> Option<Arc<Exchange>> {
        self.exchanges.get(message_id).cloned()
    }

    /// The tokens of the last `limit` messages of the conversation, estimated as the
    /// simulated vendors count them (one per four characters).
    pub fn recent_tokens(&self, limit: usize) -> u64 {
        self.conversation
            .iter()
            .rev()
            .take(limit)
            .map(|(_, message)| crate::provider::estimate_tokens(&message.content))
            .sum()
    }

    /// The conversation before `message_id` (at most the last `limit` messages), then
    /// `message_id` itself.
    pub fn context_for(&self, message_id: &str, limit: usize) -> Vec<ChatMessage> {
        // From the end: the message asked about is almost always the last one.
        let Some(at) = self
            .conversation
            .iter()
            .rposition(|(id, _)| id == message_id)
        else {
            return Vec::new();
        };
        let start = at.saturating_sub(limit);
        self.conversation[start..=at]
            .iter()
            .map(|(_, message)| message.clone())
            .collect()
    }

    fn id(&self) -> Result<String, SessionError> {
        self.id.clone().ok_or(SessionError::NotFound)
    }

    fn pending(&self, message_id: &str) -> Result<&Exchange, SessionError> {
        let exchange = self
            .exchanges
            .get(message_id)
            .ok_or_else(|| SessionError::UnknownMessage(message_id.to_string()))?;
        if exchange.reply.is_some() {
            return Err(SessionError::AlreadyAnswered(message_id.to_string()));
        }
        Ok(exchange)
    }
}

fn invalid(field: &str, message: impl Into<String>) -> SessionError {
    SessionError::Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

impl Aggregate for Session {
    const TYPE: &'static str = "Session";
    type Command = SessionCommand;
    type Event = SessionEvent;
    type Error = SessionError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            SessionCommand::CreateSession {
                id,
                agent_id,
                agent_status,
                customer_id,
                metadata,
            } => {
                if self.exists() {
                    return Err(SessionError::AlreadyExists);
                }
                if agent_status == AgentStatus::Archived {
                    return Err(SessionError::AgentArchived);
                }
                if customer_id
                    .as_ref()
                    .is_some_and(|c| c.is_empty() || c.chars().count() > MAX_CUSTOMER_ID_LEN)
                {
                    return Err(invalid(
                        "customerId",
                        format!("must be 1 to {MAX_CUSTOMER_ID_LEN} characters"),
                    ));
                }
                let event = SessionEvent::SessionCreated {
                    id,
                    agent_id,
                    customer_id,
                    metadata,
                };
                sink.write(event, self).await;
            }
            SessionCommand::CloseSession => {
                let id = self.id()?;
                if self.status == SessionStatus::Active {
                    sink.write(SessionEvent::SessionClosed { id }, self).await;
                }
            }
            SessionCommand::RecordUserMessage {
                message_id,
                content,
                agent_status,
            } => {
                let session_id = self.id()?;
                if self.exchanges.contains_key(&message_id) {
                    // A retry of a request whose message is already recorded: resume.
                    return Ok(());
                }
                if self.status == SessionStatus::Closed {
                    return Err(SessionError::Closed);
                }
                if agent_status == AgentStatus::Archived {
                    return Err(SessionError::AgentArchived);
                }
                if content.trim().is_empty() || content.chars().count() > MAX_CONTENT_LEN {
                    return Err(invalid(
                        "content",
                        format!("must be 1 to {MAX_CONTENT_LEN} characters"),
                    ));
                }
                let event = SessionEvent::UserMessageRecorded {
                    session_id,
                    message_id,
                    content,
                };
                sink.write(event, self).await;
            }
            SessionCommand::RecordProviderAttempt {
                message_id,
                attempt,
            } => {
                let session_id = self.id()?;
                self.pending(&message_id)?;
                let event = SessionEvent::ProviderCallAttempted {
                    session_id,
                    message_id,
                    attempt,
                };
                sink.write(event, self).await;
            }
            SessionCommand::RecordAssistantReply(reply) => {
                let session_id = self.id()?;
                self.pending(&reply.reply_to)?;
                let event = SessionEvent::AssistantMessageRecorded { session_id, reply };
                sink.write(event, self).await;
            }
            SessionCommand::RecordMessageFailure { message_id } => {
                let session_id = self.id()?;
                self.pending(&message_id)?;
                let event = SessionEvent::MessageFailed {
                    session_id,
                    message_id,
                    error_code: "ALL_PROVIDERS_FAILED".into(),
                };
                sink.write(event, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            SessionEvent::SessionCreated {
                id,
                agent_id,
                customer_id,
                metadata,
            } => {
                self.id = Some(id);
                self.agent_id = agent_id;
                self.customer_id = customer_id;
                self.metadata = metadata;
            }
            SessionEvent::SessionClosed { .. } => self.status = SessionStatus::Closed,
            SessionEvent::UserMessageRecorded {
                message_id,
                content,
                ..
            } => {
                self.conversation.push((
                    message_id.clone(),
                    ChatMessage {
                        role: ChatRole::User,
                        content: content.as_str().into(),
                    },
                ));
                self.exchanges.insert(
                    message_id,
                    Arc::new(Exchange {
                        content,
                        ..Exchange::default()
                    }),
                );
            }
            SessionEvent::ProviderCallAttempted {
                message_id,
                attempt,
                ..
            } => {
                if let Some(exchange) = self.exchanges.get_mut(&message_id) {
                    Arc::make_mut(exchange).attempts.push(attempt);
                }
            }
            SessionEvent::AssistantMessageRecorded { reply, .. } => {
                self.conversation.push((
                    reply.message_id.to_string(),
                    ChatMessage {
                        role: ChatRole::Assistant,
                        content: reply.content.clone(),
                    },
                ));
                if let Some(exchange) = self.exchanges.get_mut(&*reply.reply_to) {
                    Arc::make_mut(exchange).reply = Some(reply);
                }
            }
            SessionEvent::MessageFailed { message_id, .. } => {
                if let Some(exchange) = self.exchanges.get_mut(&message_id) {
                    Arc::make_mut(exchange).failed = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    /// Each recorded type a reader tells events apart by is the name the event is stored and
    /// decoded under (a renamed variant fails here, not as events a projector never sees).
    #[test]
    fn every_recorded_type_names_a_variant() {
        let types = [
            SessionEvent::SESSION_CREATED,
            SessionEvent::SESSION_CLOSED,
            SessionEvent::USER_MESSAGE_RECORDED,
            SessionEvent::PROVIDER_CALL_ATTEMPTED,
            SessionEvent::ASSISTANT_MESSAGE_RECORDED,
            SessionEvent::MESSAGE_FAILED,
        ];
        for name in types {
            let error = serde_json::from_value::<SessionEvent>(serde_json::json!({ name: {} }))
                .expect_err("an empty payload lacks fields");
            assert!(
                error.to_string().contains("missing field"),
                "{name}: {error}"
            );
        }
        let error =
            serde_json::from_value::<SessionEvent>(serde_json::json!({ "Nope": {} })).unwrap_err();
        assert!(error.to_string().contains("unknown variant"), "{error}");
    }

    use super::*;

    fn created() -> SessionEvent {
        SessionEvent::SessionCreated {
            id: "ses_1".into(),
            agent_id: "agt_1".into(),
            customer_id: Some("c-1".into()),
            metadata: Map::new(),
        }
    }

    fn user(id: &str) -> SessionEvent {
        SessionEvent::UserMessageRecorded {
            session_id: "ses_1".into(),
            message_id: id.into(),
            content: "Hello".into(),
        }
    }

    fn reply(to: &str) -> AssistantReply {
        AssistantReply {
            message_id: format!("{to}-reply").into(),
            reply_to: to.into(),
            agent_id: "agt_1".into(),
            content: "Hi!".into(),
            provider: "vendorA".into(),
            model: "a-1".into(),
            tokens_in: 2,
            tokens_out: 1,
            cost_micros: 6,
            price: Price {
                micro_usd_per_1k_tokens: 2000,
            },
            fallback_used: false,
            streamed: false,
            client_disconnected: false,
            incomplete: false,
        }
    }

    #[test]
    fn recording_a_message_twice_resumes_instead_of_repeating() {
        TestFramework::<Session>::with(())
            .given(vec![created(), user("msg_1")])
            .when(SessionCommand::RecordUserMessage {
                message_id: "msg_1".into(),
                content: "Hello".into(),
                agent_status: AgentStatus::Active,
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_message_is_billed_once() {
        TestFramework::<Session>::with(())
            .given(vec![
                created(),
                user("msg_1"),
                SessionEvent::AssistantMessageRecorded {
                    session_id: "ses_1".into(),
                    reply: reply("msg_1"),
                },
            ])
            .when(SessionCommand::RecordAssistantReply(reply("msg_1")))
            .then_expect_error(SessionError::AlreadyAnswered("msg_1".into()));
    }

    #[test]
    fn a_failed_message_may_still_be_answered_by_a_retry() {
        TestFramework::<Session>::with(())
            .given(vec![
                created(),
                user("msg_1"),
                SessionEvent::MessageFailed {
                    session_id: "ses_1".into(),
                    message_id: "msg_1".into(),
                    error_code: "ALL_PROVIDERS_FAILED".into(),
                },
            ])
            .when(SessionCommand::RecordAssistantReply(reply("msg_1")))
            .then_expect_events(vec![SessionEvent::AssistantMessageRecorded {
                session_id: "ses_1".into(),
                reply: reply("msg_1"),
            }]);
    }

    #[test]
    fn a_closed_session_takes_no_new_message() {
        TestFramework::<Session>::with(())
            .given(vec![
                created(),
                SessionEvent::SessionClosed { id: "ses_1".into() },
            ])
            .when(SessionCommand::RecordUserMessage {
                message_id: "msg_2".into(),
                content: "Hello?".into(),
                agent_status: AgentStatus::Active,
            })
            .then_expect_error(SessionError::Closed);
    }

    #[test]
    fn no_session_for_an_archived_agent() {
        TestFramework::<Session>::with(())
            .given_no_previous_events()
            .when(SessionCommand::CreateSession {
                id: "ses_1".into(),
                agent_id: "agt_1".into(),
                agent_status: AgentStatus::Archived,
                customer_id: None,
                metadata: Map::new(),
            })
            .then_expect_error(SessionError::AgentArchived);
    }

    #[test]
    fn the_context_is_the_conversation_so_far() {
        let mut session = Session::default();
        session.apply(created());
        session.apply(SessionEvent::UserMessageRecorded {
            session_id: "ses_1".into(),
            message_id: "msg_1".into(),
            content: "One".into(),
        });
        session.apply(SessionEvent::AssistantMessageRecorded {
            session_id: "ses_1".into(),
            reply: reply("msg_1"),
        });
        session.apply(SessionEvent::UserMessageRecorded {
            session_id: "ses_1".into(),
            message_id: "msg_2".into(),
            content: "Two".into(),
        });
        let context = session.context_for("msg_2", 10);
        let contents: Vec<&str> = context.iter().map(|m| &*m.content).collect();
        assert_eq!(contents, ["One", "Hi!", "Two"]);
        assert_eq!(session.context_for("msg_2", 1).len(), 2);
    }
}
