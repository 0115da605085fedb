//! The AI agent: a named configuration of providers, model and prompt, owned by a tenant.
//!
//! The aggregate protects these rules: an agent is created once, its configuration is always
//! valid (known providers, a fallback that differs from the primary, temperature and token
//! limits in range), an archived agent cannot be changed, and a command that names the version
//! it expects is refused when the agent has moved on.

use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::merge_patch;

/// Longest agent name.
pub const MAX_NAME_LEN: usize = 200;
/// Longest description and system prompt.
pub const MAX_PROMPT_LEN: usize = 20_000;
/// Largest `maxTokens`.
pub const MAX_TOKENS_LIMIT: u32 = 128_000;

/// An agent's configuration, as clients write it and events record it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub primary_provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_provider: Option<String>,
    /// The model, for every provider that has no entry in `models`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The model per provider, where they differ.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
}

impl AgentConfig {
    /// The model to ask `provider` for, if the agent names one.
    pub fn model_for(&self, provider: &str) -> Option<&str> {
        self.models
            .get(provider)
            .or(self.model.as_ref())
            .map(String::as_str)
    }

    /// The providers to try, in order.
    pub fn providers(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.primary_provider.as_str()).chain(self.fallback_provider.as_deref())
    }

    /// Every rule the configuration breaks, one entry per field.
    pub fn violations(&self, known_providers: &[String]) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let mut error = |field: &str, message: String| errors.push((field.to_string(), message));
        let name = self.name.trim();
        if name.is_empty() || self.name.chars().count() > MAX_NAME_LEN {
            error("name", format!("must be 1 to {MAX_NAME_LEN} characters"));
        }
        for (field, value) in [
            ("description", &self.description),
            ("systemPrompt", &self.system_prompt),
        ] {
            if value
                .as_ref()
                .is_some_and(|v| v.chars().count() > MAX_PROMPT_LEN)
            {
                error(
                    field,
                    format!("must be at most {MAX_PROMPT_LEN} characters"),
                );
            }
        }
        let known = |provider: &str| known_providers.iter().any(|p| p == provider);
        if !known(&self.primary_provider) {
            error(
                "primaryProvider",
                format!("must be one of {}", known_providers.join(", ")),
            );
        }
        match &self.fallback_provider {
            Some(fallback) if !known(fallback) => error(
                "fallbackProvider",
                format!("must be one of {}", known_providers.join(", ")),
            ),
            Some(fallback) if *fallback == self.primary_provider => error(
                "fallbackProvider",
                "must differ from primaryProvider".into(),
            ),
            _ => {}
        }
        for provider in self.models.keys() {
            if !known(provider) {
                error(
                    &format!("models.{provider}"),
                    "names an unknown provider".into(),
                );
            }
        }
        if self
            .temperature
            .is_some_and(|t| !t.is_finite() || !(0.0..=2.0).contains(&t))
        {
            error("temperature", "must be between 0 and 2".into());
        }
        if self
            .max_tokens
            .is_some_and(|m| m == 0 || m > MAX_TOKENS_LIMIT)
        {
            error(
                "maxTokens",
                format!("must be between 1 and {MAX_TOKENS_LIMIT}"),
            );
        }
        errors
    }
}

/// An agent's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    #[default]
    Active,
    Archived,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Archived => "archived",
        }
    }
}

/// How an update changes the configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentChange {
    /// `PUT`: the whole configuration.
    Replace(AgentConfig),
    /// `PATCH`: a JSON merge patch of the configuration.
    Patch(Map<String, Value>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum AgentCommand {
    CreateAgent {
        id: String,
        config: AgentConfig,
    },
    UpdateAgent {
        change: AgentChange,
        expected_version: Option<u64>,
    },
    ArchiveAgent {
        expected_version: Option<u64>,
    },
}

impl AgentCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::CreateAgent { .. } => "CreateAgent",
            Self::UpdateAgent { .. } => "UpdateAgent",
            Self::ArchiveAgent { .. } => "ArchiveAgent",
        }
    }
}

/// What happened to an agent. Each event carries the whole configuration, so a projection
/// never needs an earlier event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum AgentEvent {
    /// An agent was created with this configuration.
    #[serde(rename_all = "camelCase")]
    AgentCreated { id: String, config: AgentConfig },
    /// An agent's configuration was changed; the event carries the whole new configuration.
    #[serde(rename_all = "camelCase")]
    AgentUpdated { id: String, config: AgentConfig },
    /// An agent was archived: it keeps its sessions and takes no new ones.
    #[serde(rename_all = "camelCase")]
    AgentArchived { id: String },
}

impl DomainEvent for AgentEvent {
    fn event_type(&self) -> String {
        match self {
            Self::AgentCreated { .. } => "AgentCreated",
            Self::AgentUpdated { .. } => "AgentUpdated",
            Self::AgentArchived { .. } => "AgentArchived",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        <Self as crate::versioned::Versioned>::VERSION.to_string()
    }
}

impl crate::versioned::Versioned for AgentEvent {
    const VERSION: &'static str = "1.0";
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("an agent with this id already exists")]
    AlreadyExists,
    #[error("no such agent")]
    NotFound,
    #[error("the agent is archived")]
    Archived,
    #[error("the agent was modified: expected version {expected}, current version {actual}")]
    VersionConflict { expected: u64, actual: u64 },
    /// The configuration breaks rules: `(field, message)` pairs.
    #[error("the agent configuration is not valid")]
    Invalid(Vec<(String, String)>),
}

/// What an agent's commands need from outside: the providers the gateway is configured with.
#[derive(Debug, Clone, Default)]
pub struct AgentServices {
    pub providers: Vec<String>,
}

/// An agent, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    id: Option<String>,
    config: Option<AgentConfig>,
    status: AgentStatus,
    version: u64,
}

impl Agent {
    pub fn exists(&self) -> bool {
        self.id.is_some()
    }

    pub fn config(&self) -> Option<&AgentConfig> {
        self.config.as_ref()
    }

    pub fn status(&self) -> AgentStatus {
        self.status
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    fn check_version(&self, expected: Option<u64>) -> Result<(), AgentError> {
        match expected {
            Some(expected) if expected != self.version => Err(AgentError::VersionConflict {
                expected,
                actual: self.version,
            }),
            _ => Ok(()),
        }
    }
}

fn validated(config: AgentConfig, services: &AgentServices) -> Result<AgentConfig, AgentError> {
    let violations = config.violations(&services.providers);
    if violations.is_empty() {
        Ok(config)
    } else {
        Err(AgentError::Invalid(violations))
    }
}

impl Aggregate for Agent {
    const TYPE: &'static str = "Agent";
    type Command = AgentCommand;
    type Event = AgentEvent;
    type Error = AgentError;
    type Services = AgentServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            AgentCommand::CreateAgent { id, config } => {
                if self.exists() {
                    return Err(AgentError::AlreadyExists);
                }
                let config = validated(config, services)?;
                sink.write(AgentEvent::AgentCreated { id, config }, self)
                    .await;
            }
            AgentCommand::UpdateAgent {
                change,
                expected_version,
            } => {
                let (Some(id), Some(current)) = (self.id.clone(), self.config.clone()) else {
                    return Err(AgentError::NotFound);
                };
                if self.status == AgentStatus::Archived {
                    return Err(AgentError::Archived);
                }
                self.check_version(expected_version)?;
                let config = match change {
                    AgentChange::Replace(config) => config,
                    AgentChange::Patch(patch) => {
                        let mut document =
                            serde_json::to_value(&current).expect("a config serializes");
                        merge_patch::apply(&mut document, &Value::Object(patch));
                        serde_json::from_value(document).map_err(|e| {
                            AgentError::Invalid(vec![(String::new(), e.to_string())])
                        })?
                    }
                };
                let config = validated(config, services)?;
                if config == current {
                    return Ok(());
                }
                sink.write(AgentEvent::AgentUpdated { id, config }, self)
                    .await;
            }
            AgentCommand::ArchiveAgent { expected_version } => {
                let Some(id) = self.id.clone() else {
                    return Err(AgentError::NotFound);
                };
                self.check_version(expected_version)?;
                if self.status == AgentStatus::Active {
                    sink.write(AgentEvent::AgentArchived { id }, self).await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        match event {
            AgentEvent::AgentCreated { id, config } => {
                self.id = Some(id);
                self.config = Some(config);
            }
            AgentEvent::AgentUpdated { config, .. } => self.config = Some(config),
            AgentEvent::AgentArchived { .. } => self.status = AgentStatus::Archived,
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    fn services() -> AgentServices {
        AgentServices {
            providers: vec!["vendorA".into(), "vendorB".into()],
        }
    }

    fn config() -> AgentConfig {
        AgentConfig {
            name: "Support".into(),
            description: None,
            primary_provider: "vendorA".into(),
            fallback_provider: Some("vendorB".into()),
            model: None,
            models: BTreeMap::new(),
            system_prompt: Some("Be kind.".into()),
            temperature: Some(0.7),
            max_tokens: Some(256),
        }
    }

    fn created() -> AgentEvent {
        AgentEvent::AgentCreated {
            id: "agt_1".into(),
            config: config(),
        }
    }

    #[test]
    fn an_invalid_configuration_is_refused_field_by_field() {
        let mut bad = config();
        bad.name = " ".into();
        bad.fallback_provider = Some("vendorA".into());
        bad.temperature = Some(3.0);
        bad.models.insert("vendorZ".into(), "z-1".into());
        TestFramework::<Agent>::with(services())
            .given_no_previous_events()
            .when(AgentCommand::CreateAgent {
                id: "agt_1".into(),
                config: bad,
            })
            .then_expect_error(AgentError::Invalid(vec![
                ("name".into(), "must be 1 to 200 characters".into()),
                (
                    "fallbackProvider".into(),
                    "must differ from primaryProvider".into(),
                ),
                ("models.vendorZ".into(), "names an unknown provider".into()),
                ("temperature".into(), "must be between 0 and 2".into()),
            ]));
    }

    #[test]
    fn a_patch_merges_into_the_configuration() {
        let mut patch = Map::new();
        patch.insert("temperature".into(), Value::Null);
        patch.insert("fallbackProvider".into(), Value::Null);
        let mut expected = config();
        expected.temperature = None;
        expected.fallback_provider = None;
        TestFramework::<Agent>::with(services())
            .given(vec![created()])
            .when(AgentCommand::UpdateAgent {
                change: AgentChange::Patch(patch),
                expected_version: Some(1),
            })
            .then_expect_events(vec![AgentEvent::AgentUpdated {
                id: "agt_1".into(),
                config: expected,
            }]);
    }

    #[test]
    fn an_archived_agent_cannot_change() {
        TestFramework::<Agent>::with(services())
            .given(vec![
                created(),
                AgentEvent::AgentArchived { id: "agt_1".into() },
            ])
            .when(AgentCommand::UpdateAgent {
                change: AgentChange::Replace(config()),
                expected_version: None,
            })
            .then_expect_error(AgentError::Archived);
    }

    #[test]
    fn archiving_twice_records_once() {
        TestFramework::<Agent>::with(services())
            .given(vec![
                created(),
                AgentEvent::AgentArchived { id: "agt_1".into() },
            ])
            .when(AgentCommand::ArchiveAgent {
                expected_version: None,
            })
            .then_expect_events(vec![]);
    }
}
