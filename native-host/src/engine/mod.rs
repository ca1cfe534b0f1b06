//! The download engine: the queue of downloads, and the transfer of one file.
//!
//! # Layout
//! - [`queue`]: [`Engine`], the queue: every download, commands and settings applied live, events pushed.
//! - [`schedule`]: starts queued downloads up to `max_concurrent`, runs each one's transfer task, records how it
//!   ended, and ticks progress.
//! - [`add`]: adding to the queue: request checks, ids reserved on disk, the verified add of browser capture, `find`.
//! - [`ops`]: `update`, `set_url`, `move`, and the bulk commands on downloads in the queue; the queue's order.
//! - [`entry`]: one download in the queue, its saved record beside its live state.
//! - [`persist`]: the one writer of the data directory (a thread of its own) and the checkpointer.
//! - [`state`]: the JSON files in the data directory, written atomically.
//! - [`transfer`]: one file, start to finish: probe, connections fetching segments into the `.part` file, placement.
//! - [`plan`]: where a transfer stands: the [`plan::Plan`] saved in `state.json` and the [`plan::Live`] state around it.
//! - [`response`]: a request for part of a file and the judgement of its answer, with no I/O.
//! - [`body`]: a response body on its way into the part file, over either path.
//! - [`splice`]: the fast path for ranged bodies over our own socket: over plain HTTP socket, pipe, part file with
//!   `splice(2)`; over https each record decrypted where it arrived (`tls`) and written from there with `pwritev`.
//! - [`part`]: the `.part` file: reserved, sized, synced, checked and placed at the final path.
//! - [`dirfd`]: files inside a folder opened once, by names no symbolic link can redirect (the platform-specific part).
//! - [`probe`]: the HTTP client, and what the server says about a URL before anything is downloaded.
//! - [`segments`]: the ranges still to fetch, and how a free connection takes a share of the one with the most time
//!   left.
//! - [`ratelimit`]: token buckets, per download under a global one.
//! - [`filename`]: Content-Disposition parsing and file-name sanitizing.
//! - [`error`]: why a transfer stopped, and whether trying again can help.
//! - [`oneshot`]: `sdm get`, one download without the queue, and the speed and time-left arithmetic.
//! - [`control`]: what a `sdm get` that did not finish keeps for the next run: its plan, beside its part file.

mod add;
pub mod body;
pub mod control;
pub(crate) mod dirfd;
mod entry;
pub mod error;
pub mod filename;
pub mod oneshot;
mod ops;
pub mod part;
mod persist;
pub mod plan;
pub mod probe;
mod queue;
pub mod ratelimit;
pub mod response;
mod schedule;
pub mod segments;
// splice(2) is Linux's; elsewhere a stand-in with the same items sends every body through reqwest.
#[cfg_attr(not(target_os = "linux"), path = "splice_off.rs")]
pub mod splice;
pub mod state;
// The own-socket path's TLS, used only where that path exists.
#[cfg(target_os = "linux")]
mod tls;
pub mod transfer;

pub use ops::NewAddress;
pub use queue::{ApiError, CRASH_EXIT_CODE, Engine, EngineConfig, StartError};
