//! SDM's native host: the download engine, the service that owns it, the relay a browser starts, and the CLI's pieces.
//!
//! # Layout
//! - [`engine`]: downloads. Probing, segmented transfers, the queue, rate limits, state on disk. Driven through the
//!   plain Rust API of [`engine::Engine`] (the queue) and [`engine::transfer`] (one file); knows nothing of native
//!   messaging, sockets or browsers.
//! - [`service`]: `sdm serve`, one per data directory: owns an [`engine::Engine`] and answers protocol frames on a
//!   Unix socket.
//! - [`relay`]: what a browser starts: native messaging on stdin/stdout, forwarded to the service.
//! - [`client`]: a connection to the service, used by the relay's start-up and the CLI's commands.
//! - [`install`]: host manifests for each browser.
//! - [`ipc`]: the service's transport: a Unix socket, a named pipe on Windows.
//! - [`paths`]: where data, the socket and downloads live.
//! - [`signals`]: the signals that stop a foreground process cleanly.

pub mod client;
pub mod engine;
pub mod install;
pub mod ipc;
pub mod paths;
pub mod relay;
pub mod service;
pub mod signals;
