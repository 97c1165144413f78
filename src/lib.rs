//! # rowcast
//!
//! A real-time gateway for PostgreSQL: every committed change of a tracked table is
//! pushed to WebSocket and Server-Sent Events clients, and a client that reconnects
//! resumes from its last event id with nothing lost and nothing twice.
//!
//! What clients see on the wire is specified in docs/PROTOCOL.md, with
//! docs/openapi.yaml (REST) and docs/asyncapi.yaml (stream messages) beside it; the
//! tests hold the code to all three, so a change on the wire changes them too.
//!
//! # Layout
//!
//! The modules follow the data, from the database to the socket; arrows only point
//! down: [`http`] → [`session`] → {[`log`], [`hub`], [`filter`]} → [`event`], and
//! [`pg`] implements what [`session`] and [`gateway`] name.
//!
//! - [`gateway`]: the top of the tree, wiring only: builds the PostgreSQL pieces, the
//!   ring, the hub and the state every connection shares; starts the source and
//!   retention.
//! - [`pg`]: PostgreSQL. Capture happens in SQL (`sql/`, applied by [`pg::migrate`]):
//!   a deferred trigger writes each change to `realtime.change_log` with an id drawn
//!   in commit order and rings a NOTIFY doorbell. [`pg::source`] reads the log by
//!   cursor when the doorbell rings or a poll tick fires; [`pg::changes`] holds the
//!   queries and the sessions' catch-up reader; [`pg::retention`] prunes;
//!   [`pg::startup`] finds the database and [`pg::embedded`] starts a private server
//!   when none is configured. With `--capture wal`, [`pg::capture`] replaces the
//!   trigger: one replica streams a logical slot into the same log.
//! - [`event`]: a change as the gateway holds it, serialised once into its wire forms.
//! - [`log`]: the ring of recent events; "events after id X" in O(log n).
//! - [`hub`]: the subscribers, woken per table (or filtered value) touched, and the
//!   fan-out workers (one per core) that serve the caught-up ones without waking
//!   them ([`hub::Deliver`]).
//! - [`filter`]: stream parameters (`since`, `tables`, `ops`, `filter`) and matching.
//! - [`session`]: one client's stream, transport-agnostic — backlog (from the ring or
//!   through [`session::CatchUp`]), `ready`, `reset`, live batches — and the one loop
//!   (heartbeats, shutdown, lagging clients) that drives any [`session::Sink`];
//!   [`session::direct`] lends a parked session's cursor to the fan-out, which writes
//!   through the transport's [`session::TryWrite`] (a WebSocket's or an SSE stream's
//!   socket).
//! - [`http`]: the hyper server: [`http::server`] accepts and limits connections,
//!   [`http::router`] sends each to REST for `orders`, `/ws`, `/events`, `/healthz`,
//!   `/readyz`, `/metrics` or the UI; [`http::error`] is the one place errors reach
//!   the wire (statuses, close codes, in-stream errors).
//! - [`config`] reads flags and environment; [`metrics`] renders Prometheus text;
//!   [`auth`] checks bearer tokens and JWTs when authentication is on; [`scope`]
//!   reads a JWT's `filter` claim, the rows its holder may see; [`query`] splits
//!   query strings.

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::await_holding_lock, clippy::dbg_macro, clippy::todo)]

pub mod auth;
pub mod config;
pub mod event;
pub mod filter;
pub mod gateway;
pub mod http;
pub mod hub;
pub mod log;
pub mod metrics;
pub mod pg;
pub mod query;
pub mod relay;
pub mod scope;
pub mod session;
#[doc(hidden)]
pub mod testing;
