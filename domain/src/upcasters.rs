//! Upcasters turn stored events of an older `event_version` into the shape the current code
//! reads. The event log applies them whenever it loads or tails events, so aggregates and
//! projections only ever see current versions.
//!
//! No event type has changed shape yet, so the list is empty; when one does, its upcaster is
//! added here (a `cqrs_es::persist::SemanticVersionEventUpcaster` for the usual case).

use cqrs_es::persist::EventUpcaster;

/// Every upcaster the gateway knows, in the order they must be applied.
pub fn all() -> Vec<Box<dyn EventUpcaster>> {
    Vec::new()
}
