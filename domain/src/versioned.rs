//! The version of an event enum's payload shape.

/// The version an event enum's events are written with (`event_version`). Every variant of
/// an enum shares it: a change of one event's shape raises it, with an upcaster for the old
/// events (see [`crate::upcasters`]).
pub trait Versioned {
    const VERSION: &'static str;
}
