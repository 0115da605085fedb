//! The black-box suite. Each module covers one feature; `helpers` starts the real application
//! on port 0 against a fresh SQLite file or a fresh PostgreSQL database.
//!
//! PostgreSQL and NATS are required: tests connect to `GATEWAY_TEST_DATABASE_URL` and
//! `GATEWAY_TEST_NATS_URL` when they are set, and otherwise start private servers for the
//! run (`servers`); they fail when a server cannot be reached or started, so those paths are
//! never skipped silently.
#![forbid(unsafe_code)]

mod helpers;
mod servers;

mod agents;
mod benchmarks;
mod catalogue;
mod cli;
mod console;
mod contract;
mod entities;
mod entity_query;
mod entity_types;
mod event_catalogue;
mod eventlog;
mod faults;
mod fuzz;
mod hostile;
mod oidc;
mod operations;
mod projections;
mod projectors;
mod relations;
mod roles;
mod security;
mod seeds;
mod streams;
mod tls;
mod traces;
mod transfer;
mod usage;
mod websocket;
