//! `sdm get`: one download, run to its end without the queue, with its progress reported as it goes. Also the speed
//! and time-left arithmetic that the queue's progress reports share with it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::control;
use super::error::TransferError;
use super::filename;
use super::plan::{Dest, Live, Plan};
use super::probe;
use super::ratelimit::RateLimiter;
use super::transfer::{self, Options, Transfer};

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
    /// Move plain-HTTP ranged bodies with splice(2) (see [`super::splice`]); off, every byte goes through reqwest.
    pub splice: bool,
    /// The smallest file whose https bodies take the own path ([`super::transfer::OWN_TLS_MIN`]).
    pub own_tls_min: u64,
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

/// What a `sdm get` that did not complete keeps for the next run of the same command ([`control`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// The part file, which holds the bytes.
    pub part: PathBuf,
    /// Its control file, which says which bytes they are.
    pub control: PathBuf,
    pub downloaded: u64,
    pub total: Option<u64>,
}

/// How a `sdm get` ended without its file: why, and what it kept for the next run.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct GetError {
    pub error: TransferError,
    pub kept: Option<Kept>,
}

/// Download `spec.url` to its final path and return that path. On any error nothing is left at the final path, and
/// the `.part` file is removed. `on_progress` is called 5 times a second.
pub async fn get(
    spec: GetSpec,
    on_progress: impl FnMut(&Snapshot) + Send,
) -> Result<PathBuf, TransferError> {
    get_until(spec, CancellationToken::new(), on_progress)
        .await
        .map_err(|e| e.error)
}

/// [`get`], stopped when `stop` is cancelled (the user interrupted it), and resumable: a run that was stopped, or
/// failed in a way a later try may not (the network, the server's 5xx, a full disk), keeps its part file and writes
/// a control file beside it ([`control`]); the next run of the same URL into the same place goes on from there. On a
/// failure that trying again would repeat (the file is gone, it changed, a wrong checksum) the part file is removed.
pub async fn get_until(
    spec: GetSpec,
    stop: CancellationToken,
    mut on_progress: impl FnMut(&Snapshot) + Send,
) -> Result<PathBuf, GetError> {
    let transfer =
        transfer_for(&spec, stop.clone()).map_err(|error| GetError { error, kept: None })?;
    let resumed = control::claim(&spec.url, &transfer.dest);
    if let Some(plan) = &resumed {
        debug!(path = %plan.path.display(), downloaded = plan.downloaded(), "going on from a kept part file");
    }
    let live = Live::new(resumed);
    let transfer = Transfer {
        live: live.clone(),
        ..transfer
    };
    let mut run = std::pin::pin!(transfer.run());
    let mut meter = SpeedMeter::default();
    meter.start(live.downloaded.load(Ordering::Relaxed));
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let result = loop {
        tokio::select! {
            r = &mut run => break r,
            _ = tick.tick() => on_progress(&snapshot(&live, &mut meter)),
        }
    };
    let error = match result {
        Ok(path) => return Ok(path),
        Err(e) => e,
    };
    let keep = match &error {
        TransferError::Cancelled => stop.is_cancelled(),
        e => e.is_retryable() || e.is_disk_full(),
    };
    let kept = match live.snapshot() {
        Some(plan) if keep && control::resumable(&plan) => {
            let live = live.clone();
            tokio::task::spawn_blocking(move || keep_for_later(&spec.url, &live))
                .await
                .ok()
                .flatten()
        }
        _ => None,
    };
    if kept.is_none()
        && let Some(plan) = live.snapshot()
    {
        let _ = std::fs::remove_file(filename::part_path(&plan.path));
    }
    Err(GetError { error, kept })
}

/// Sync the part file and write the control file for the progress on disk; `None` when either fails (the bytes
/// cannot be vouched for: the part file is removed, as without a control file).
fn keep_for_later(url: &str, live: &Live) -> Option<Kept> {
    let plan: Plan = live.durable_plan()?;
    match control::keep(url, &plan) {
        Ok(control) => Some(Kept {
            part: filename::part_path(&plan.path),
            control,
            downloaded: plan.downloaded(),
            total: plan.total,
        }),
        Err(e) => {
            warn!(path = %plan.path.display(), cause = %e, "cannot keep the progress for a later run");
            None
        }
    }
}

fn transfer_for(spec: &GetSpec, stop: CancellationToken) -> Result<Transfer, TransferError> {
    let headers =
        transfer::caller_headers(spec.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    let dest = if spec.output.is_dir() {
        Dest::Dir {
            dir: spec.output.clone(),
            name: None,
        }
    } else {
        Dest::File(spec.output.clone())
    };
    Ok(Transfer {
        client: probe::client()?,
        url: spec.url.clone(),
        headers,
        dest,
        options: Options {
            threads: spec.threads.clamp(
                *protocol::THREADS_RANGE.start(),
                *protocol::THREADS_RANGE.end(),
            ),
            retries: spec.retries,
            stall_timeout: spec.stall_timeout,
            sha256: spec.sha256.clone(),
            splice: spec.splice,
            own_tls_min: spec.own_tls_min,
        },
        limiters: vec![Arc::new(RateLimiter::new(spec.limit))],
        cancel: stop,
        live: Live::new(None),
        on_plan: None,
    })
}

fn snapshot(live: &Live, meter: &mut SpeedMeter) -> Snapshot {
    let plan = live.snapshot();
    let downloaded = live.downloaded.load(Ordering::Relaxed);
    Snapshot {
        filename: plan
            .as_ref()
            .and_then(|p| p.path.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        total: plan.as_ref().and_then(|p| p.total),
        downloaded,
        speed: meter.sample(downloaded),
        connections: live.connections.load(Ordering::Relaxed),
    }
}

/// Speed smoothed over the last few seconds, from samples of a byte counter.
#[derive(Debug, Default)]
pub struct SpeedMeter {
    samples: VecDeque<(tokio::time::Instant, u64)>,
}

impl SpeedMeter {
    /// How far back the average reaches.
    const WINDOW: Duration = Duration::from_secs(3);
    /// The shortest span a speed is taken over: bytes that moved sooner count as if over this long, so the first
    /// reading is an underestimate rather than a spike.
    const MIN_SPAN: Duration = Duration::from_millis(50);

    /// Measure afresh from `bytes`, the counter as a transfer (re)starts. The first [`SpeedMeter::sample`] after it
    /// then shows a speed as soon as bytes have moved, rather than 0 until two samples are apart.
    pub fn start(&mut self, bytes: u64) {
        self.samples.clear();
        self.samples.push_back((tokio::time::Instant::now(), bytes));
    }

    /// Record the counter now and return bytes per second over the window.
    pub fn sample(&mut self, bytes: u64) -> u64 {
        let now = tokio::time::Instant::now();
        if self.samples.back().is_some_and(|&(_, b)| bytes < b) {
            self.samples.clear();
        }
        self.samples.push_back((now, bytes));
        while self.samples.len() > 2 && now.duration_since(self.samples[0].0) > Self::WINDOW {
            self.samples.pop_front();
        }
        let (t0, b0) = self.samples[0];
        let dt = now.duration_since(t0).max(Self::MIN_SPAN).as_secs_f64();
        ((bytes - b0) as f64 / dt) as u64
    }
}

/// Seconds left at `speed`, when both are known.
pub fn eta(total: Option<u64>, downloaded: u64, speed: u64) -> Option<u64> {
    let total = total?;
    (speed > 0).then(|| total.saturating_sub(downloaded).div_ceil(speed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_sample_after_start_shows_the_bytes_that_moved() {
        let mut meter = SpeedMeter::default();
        meter.start(1_000);
        assert_eq!(meter.sample(1_000), 0, "nothing moved yet");
        // However soon the sample comes, bytes beyond the start are a speed (over at least MIN_SPAN).
        let speed = meter.sample(1_500);
        assert!(speed > 0 && speed <= 10_000, "{speed} B/s");
        meter.start(0);
        assert_eq!(meter.sample(0), 0, "a fresh start forgets the last run");
    }
}
