//! The events this process committed last (kept just before their commit, see
//! `Store::commit_appended`), kept in memory so that its projectors and relay
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

/// Most events kept.
const MAX_EVENTS: usize = 4_096;
/// Most bytes (estimated) kept; an event over a sixteenth of it is never kept.
const MAX_BYTES: usize = 8 * 1024 * 1024;

/// Items (the store's events) by id, with the bytes each is estimated to hold.
pub(crate) struct Recent<T> {
    state: Mutex<State<T>>,
}

impl<T> Default for Recent<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                by_id: HashMap::default(),
                order: VecDeque::new(),
                bytes: 0,
            }),
        }
    }
}

struct State<T> {
    /// Event ids: chosen by the gateway (or by an export it wrote), not by clients.
    by_id: HashMap<Uuid, (T, usize), crate::FastHasher>,
    /// Insertion order, for eviction.
    order: VecDeque<Uuid>,
    bytes: usize,
}

impl<T: Clone> Recent<T> {
    /// Keeps `items` (id, estimated bytes, item), just committed, evicting the oldest beyond
    /// the bounds.
    pub(crate) fn remember<'t>(&self, items: impl IntoIterator<Item = (Uuid, usize, &'t T)>)
    where
        T: 't,
    {
        let weighed: Vec<(Uuid, T, usize)> = items
            .into_iter()
            .filter(|(_, bytes, _)| *bytes <= MAX_BYTES / 16)
            .map(|(id, bytes, item)| (id, item.clone(), bytes))
            .collect();
        if weighed.is_empty() {
            return;
        }
        let mut state = self.state.lock().expect("recent events lock poisoned");
        for (id, item, bytes) in weighed {
            if let Some((_, old)) = state.by_id.insert(id, (item, bytes)) {
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

    /// Forgets `ids` (the events of a commit that failed).
    pub(crate) fn forget(&self, ids: impl IntoIterator<Item = Uuid>) {
        let mut state = self.state.lock().expect("recent events lock poisoned");
        let mut forgotten = Vec::new();
        for id in ids {
            if let Some((_, bytes)) = state.by_id.remove(&id) {
                state.bytes -= bytes;
                forgotten.push(id);
            }
        }
        // Rare (a failed commit): a scan of the bounded order is fine.
        if !forgotten.is_empty() {
            state.order.retain(|id| !forgotten.contains(id));
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

    /// The items `ids` names, in that order, when every one of them is kept.
    pub(crate) fn take(&self, ids: &[Uuid]) -> Option<Vec<T>> {
        let state = self.state.lock().expect("recent events lock poisoned");
        ids.iter()
            .map(|id| state.by_id.get(id).map(|(event, _)| event.clone()))
            .collect()
    }
}

/// An estimate of the heap a JSON value holds.
pub(crate) fn value_weight(value: &Value) -> usize {
    weight_within(value, 0)
}

/// Levels [`value_weight`] walks by recursion (no allocation), before going on with a stack
/// of its own: payloads may nest a thousand levels deep.
const RECURSIVE_LEVELS: usize = 16;

fn weight_within(value: &Value, level: usize) -> usize {
    match value {
        Value::String(text) => 32 + text.len(),
        Value::Array(_) | Value::Object(_) if level >= RECURSIVE_LEVELS => weight_iterative(value),
        Value::Array(items) => {
            32 + items
                .iter()
                .map(|item| weight_within(item, level + 1))
                .sum::<usize>()
        }
        Value::Object(fields) => {
            32 + fields
                .iter()
                .map(|(name, field)| name.len() + 32 + weight_within(field, level + 1))
                .sum::<usize>()
        }
        _ => 32,
    }
}

/// [`value_weight`] with a stack on the heap, for any depth.
fn weight_iterative(value: &Value) -> usize {
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

    fn keep(recent: &Recent<String>, items: &[(Uuid, String)]) {
        recent.remember(items.iter().map(|(id, text)| (*id, 64 + text.len(), text)));
    }

    #[test]
    fn all_or_nothing_and_bounded() {
        let recent = Recent::default();
        let (a, b) = (
            (Uuid::now_v7(), "a".to_string()),
            (Uuid::now_v7(), "b".to_string()),
        );
        keep(&recent, &[a.clone(), b.clone()]);
        assert_eq!(
            recent.take(&[b.0, a.0]),
            Some(vec![b.1.clone(), a.1.clone()])
        );
        assert_eq!(recent.take(&[a.0, Uuid::now_v7()]), None);
        // An item too large to keep is not kept.
        let large = (Uuid::now_v7(), "x".repeat(MAX_BYTES / 8));
        keep(&recent, std::slice::from_ref(&large));
        assert_eq!(recent.take(&[large.0]), None);
        // Count bound: the oldest go first.
        let many: Vec<(Uuid, String)> = (0..MAX_EVENTS + 10)
            .map(|i| (Uuid::now_v7(), i.to_string()))
            .collect();
        keep(&recent, &many);
        assert_eq!(recent.take(&[a.0]), None);
        assert!(recent.take(&[many.last().unwrap().0]).is_some());
        let state = recent.state.lock().unwrap();
        assert_eq!(state.by_id.len(), MAX_EVENTS);
        assert_eq!(state.order.len(), MAX_EVENTS);
        // Byte bound.
        drop(state);
        let heavy: Vec<(Uuid, String)> = (0..64)
            .map(|_| (Uuid::now_v7(), "y".repeat(MAX_BYTES / 32)))
            .collect();
        keep(&recent, &heavy);
        assert!(recent.state.lock().unwrap().bytes <= MAX_BYTES);
    }

    #[test]
    fn forgotten_items_are_gone_and_the_rest_kept() {
        let recent = Recent::default();
        let items: Vec<(Uuid, String)> = (0..3).map(|i| (Uuid::now_v7(), i.to_string())).collect();
        keep(&recent, &items);
        recent.forget([items[0].0, items[2].0, Uuid::now_v7()]);
        assert_eq!(recent.take(&[items[0].0]), None);
        assert_eq!(recent.take(&[items[2].0]), None);
        assert_eq!(recent.take(&[items[1].0]), Some(vec![items[1].1.clone()]));
        let state = recent.state.lock().unwrap();
        assert_eq!(state.order, [items[1].0]);
        assert_eq!(state.bytes, 64 + items[1].1.len());
        drop(state);
        // Kept again (the same commit, retried), each is kept once.
        keep(&recent, &items[..1]);
        assert_eq!(recent.state.lock().unwrap().order.len(), 2);
    }

    #[test]
    fn json_weight_counts_text_and_nesting() {
        let mut deep = Value::String("leaf".into());
        for _ in 0..2_000 {
            deep = Value::Array(vec![deep]);
        }
        assert!(value_weight(&deep) > 2_000 * 32);
        assert!(value_weight(&serde_json::json!({"k": "x".repeat(1000)})) > 1000);
        // Recursion and the heap stack weigh alike, on either side of where one hands over
        // to the other.
        assert_eq!(value_weight(&deep), weight_iterative(&deep));
        let mut mixed = serde_json::json!({"a": [1, "two", {"three": null}], "b": true});
        for level in 0..40 {
            assert_eq!(
                value_weight(&mixed),
                weight_iterative(&mixed),
                "{level} levels"
            );
            mixed = serde_json::json!({"k": [mixed, "x"], "n": level});
        }
        assert_eq!(value_weight(&serde_json::json!("abc")), 35);
        assert_eq!(
            value_weight(&serde_json::json!({"ab": 1})),
            32 + 2 + 32 + 32
        );
        // Dropping it would recurse 2,000 levels on the test's small stack.
        std::mem::forget(deep);
    }
}
