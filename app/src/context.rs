//! Who sends a command, in which request: the source of its events' metadata and of its
//! idempotency record.

use domain::metadata::EventMetadata;
use domain::names::TenantId;

/// The context every use case that writes takes.
#[derive(Debug, Clone)]
pub struct Context {
    /// The tenant the command acts for (`platform` for platform credentials).
    pub tenant: TenantId,
    /// The principal: an API key id, `jwt:<service>`, `admin-key`, or `cli`.
    pub actor: String,
    pub request_id: String,
    /// The client's idempotency key, already checked to be 1 to 255 visible characters.
    pub idempotency_key: Option<String>,
    /// The operation (for HTTP: the route's operation id, `send_message`): the scope of the
    /// idempotency key, which names one request per tenant and operation.
    pub operation: String,
    /// The request's W3C `traceparent`, when well formed.
    pub traceparent: Option<String>,
    /// The operation as the client named it (for HTTP: the method), part of the request hash.
    pub method: String,
    /// The operation's target (for HTTP: path and query), part of the request hash.
    pub target: String,
}

impl Context {
    /// Metadata for the events of `command`.
    pub fn metadata(&self, command: &str) -> EventMetadata {
        let mut metadata = EventMetadata::new(
            self.tenant.clone(),
            self.actor.clone(),
            self.request_id.clone(),
            command,
        );
        metadata.idempotency_key = self.idempotency_key.as_deref().map(Into::into);
        metadata.traceparent = self.traceparent.as_deref().map(Into::into);
        metadata
    }
}
