//! The black-box suite. Each module covers one feature; `helpers` starts the real application
//! on port 0 against a fresh SQLite file or a fresh PostgreSQL database.
//!
//! PostgreSQL is required: tests connect to `GATEWAY_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and fail when it is unreachable, so the
//! PostgreSQL paths are never skipped silently.
#![forbid(unsafe_code)]

mod helpers;

mod entities;
mod eventlog;
mod operations;
mod projections;
mod security;
