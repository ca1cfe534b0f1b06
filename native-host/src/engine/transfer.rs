//! One file, start to finish.
//!
//! (Being written: the signature of [`get`] is the contract the CLI uses.)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::ratelimit::RateLimiter;

/// A one-shot download, as `sdm get` asks for it.
#[derive(Debug, Clone)]
pub struct GetSpec {
    pub url: String,
    /// A file path, or an existing folder (then the server's name is used, sanitized).
    pub output: PathBuf,
    pub threads: u32,
    pub retries: u32,
    /// Extra request headers, `(name, value)`.
    pub headers: Vec<(String, String)>,
    /// Bytes per second, 0 = unlimited.
    pub limit: u64,
    pub stall_timeout: Duration,
    /// Expected sha256 of the whole file, lowercase hex.
    pub sha256: Option<String>,
}

/// The live numbers of a transfer, for a progress bar.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub filename: String,
    pub total: Option<u64>,
    pub downloaded: u64,
    /// Bytes per second, smoothed.
    pub speed: u64,
    pub connections: u32,
}

/// Download `spec.url` to its final path and return that path. On any error nothing is left at the final path.
/// `on_progress` is called a few times a second.
pub async fn get(
    spec: GetSpec,
    on_progress: impl FnMut(&Snapshot) + Send,
) -> anyhow::Result<PathBuf> {
    let _ = (spec, on_progress, Arc::new(RateLimiter::new(0)));
    todo!()
}
