//! The events this process committed last, kept in memory so that its projectors and relay
//! need not read them back and decode them again. The log stays the source of truth: a reader
//! asks the database which events come next (their positions and ids only, under the same
//! horizon) and takes them from here only when every one of them is here; otherwise it reads
//! them all from the log, as it always did. Events of other processes, of older batches, or
//! evicted, are therefore read from the log.
//!
//! Bounded by count and by an estimate of the memory the events hold, so that large payloads
//! cannot make it grow past a few mebibytes.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::Value;
use uuid::Uuid;

use crate::store::RecordedEvent;

/// Most events kept.
const MAX_EVENTS: usize = 4_096;
/// Most bytes (estimated) kept; an event over a sixteenth of it is never kept.
const MAX_BYTES: usize = 8 * 1024 * 1024;

#[derive(Default)]
pub(crate) struct Recent {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    by_id: HashMap<Uuid, (RecordedEvent, usize)>,
    /// Insertion order, for eviction.
    order: VecDeque<Uuid>,
    bytes: usize,
}

impl Recent {
    /// Keeps `events`, just committed, evicting the oldest beyond the bounds.
    pub(crate) fn remember(&self, events: &[&RecordedEvent]) {
        if events.is_empty() {
            return;
        }
        let weighed: Vec<(RecordedEvent, usize)> = events
            .iter()
            .map(|event| (*event, weight(event)))
            .filter(|(_, bytes)| *bytes <= MAX_BYTES / 16)
            .map(|(event, bytes)| (event.clone(), bytes))
            .collect();
        let mut state = self.state.lock().expect("recent events lock poisoned");
        for (event, bytes) in weighed {
            let id = event.event_id;
            if let Some((_, old)) = state.by_id.insert(id, (event, bytes)) {
                state.bytes -= old;
            } else {
                state.order.push_back(id);
            }
            state.bytes += bytes;
        }
        while state.order.len() > MAX_EVENTS || state.bytes > MAX_BYTES {
            let Some(oldest) = state.order.pop_front() else {
                break;
            };
            if let Some((_, bytes)) = state.by_id.remove(&oldest) {
                state.bytes -= bytes;
            }
        }
    }

    /// Whether any event is kept (a reader may try the light query).
    pub(crate) fn is_empty(&self) -> bool {
        self.state
            .lock()
            .expect("recent events lock poisoned")
            .by_id
            .is_empty()
    }

    /// The events `ids` names, in that order, when every one of them is kept.
    pub(crate) fn take(&self, ids: &[Uuid]) -> Option<Vec<RecordedEvent>> {
        let state = self.state.lock().expect("recent events lock poisoned");
        ids.iter()
            .map(|id| state.by_id.get(id).map(|(event, _)| event.clone()))
            .collect()
    }
}

/// An estimate of the heap an event holds.
fn weight(event: &RecordedEvent) -> usize {
    256 + event.tenant_id.len()
        + event.aggregate_type.len()
        + event.aggregate_id.len()
        + event.event_type.len()
        + value_weight(&event.payload)
        + value_weight(&event.metadata)
}

fn value_weight(value: &Value) -> usize {
    // Iterative: payloads may nest a thousand levels deep.
    let mut total = 0;
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        total += 32;
        match value {
            Value::String(text) => total += text.len(),
            Value::Array(items) => pending.extend(items),
            Value::Object(fields) => {
                for (name, field) in fields {
                    total += name.len() + 32;
                    pending.push(field);
                }
            }
            _ => {}
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: Value) -> RecordedEvent {
        RecordedEvent {
            cursor: crate::Cursor::new(0, 1),
            event_id: Uuid::now_v7(),
            tenant_id: "acme".into(),
            aggregate_type: "Entity".into(),
            aggregate_id: "users/u".into(),
            sequence: 1,
            event_type: "EntityCreated".into(),
            event_version: "1.0".into(),
            payload,
            metadata: serde_json::json!({}),
            recorded_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn all_or_nothing_and_bounded() {
        let recent = Recent::default();
        let (a, b) = (event(Value::Null), event(Value::Null));
        recent.remember(&[&a, &b]);
        assert_eq!(
            recent.take(&[b.event_id, a.event_id]),
            Some(vec![b.clone(), a.clone()])
        );
        assert_eq!(recent.take(&[a.event_id, Uuid::now_v7()]), None);
        // A payload too large to keep is not kept.
        let large = event(Value::String("x".repeat(MAX_BYTES / 8)));
        recent.remember(&[&large]);
        assert_eq!(recent.take(&[large.event_id]), None);
        // Count bound: the oldest go first.
        let many: Vec<RecordedEvent> = (0..MAX_EVENTS + 10).map(|_| event(Value::Null)).collect();
        recent.remember(&many.iter().collect::<Vec<_>>());
        assert_eq!(recent.take(&[a.event_id]), None);
        assert!(recent.take(&[many.last().unwrap().event_id]).is_some());
        let state = recent.state.lock().unwrap();
        assert_eq!(state.by_id.len(), MAX_EVENTS);
        assert_eq!(state.order.len(), MAX_EVENTS);
    }
}
