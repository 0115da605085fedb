//! The gateway's domain: aggregates, the commands they accept, the events they record, and
//! the value types those are made of.
//!
//! This crate does no IO. It depends on `cqrs-es` for the `Aggregate` and `DomainEvent`
//! traits and on serde for the event payloads; it never depends on sqlx, axum, async-nats or
//! reqwest. Anything that needs the outside world (clocks, id generators, AI providers) is
//! passed into an aggregate as its cqrs-es `Services`.
//!
//! Conventions: commands are imperative (`CreateEntity`), events are past tense
//! (`EntityCreated`), errors are named after the rule they protect. A published event type
//! never changes in place: its `event_version` is bumped and an upcaster is added (see
//! [`upcasters`]).
#![forbid(unsafe_code)]

pub mod agent;
pub mod api_key;
pub mod budget;
pub mod catalogue;
pub mod clock;
pub mod constraints;
pub mod entity;
pub mod entity_type;
pub mod merge_patch;
pub mod metadata;
pub mod names;
pub mod provider;
pub mod relation;
pub mod roles;
pub mod session;
pub mod tenant;
pub mod upcasters;
pub mod versioned;
pub mod visibility;

pub use cqrs_es::{Aggregate, DomainEvent};
