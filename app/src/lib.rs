//! The gateway's use cases, between the transports (`api`, the command line) and the event
//! log, read models and workers.
//!
//! Code map:
//! - [`state`]: [`App`], the services every use case shares, and [`open_log`].
//! - [`context`]: [`Context`], who sends a command in which request.
//! - [`error`]: [`Error`], the typed answers besides success.
//! - [`idempotency`]: the idempotency protocol (claim, replay, refuse, release) and running
//!   one command on one stream with it.
//! - [`entity_writes`]: record writes as one unit of work with the rules that span records.
//! - [`messaging`]: sending a message: budgets, providers with retries and fallback, and the
//!   recovery points that bill a reply at most once.
//! - [`providers`]: the provider adapters and the registry built from settings.
//! - [`refusals`]: each aggregate's refusals as [`Error`]s.
//! - [`bootstrap`]: creating tenants and keys; [`keys`]: key tokens and their hashes.
//! - [`seed`]: bulk seeding of usage and records; [`usage`]: the usage time series.
//! - [`settings`]: the one typed configuration; [`metrics`]: the Prometheus registry.
//!
//! Knows no HTTP: a transport hands in a [`Context`] and gets typed results or an [`Error`],
//! and gives the one function that renders a refusal ([`state::RenderRefusal`]).
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod catalogue;
pub mod context;
pub mod entity_types;
pub mod entity_writes;
pub mod error;
pub mod idempotency;
pub mod keys;
pub mod messaging;
pub mod metrics;
pub mod providers;
pub mod refusals;
pub mod seed;
pub mod settings;
pub mod state;
pub mod timestamps;
pub mod usage;

pub use context::Context;
pub use error::{Error, FieldError};
pub use state::{App, SystemClock, open_log};
