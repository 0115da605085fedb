//! The gateway's HTTP API: routing, extraction, authentication, error mapping, OpenAPI.
//!
//! Code map:
//! - [`server`]: the HTTP/1.1 accept loop with its limits (connections, timeouts).
//! - [`routes`]: every route and the OpenAPI document generated from them.
//! - [`error`]: [`error::ApiError`], its status codes and the error envelope.
//! - [`auth`]: credentials, principals, roles and rate limits; [`rate_limit`].
//! - [`respond`]: stored answers and refusals as responses; replays.
//! - [`extract`]: command context, consistency and `If-Match` extractors; [`headers`]: the
//!   gateway's own header names.
//! - [`credentials`]: the credential cache and keys' last use, kept between requests.
//! - [`request_id`]: request ids and the request span.
//!
//! Only this crate knows HTTP.
#![forbid(unsafe_code)]

pub mod auth;
pub mod credentials;
pub mod error;
pub mod extract;
pub mod headers;
pub mod rate_limit;
pub mod request_id;
pub mod respond;
pub mod routes;
pub mod server;
pub mod state;
