//! The gateway's HTTP API and its entry points.
//!
//! Code map:
//! - [`startup`]: [`startup::Application`]: connect, migrate, start workers, bind, serve,
//!   shut down gracefully. `main` and the tests both use it.
//! - [`server`]: the HTTP/1.1 accept loop with its limits (connections, timeouts).
//! - [`settings`]: the one typed configuration.
//! - [`routes`]: every route and the OpenAPI document generated from them.
//! - [`error`]: [`error::ApiError`], its status codes and the error envelope.
//! - [`auth`]: credentials, principals, roles and rate limits; [`rate_limit`].
//! - [`commands`]: running a command from a handler, with idempotency.
//! - [`bootstrap`]: creating tenants and keys, for the routes and the command line.
//! - [`extract`]: command context, consistency and `If-Match` extractors.
//! - [`request_id`], [`metrics`], [`telemetry`]: request ids, spans, logs and Prometheus.
//! - [`cli`]: the `gateway` command line.
//!
//! Only this crate knows HTTP.
#![forbid(unsafe_code)]

pub mod auth;
pub mod bootstrap;
pub mod cli;
pub mod commands;
pub mod entity_writes;
pub mod error;
pub mod extract;
pub mod messaging;
pub mod metrics;
pub mod providers;
pub mod rate_limit;
pub mod request_id;
pub mod routes;
pub mod seed;
pub mod server;
pub mod settings;
pub mod startup;
pub mod state;
pub mod telemetry;
