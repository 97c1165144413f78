//! The HTTP side: one hyper 1.x server carrying REST, WebSocket, SSE, operations
//! endpoints and the UI.

pub mod api;
pub mod body;
pub mod error;
pub mod ops;
pub mod routes;
pub mod server;
pub mod sniff;
pub mod sse;
pub mod ui;
pub mod ws;

pub use error::ApiError;
pub use server::run;
