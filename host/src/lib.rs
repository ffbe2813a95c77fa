//! housekeeper: runs database and file-system maintenance tasks as sandboxed
//! WebAssembly components.
//!
//! The binary (`main.rs`) only parses the command line and sets up logging;
//! everything else lives here so it can be tested without a process.

pub mod api;
pub(crate) mod bindings;
pub mod capabilities;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod loader;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod reload;
pub mod runtime;
pub mod schedule;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod terminal;
