//! The HTTP side: one hyper 1.x server carrying REST, WebSocket, SSE, operations
//! endpoints and the UI.
//!
//! [`server`] accepts and limits connections, [`router`] sends each where it goes
//! ([`api`], [`ws`], [`sse`], [`ops`], [`ui`]); [`conn`] holds what is known about a
//! connection and [`error`] is the one mapping from errors to the wire; [`socket`]
//! writes to a client's socket without waiting.

pub mod api;
pub mod body;
pub mod conn;
pub mod error;
pub mod ops;
pub mod router;
pub mod server;
pub mod sniff;
pub mod socket;
pub mod sse;
pub mod ui;
pub mod ws;

pub use error::ApiError;
pub use server::run;
