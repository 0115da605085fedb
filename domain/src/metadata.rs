//! Metadata recorded with every event: who asked, on whose behalf, and which request and
//! conversation of commands it belongs to.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::names::TenantId;

/// The version of the metadata document itself; bumped when its shape changes.
pub const METADATA_SCHEMA: u32 = 1;

/// Metadata stored beside each event's payload. Every event of one command carries the same
/// metadata.
// Its strings are shared (`Arc<str>`): a command's metadata is copied into each of its
// attempts, its unit of work and its commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventMetadata {
    pub tenant_id: TenantId,
    /// The principal that issued the command: an API key id, a JWT subject, or `system`.
    #[schema(value_type = String)]
    pub actor: Arc<str>,
    /// The HTTP request id (`x-request-id`) or the id of the job that issued the command.
    #[schema(value_type = String)]
    pub request_id: Arc<str>,
    /// Shared by every event caused, directly or not, by one original request.
    #[schema(value_type = String)]
    pub correlation_id: Arc<str>,
    /// The event or command that directly caused this one, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub causation_id: Option<Arc<str>>,
    /// The client's `Idempotency-Key`, when the command came with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub idempotency_key: Option<Arc<str>>,
    /// The command's name, e.g. `CreateEntity`.
    #[schema(value_type = String)]
    pub command: Arc<str>,
    /// The W3C `traceparent` of the request, when it came with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub traceparent: Option<Arc<str>>,
    pub schema: u32,
}

impl EventMetadata {
    /// Metadata for a command that starts a new correlation (the request id doubles as the
    /// correlation id).
    pub fn new(
        tenant_id: TenantId,
        actor: impl Into<Arc<str>>,
        request_id: impl Into<Arc<str>>,
        command: impl Into<Arc<str>>,
    ) -> Self {
        let request_id = request_id.into();
        Self {
            tenant_id,
            actor: actor.into(),
            correlation_id: request_id.clone(),
            request_id,
            causation_id: None,
            idempotency_key: None,
            command: command.into(),
            traceparent: None,
            schema: METADATA_SCHEMA,
        }
    }
}
