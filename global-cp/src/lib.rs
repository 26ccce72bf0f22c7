//! Meridian's global control plane: the one place where policy is written.
//!
//! ```text
//!   meshctl / HTTP ──REST──> api ──> dyn Store ──> SQLite (default) | Postgres
//! ```
//!
//! `main.rs` only parses arguments; [`run`] wires the store, the API and shutdown.

#![forbid(unsafe_code)]

pub mod store;
