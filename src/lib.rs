//! # rowcast
//!
//! A real-time gateway for PostgreSQL: every committed change of a tracked table is
//! pushed to WebSocket and Server-Sent Events clients, and a client that reconnects
//! resumes from its last event id with nothing lost and nothing twice.
//!
//! # Layout
//!
//! The modules follow the data, from the database to the socket:
//!
//! - [`pg`]: PostgreSQL. Capture happens in SQL (`sql/`, applied by [`pg::migrate`]):
//!   a deferred trigger writes each change to `realtime.change_log` with an id drawn
//!   in commit order and rings a NOTIFY doorbell. [`pg::source`] reads the log by
//!   cursor when the doorbell rings or a poll tick fires; [`pg::embedded`] starts a
//!   private server when none is configured.
//! - [`event`]: a change as the gateway holds it, serialised once into its wire forms.
//! - [`log`]: the ring of recent events; "events after id X" in O(log n).
//! - [`hub`]: the subscribers, woken per table touched.
//! - [`filter`]: stream parameters (`since`, `tables`, `ops`, `filter`) and matching.
//! - [`stream`]: one client's session — backlog, `ready`, `reset`, live batches —
//!   shared by both transports.
//! - [`http`]: the hyper server: REST for `orders`, `/ws`, `/events`, `/healthz`,
//!   `/readyz`, `/metrics` and the UI; [`http::error`] is the one place errors become
//!   responses.
//! - [`gateway`]: start-up and the state every connection shares; [`config`] reads
//!   flags and environment; [`metrics`] renders Prometheus text; [`auth`] checks
//!   bearer tokens and JWTs when authentication is on.

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
pub mod session;
#[doc(hidden)]
pub mod testing;
