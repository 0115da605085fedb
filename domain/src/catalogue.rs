//! Every kind of event the log holds: each aggregate's event enum with its version and the
//! JSON Schema of its payloads, derived from the types themselves. The event catalogue that
//! subscribers read (`/asyncapi.json`, `docs/events.md`) is built from this list, so an event
//! type cannot exist without being in it.

use cqrs_es::Aggregate;
use serde_json::Value;
use utoipa::ToSchema;

use crate::versioned::Versioned;

/// One event type: its aggregate, name, version and payload schema.
#[derive(Debug, Clone, PartialEq)]
pub struct EventKind {
    pub aggregate_type: &'static str,
    pub event_type: String,
    pub version: &'static str,
    pub description: Option<String>,
    /// The payload's JSON Schema (the variant's fields, without the enum's tag); references
    /// point into [`Catalogue::schemas`] as `#/components/schemas/<name>`.
    pub payload: Value,
}

/// The event kinds of every aggregate, and the named schemas their payloads refer to.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Catalogue {
    pub events: Vec<EventKind>,
    pub schemas: std::collections::BTreeMap<String, Value>,
}

impl Catalogue {
    /// The whole catalogue.
    pub fn build() -> Self {
        let mut catalogue = Self::default();
        catalogue.add::<crate::tenant::Tenant>();
        catalogue.add::<crate::api_key::ApiKey>();
        catalogue.add::<crate::entity_type::EntityType>();
        catalogue.add::<crate::entity::Entity>();
        catalogue.add::<crate::constraints::UniqueValue>();
        catalogue.add::<crate::constraints::References>();
        catalogue.add::<crate::relation::Links>();
        catalogue.add::<crate::agent::Agent>();
        catalogue.add::<crate::session::Session>();
        catalogue.add::<crate::budget::Budget>();
        let mut named = vec![(
            "EventMetadata".to_string(),
            <crate::metadata::EventMetadata as utoipa::PartialSchema>::schema(),
        )];
        <crate::metadata::EventMetadata as ToSchema>::schemas(&mut named);
        for (name, schema) in named {
            let schema = serde_json::to_value(schema).expect("a schema serializes");
            catalogue.schemas.insert(name, schema);
        }
        catalogue
    }

    /// Adds the events of aggregate `A`: one per variant of its (externally tagged) event
    /// enum, whose schema is `oneOf` objects each with the variant's name as its only
    /// property.
    fn add<A>(&mut self)
    where
        A: Aggregate,
        A::Event: ToSchema + Versioned,
    {
        let schema = serde_json::to_value(<A::Event as utoipa::PartialSchema>::schema())
            .expect("a schema serializes");
        let variants = schema["oneOf"].as_array().cloned().unwrap_or_default();
        assert!(!variants.is_empty(), "{} has no event variants", A::TYPE);
        for variant in variants {
            let properties = variant["properties"]
                .as_object()
                .expect("an externally tagged variant is an object");
            assert_eq!(properties.len(), 1, "one property, the variant's name");
            let (name, payload) = properties.iter().next().expect("one property");
            let description = payload["description"]
                .as_str()
                .or_else(|| variant["description"].as_str())
                .map(str::to_string);
            self.events.push(EventKind {
                aggregate_type: A::TYPE,
                event_type: name.clone(),
                version: <A::Event as Versioned>::VERSION,
                description,
                payload: payload.clone(),
            });
        }
        let mut named = Vec::new();
        <A::Event as ToSchema>::schemas(&mut named);
        for (name, schema) in named {
            let schema = serde_json::to_value(schema).expect("a schema serializes");
            self.schemas.insert(name, schema);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_has_an_object_payload_and_every_reference_resolves() {
        let catalogue = Catalogue::build();
        assert!(catalogue.events.len() >= 30, "{}", catalogue.events.len());
        let text = serde_json::to_string(
            &catalogue
                .events
                .iter()
                .map(|e| &e.payload)
                .collect::<Vec<_>>(),
        )
        .unwrap()
            + &serde_json::to_string(&catalogue.schemas).unwrap();
        for reference in text.split("\"#/components/schemas/").skip(1) {
            let name = &reference[..reference.find('"').unwrap()];
            assert!(
                catalogue.schemas.contains_key(name),
                "{name} is not defined"
            );
        }
    }
}
