//! Support code for SDM's integration tests.
//!
//! # Layout
//! - [`harness`]: the real `sdm` binary in a sandbox (service, relays, CLI), for these tests and native-host's.
//! - [`server`]: a hand-written HTTP/1.1 server on loopback that serves generated files and injects faults on demand
//!   (cut bodies, stalls, lying headers, changing ETags...), and records every request for assertions.
//!
//! The tests themselves live in `tests/tests/` (one binary, `tests/tests/main.rs`).

pub mod harness;
pub mod server;

pub use server::{ALWAYS, FileSpec, NoLength, ServedFile, TestServer, sha256_file, sha256_hex};
