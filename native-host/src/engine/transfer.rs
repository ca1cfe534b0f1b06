//! One file, start to finish.
//!
//! A [`Transfer`] probes the URL (unless a saved [`Plan`] says where it stands), creates the `.part` file beside the
//! final path, and runs up to N connections. Each connection owns a [`Segment`] and writes what it receives in place
//! with positional writes; when its segment is done it takes another, or half of the largest one left (see
//! [`segments`]). Every response is validated: a ranged request must get 206 with exactly the range asked for, and a
//! changed ETag or Last-Modified means the file changed on the server, so the transfer starts over rather than splice
//! two versions. When all bytes are written and synced, the `.part` file is renamed, never over an existing file.
//!
//! The plan's segment marks are the progress that [`Live::durable_plan`] reports: marks are read first, then the file
//! is synced, so a saved plan never claims bytes that are not on disk.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, Bytes};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::filename;
use super::probe::{self, parse_content_range, retry_after};
use super::ratelimit::{self, RateLimiter};
use super::segments::{self, OPEN_END, Segment};
use super::splice;

/// Why a transfer stopped.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{0}")]
    Setup(String),
    #[error("server answered {status}{}", reason_suffix(*.status))]
    Status {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
    #[error("network error: {0}")]
    Network(String),
    #[error("too many redirects (a redirect loop?)")]
    Redirects,
    /// The server's response is not HTTP we can read; asking again would get the same.
    #[error("malformed response from the server: {0}")]
    Malformed(String),
    #[error("connection stalled: no data within the stall timeout")]
    Stalled,
    #[error("connection closed early, {0} bytes short")]
    EarlyEof(u64),
    #[error("server sent a wrong range: {0}")]
    BadRange(String),
    /// The server ignores ranges; the transfer goes on over one connection.
    #[error("server does not serve ranges")]
    NoRanges,
    #[error("the file changed on the server during the download ({0})")]
    Changed(String),
    #[error("disk full while writing {0}: free some space, then resume")]
    DiskFull(PathBuf),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sha256 mismatch: expected {expected}, got {actual}")]
    Checksum { expected: String, actual: String },
    #[error("cancelled")]
    Cancelled,
}

fn reason_suffix(status: StatusCode) -> String {
    match status {
        StatusCode::NOT_FOUND | StatusCode::GONE => ": the file is not on the server".into(),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            ": access denied (the site may need cookies or a login)".into()
        }
        s => s
            .canonical_reason()
            .map(|r| format!(" {r}"))
            .unwrap_or_default(),
    }
}

impl TransferError {
    pub(crate) fn from_reqwest(e: reqwest::Error) -> TransferError {
        if e.is_redirect() {
            return TransferError::Redirects;
        }
        if e.is_timeout() {
            return TransferError::Stalled;
        }
        let e = e.without_url();
        let mut msg = e.to_string();
        let mut malformed = false;
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            malformed |= s
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_parse);
            src = s.source();
        }
        if malformed {
            TransferError::Malformed(msg)
        } else {
            TransferError::Network(msg)
        }
    }

    pub(crate) fn from_status(status: StatusCode, headers: &HeaderMap) -> TransferError {
        TransferError::Status {
            status,
            retry_after: retry_after(headers),
        }
    }

    fn io(path: &Path, source: std::io::Error) -> TransferError {
        if source.kind() == ErrorKind::StorageFull || source.raw_os_error() == Some(libc::ENOSPC) {
            TransferError::DiskFull(path.to_path_buf())
        } else {
            TransferError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }

    /// Worth another try on the same connection after a pause.
    pub fn is_retryable(&self) -> bool {
        match self {
            TransferError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || status.as_u16() == 425
            }
            TransferError::Network(_)
            | TransferError::Stalled
            | TransferError::EarlyEof(_)
            | TransferError::BadRange(_) => true,
            _ => false,
        }
    }

    /// A full disk pauses a download rather than failing it: it can go on once space is freed.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, TransferError::DiskFull(_))
    }

    fn wait_hint(&self) -> Option<Duration> {
        match self {
            TransferError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Where the file goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dest {
    /// Into this folder, under `name` (already validated) or the server's name, sanitized.
    Dir { dir: PathBuf, name: Option<String> },
    /// At this path (or `path (1)` if it exists).
    File(PathBuf),
}

/// The durable description of a transfer in progress: enough to resume it after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub final_url: String,
    pub total: Option<u64>,
    pub ranges: bool,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// The final path; the data is in its `.part` file until completion.
    pub path: PathBuf,
    /// What is still to fetch.
    pub segments: Vec<Segment>,
    /// How often the file changed under us; past a few, the transfer fails instead of starting over again.
    #[serde(default)]
    pub restarts: u32,
}

impl Plan {
    /// Bytes written so far.
    pub fn downloaded(&self) -> u64 {
        match (self.total, segments::remaining(&self.segments)) {
            (Some(t), Some(r)) => t.saturating_sub(r),
            _ => self.segments.iter().map(|s| s.pos - s.start).sum(),
        }
    }

    /// What to send as `If-Range`: a strong ETag, else Last-Modified.
    fn if_range(&self) -> Option<&str> {
        self.etag
            .as_deref()
            .filter(|e| !e.starts_with("W/"))
            .or(self.last_modified.as_deref())
    }
}

/// A transfer's state shared between its connections and whoever watches it.
#[derive(Debug, Default)]
pub struct Live {
    plan: Mutex<Option<Plan>>,
    pub downloaded: AtomicU64,
    pub connections: AtomicU32,
    file: Mutex<Option<Arc<File>>>,
    /// What the last [`Live::durable_plan`] returned: progress known to be on disk, for writers of state that must
    /// not wait for a sync.
    last_durable: Mutex<Option<Plan>>,
    /// The server answered the splice path with something only reqwest carries (a redirect, a chunked body): every
    /// later request of this transfer goes through reqwest.
    splice_off: AtomicBool,
    /// Connections opened while the probe was out, for the first request of each connection (see
    /// [`Transfer::preconnect`]).
    spare: Mutex<Vec<JoinHandle<std::io::Result<splice::Conn>>>>,
}

impl Live {
    pub fn new(plan: Option<Plan>) -> Arc<Live> {
        let downloaded = plan.as_ref().map_or(0, Plan::downloaded);
        Arc::new(Live {
            plan: Mutex::new(plan),
            downloaded: downloaded.into(),
            ..Live::default()
        })
    }

    fn plan(&self) -> MutexGuard<'_, Option<Plan>> {
        self.plan.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The plan as it stands, without the guarantee that its bytes are on disk.
    pub fn snapshot(&self) -> Option<Plan> {
        self.plan().clone()
    }

    /// The plan with only bytes that are on disk counted: marks are read, then the file is synced. Blocking.
    pub fn durable_plan(&self) -> Option<Plan> {
        let mut plan = self.plan().clone()?;
        plan.segments = segments::unfinished(&plan.segments);
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(f) = file
            && let Err(e) = f.sync_data()
        {
            warn!(cause = %e, "cannot sync the part file; saving no progress past the last sync");
            return None;
        }
        *self.last_durable.lock().unwrap_or_else(|e| e.into_inner()) = Some(plan.clone());
        Some(plan)
    }

    /// The plan of the last [`Live::durable_plan`], without syncing anything now.
    pub fn last_durable_plan(&self) -> Option<Plan> {
        self.last_durable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn spare(&self) -> MutexGuard<'_, Vec<JoinHandle<std::io::Result<splice::Conn>>>> {
        self.spare.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep the first `n` spare connections; close the rest, or stop opening them.
    fn keep_spare(&self, n: usize) {
        let mut spare = self.spare();
        let n = n.min(spare.len());
        for h in spare.drain(n..) {
            h.abort();
        }
    }

    fn set_file(&self, file: Option<Arc<File>>) {
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = file;
    }
}

/// Per-transfer knobs.
#[derive(Debug, Clone)]
pub struct Options {
    pub threads: u32,
    pub retries: u32,
    pub stall_timeout: Duration,
    /// Expected sha256 of the whole file, lowercase hex.
    pub sha256: Option<String>,
    /// Move plain-HTTP ranged bodies with splice(2) (see [`splice`]); off, every byte goes through reqwest.
    pub splice: bool,
}

/// Called once the probe has fixed the final path and size.
pub type OnPlan = Box<dyn Fn(&Plan) + Send + Sync>;

/// One file's download.
pub struct Transfer {
    pub client: Client,
    pub url: String,
    pub headers: HeaderMap,
    pub dest: Dest,
    pub options: Options,
    /// The buckets this transfer's bytes are charged to: its own, then the global one.
    pub limiters: Vec<Arc<RateLimiter>>,
    pub cancel: CancellationToken,
    pub live: Arc<Live>,
    pub on_plan: Option<OnPlan>,
}

/// How many times a file may change under a download before it fails.
const MAX_RESTARTS: u32 = 3;
/// Longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl Transfer {
    /// Run to completion; returns the final path. On error the `.part` file stays (for a resume); nothing is ever at
    /// the final path unless it is complete and exact.
    pub async fn run(self) -> Result<PathBuf, TransferError> {
        let this = Arc::new(self);
        loop {
            if this.cancel.is_cancelled() {
                return Err(TransferError::Cancelled);
            }
            let file = this.prepare().await?;
            this.live.set_file(Some(file.clone()));
            let result = this.clone().run_connections(file.clone()).await;
            match result {
                Ok(()) => {
                    let path = this.finish(&file).await;
                    this.live.set_file(None);
                    return path;
                }
                Err(TransferError::NoRanges) => {
                    warn!("server ignores ranges; going on over one connection from the start");
                    this.reset(false, None);
                }
                Err(TransferError::Changed(why)) => {
                    let restarts = this.live.plan().as_ref().map_or(0, |p| p.restarts) + 1;
                    if restarts > MAX_RESTARTS {
                        return Err(TransferError::Changed(why));
                    }
                    warn!(cause = %why, "file changed on the server; starting over");
                    this.reset(true, Some(restarts));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Forget progress: after a change of file (`reprobe`), or to go on over one connection without ranges.
    fn reset(&self, reprobe: bool, restarts: Option<u32>) {
        *self
            .live
            .last_durable
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        let mut guard = self.live.plan();
        if let Some(plan) = guard.as_mut() {
            plan.ranges = false;
            plan.segments = vec![Segment::new(0, plan.total.unwrap_or(OPEN_END))];
            if reprobe {
                plan.total = None;
                plan.etag = None;
                plan.last_modified = None;
                plan.segments.clear();
            }
            if let Some(r) = restarts {
                plan.restarts = r;
            }
        }
        self.live.downloaded.store(0, Ordering::Relaxed);
    }

    /// Probe if needed, fix the final path, and open the `.part` file.
    async fn prepare(&self) -> Result<Arc<File>, TransferError> {
        let existing = self.live.snapshot();
        let needs_probe = existing.as_ref().is_none_or(|p| p.segments.is_empty());
        let mut plan = match existing {
            Some(plan) if !needs_probe => plan,
            previous => {
                self.preconnect();
                // The server's name matters only to a new file whose name the caller left open.
                let want_name =
                    previous.is_none() && matches!(self.dest, Dest::Dir { name: None, .. });
                let found = self.probe_with_retries(want_name).await?;
                debug!(total = ?found.total, ranges = found.ranges, "probed");
                let path = match &previous {
                    Some(p) => p.path.clone(),
                    None => self.choose_path(found.name.as_deref())?,
                };
                let segments = segments::fresh(found.total, found.ranges, self.options.threads);
                Plan {
                    final_url: found.final_url,
                    total: found.total,
                    ranges: found.ranges,
                    etag: found.etag,
                    last_modified: found.last_modified,
                    path,
                    segments,
                    restarts: previous.map_or(0, |p| p.restarts),
                }
            }
        };
        let part = filename::part_path(&plan.path);
        let file = if needs_probe {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&part);
            f.map_err(|e| TransferError::io(&part, e))?
        } else {
            match OpenOptions::new().read(true).write(true).open(&part) {
                Ok(f) => Ok(f),
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    warn!(path = %part.display(), "part file is gone; starting from zero");
                    plan.segments = segments::fresh(plan.total, plan.ranges, self.options.threads);
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&part)
                }
                Err(e) => Err(e),
            }
            .map_err(|e| TransferError::io(&part, e))?
        };
        if let Some(total) = plan.total {
            let len = file
                .metadata()
                .map_err(|e| TransferError::io(&part, e))?
                .len();
            if len != total {
                file.set_len(total)
                    .map_err(|e| TransferError::io(&part, e))?;
            }
        }
        self.live
            .downloaded
            .store(plan.downloaded(), Ordering::Relaxed);
        *self.live.plan() = Some(plan.clone());
        if let Some(cb) = &self.on_plan {
            cb(&plan);
        }
        Ok(Arc::new(file))
    }

    /// The final path for a new transfer: never an existing file, and its `.part` file reserved at once.
    fn choose_path(&self, server_name: Option<&str>) -> Result<PathBuf, TransferError> {
        let (dir, name) = match &self.dest {
            Dest::Dir { dir, name } => {
                let name = name
                    .clone()
                    .unwrap_or_else(|| filename::sanitize(server_name.unwrap_or("download")));
                (dir.clone(), name)
            }
            Dest::File(path) => {
                let dir = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (dir.to_path_buf(), name)
            }
        };
        std::fs::create_dir_all(&dir).map_err(|e| TransferError::io(&dir, e))?;
        loop {
            let path = filename::unique_path(&dir, &name);
            let part = filename::part_path(&path);
            match OpenOptions::new().write(true).create_new(true).open(&part) {
                Ok(_) => return Ok(path),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(TransferError::io(&part, e)),
            }
        }
    }

    /// Run the connections until every segment is written, one fails for good, or the transfer is cancelled.
    async fn run_connections(self: Arc<Self>, file: Arc<File>) -> Result<(), TransferError> {
        let ranges = self.live.plan().as_ref().is_some_and(|p| p.ranges);
        let count = if ranges {
            self.options.threads.max(1)
        } else {
            1
        };
        // The connections opened during the probe that will carry a first request; only the splice path uses them.
        let usable = match self.live.plan().as_ref() {
            Some(p) if ranges && self.splice_url(&p.final_url).is_some() => {
                p.segments.iter().filter(|s| !s.is_done()).count()
            }
            _ => 0,
        };
        self.live.keep_spare(usable.min(count as usize));
        let stop = self.cancel.child_token();
        let mut set = JoinSet::new();
        for _ in 0..count {
            let (this, file, stop) = (self.clone(), file.clone(), stop.clone());
            set.spawn(async move { this.connection(&file, &stop).await });
        }
        let mut first_err = None;
        while let Some(res) = set.join_next().await {
            let res = res.unwrap_or_else(|e| {
                Err(TransferError::Setup(format!("connection task failed: {e}")))
            });
            if let Err(e) = res {
                stop.cancel();
                if first_err.is_none() || matches!(first_err, Some(TransferError::Cancelled)) {
                    first_err = Some(e);
                }
            }
        }
        self.live.keep_spare(0);
        if self.cancel.is_cancelled() {
            return Err(TransferError::Cancelled);
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let left = self
            .live
            .plan()
            .as_ref()
            .map(|p| p.segments.iter().any(|s| !s.is_done()));
        if left == Some(true) {
            return Err(TransferError::Setup(
                "internal error: connections ended with bytes left".into(),
            ));
        }
        Ok(())
    }

    /// One connection: take segments until none is left, retrying each with backoff.
    async fn connection(&self, file: &File, stop: &CancellationToken) -> Result<(), TransferError> {
        let mut conn = None;
        let mut fetched = false;
        loop {
            // Warm: our spliced connection is still open, or (through reqwest, whose pool we cannot see) connections
            // of this transfer have finished responses and are pooled.
            let warm = conn.is_some()
                || (fetched
                    && (self.live.plan().as_ref())
                        .is_none_or(|p| self.splice_url(&p.final_url).is_none()));
            let Some(idx) = self
                .live
                .plan()
                .as_mut()
                .and_then(|p| segments::take(&mut p.segments, std::time::Instant::now(), warm))
            else {
                return Ok(());
            };
            if !fetched {
                conn = self.spare_conn(stop).await;
            }
            let result = self.fetch_with_retries(idx, file, stop, &mut conn).await;
            fetched = true;
            if let Some(p) = self.live.plan().as_mut() {
                segments::release(&mut p.segments, idx, std::time::Instant::now());
            }
            result?;
        }
    }

    /// Open this transfer's connections while the probe is out, when its requests will go over the splice path:
    /// on a long link each one's first request then goes out a round trip sooner (BENCHMARKS.md, latency). A
    /// connection the plan turns out not to need is closed once the probe has answered.
    fn preconnect(&self) {
        let Some(url) = self.splice_url(&self.url) else {
            return;
        };
        let mut spare = self.live.spare();
        for _ in 0..self.options.threads {
            let url = url.clone();
            spare.push(tokio::spawn(async move { splice::open(&url).await }));
        }
    }

    /// One of the connections [`Transfer::preconnect`] opened, once it is open; `None` when none is left or it
    /// failed to open (the request then opens its own).
    async fn spare_conn(&self, stop: &CancellationToken) -> Option<splice::Conn> {
        let pending = self.live.spare().pop()?;
        tokio::select! {
            _ = stop.cancelled() => None,
            r = pending => r.ok()?.ok(),
        }
    }

    async fn fetch_with_retries(
        &self,
        idx: usize,
        file: &File,
        stop: &CancellationToken,
        conn: &mut Option<splice::Conn>,
    ) -> Result<(), TransferError> {
        let mut attempt = 0u32;
        loop {
            let before = self.seg_pos(idx);
            let err = match self.fetch(idx, file, stop, conn).await {
                Ok(()) if self.seg_done(idx) => return Ok(()),
                // The server sent less than asked, honestly labelled (RFC 9110 §15.3.7): ask for the rest.
                Ok(()) if self.seg_pos(idx) > before => {
                    attempt = 0;
                    continue;
                }
                Ok(()) => TransferError::BadRange("an empty range".into()),
                Err(e) => e,
            };
            attempt = if self.seg_pos(idx) > before {
                1
            } else {
                attempt + 1
            };
            self.pause_before_retry(attempt, err, stop).await?;
        }
    }

    /// Wait before try number `attempt + 1` after `err`: 2^(attempt-1) s with jitter, or longer when the server
    /// says so (Retry-After), capped. Gives the error back when it is final or the tries are used up.
    async fn pause_before_retry(
        &self,
        attempt: u32,
        err: TransferError,
        stop: &CancellationToken,
    ) -> Result<(), TransferError> {
        if stop.is_cancelled() {
            return Err(TransferError::Cancelled);
        }
        if !err.is_retryable() || attempt > self.options.retries {
            return Err(err);
        }
        let backoff = Duration::from_secs(1u64 << (attempt.max(1) - 1).min(6))
            .mul_f64(0.75 + fastrand::f64() * 0.5);
        let wait = err
            .wait_hint()
            .unwrap_or_default()
            .max(backoff)
            .min(MAX_BACKOFF);
        warn!(attempt, cause = %err, wait_ms = wait.as_millis() as u64, "retrying");
        tokio::select! {
            _ = stop.cancelled() => Err(TransferError::Cancelled),
            _ = tokio::time::sleep(wait) => Ok(()),
        }
    }

    async fn probe_with_retries(
        &self,
        want_name: bool,
    ) -> Result<probe::ProbeResult, TransferError> {
        let headers = self.request_headers(&self.url);
        let mut attempt = 0;
        loop {
            let err = tokio::select! {
                _ = self.cancel.cancelled() => return Err(TransferError::Cancelled),
                r = probe::probe(&self.client, &self.url, &headers, self.options.stall_timeout, want_name) => match r {
                    Ok(found) => return Ok(found),
                    Err(e) => e,
                },
            };
            attempt += 1;
            self.pause_before_retry(attempt, err, &self.cancel).await?;
        }
    }

    fn seg_done(&self, idx: usize) -> bool {
        self.live
            .plan()
            .as_ref()
            .and_then(|p| p.segments.get(idx))
            .is_none_or(Segment::is_done)
    }

    fn seg_pos(&self, idx: usize) -> u64 {
        self.live
            .plan()
            .as_ref()
            .and_then(|p| p.segments.get(idx))
            .map_or(0, |s| s.pos)
    }

    /// Fetch what is left of segment `idx` over one request; `conn` is the plain connection the last one left open.
    async fn fetch(
        &self,
        idx: usize,
        file: &File,
        stop: &CancellationToken,
        conn: &mut Option<splice::Conn>,
    ) -> Result<(), TransferError> {
        let (url, pos, end, ranges, total, validator, etag, last_modified, path) = {
            let mut guard = self.live.plan();
            let plan = guard.as_mut().expect("prepared");
            let s = &mut plan.segments[idx];
            if !plan.ranges && s.pos > 0 {
                // Without ranges a stream can only start at zero.
                s.pos = 0;
                s.claimed = 0;
                self.live.downloaded.store(0, Ordering::Relaxed);
            }
            let s = &plan.segments[idx];
            if s.is_done() {
                return Ok(());
            }
            (
                plan.final_url.clone(),
                s.pos,
                s.end,
                plan.ranges,
                plan.total,
                plan.if_range().map(str::to_string),
                plan.etag.clone(),
                plan.last_modified.clone(),
                plan.path.clone(),
            )
        };
        let mut headers = self.request_headers(&url);
        if ranges {
            let range = if end == OPEN_END {
                format!("bytes={pos}-")
            } else {
                format!("bytes={pos}-{}", end - 1)
            };
            headers.insert(
                header::RANGE,
                HeaderValue::from_str(&range).expect("digits are a valid header value"),
            );
            if let Some(v) = validator
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                headers.insert(header::IF_RANGE, v);
            }
        }
        let stall = self.options.stall_timeout;
        let (status, h, mut body) = tokio::select! {
            _ = stop.cancelled() => return Err(TransferError::Cancelled),
            r = tokio::time::timeout(stall, self.send(&url, headers, ranges, conn)) => r.map_err(|_| TransferError::Stalled)??,
        };
        let h = &h;
        let changed = |what: &str| TransferError::Changed(what.to_string());
        let differs = |name: HeaderName, known: &Option<String>| match (
            known,
            h.get(name).and_then(|v| v.to_str().ok()),
        ) {
            (Some(k), Some(got)) => k != got,
            _ => false,
        };
        if differs(header::ETAG, &etag) {
            return Err(changed("ETag differs"));
        }
        if differs(header::LAST_MODIFIED, &last_modified) {
            return Err(changed("Last-Modified differs"));
        }
        // Where this response's bytes end: a server may send less than the range asked for.
        let mut resp_end = OPEN_END;
        match status {
            StatusCode::PARTIAL_CONTENT if ranges => {
                let cr = h
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range);
                let Some(cr) = cr else {
                    return Err(TransferError::BadRange(
                        "206 without a valid Content-Range".into(),
                    ));
                };
                if cr.total.is_some() && total.is_some() && cr.total != total {
                    return Err(changed("size differs"));
                }
                let want_last = if end == OPEN_END { cr.last } else { end - 1 };
                if cr.first != pos || cr.last > want_last {
                    return Err(TransferError::BadRange(format!(
                        "asked for bytes {pos}-{want_last}, got {}-{}",
                        cr.first, cr.last
                    )));
                }
                resp_end = cr.last + 1;
            }
            StatusCode::OK if ranges => return Err(TransferError::NoRanges),
            StatusCode::OK => {
                if let (Some(t), Some(len)) = (total, content_length(h))
                    && t != len
                {
                    return Err(changed("size differs"));
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                return Err(changed("the server refused the range (416)"));
            }
            s => return Err(TransferError::from_status(s, h)),
        }

        let _conn = ConnectionGuard::new(&self.live.connections);
        let own: Vec<&RateLimiter> = self.limiters.iter().map(Arc::as_ref).collect();
        let mut at = pos;
        loop {
            // Never more than one piece of the rate limiters, nor past this response's range or the segment's end
            // (a split may have moved it): once the segment is done, nothing more is taken off the network.
            let max = {
                let guard = self.live.plan();
                let s = &guard.as_ref().expect("prepared").segments[idx];
                if s.pos != at {
                    return Err(TransferError::Setup(
                        "internal error: segment moved under its connection".into(),
                    ));
                }
                (s.end - s.pos).min(resp_end - at).min(STAGE_MAX as u64) as usize
            };
            let max = ratelimit::piece_size(&own).map_or(max, |p| max.min(p));
            if max == 0 {
                break;
            }
            let staged = tokio::select! {
                _ = stop.cancelled() => return Err(TransferError::Cancelled),
                r = tokio::time::timeout(stall, body.stage(max)) => r.map_err(|_| TransferError::Stalled)??,
            };
            if staged == 0 {
                let mut guard = self.live.plan();
                let plan = guard.as_mut().expect("prepared");
                let s = &mut plan.segments[idx];
                if s.end == OPEN_END {
                    // A stream of unknown length ends where the server closes it.
                    s.end = s.pos;
                    plan.total = Some(s.pos);
                    return Ok(());
                }
                if s.is_done() || at == resp_end {
                    break;
                }
                return Err(TransferError::EarlyEof(s.remaining()));
            }
            let n = {
                let mut guard = self.live.plan();
                let s = &mut guard.as_mut().expect("prepared").segments[idx];
                // A split while the bytes were being staged may have moved the end closer.
                let n = (staged as u64).min(s.end - s.pos) as usize;
                s.claimed = s.pos + n as u64;
                n
            };
            if n == 0 {
                // A split shortened this segment: drop the rest of the response.
                return Ok(());
            }
            ratelimit::acquire(&own, n).await;
            body.commit(file, at, n)
                .map_err(|e| TransferError::io(&path, e))?;
            at += n as u64;
            {
                let mut guard = self.live.plan();
                let s = &mut guard.as_mut().expect("prepared").segments[idx];
                s.wrote(at, std::time::Instant::now());
            }
            self.live.downloaded.fetch_add(n as u64, Ordering::Relaxed);
        }
        // The response's range is used up: its connection may serve the next request.
        match body {
            Body::Spliced(b) => *conn = b.into_conn(),
            // Read the message's end too: hyper hands a connection back to its pool only once it has seen it, and
            // a next request sent before that opens another connection.
            Body::Reqwest { mut resp, .. } if at == resp_end => {
                let _ = tokio::time::timeout(stall, resp.chunk()).await;
            }
            _ => {}
        }
        Ok(())
    }

    /// `url`, parsed, when this transfer's ranged bodies from it go over the splice path.
    fn splice_url(&self, url: &str) -> Option<url::Url> {
        if !self.options.splice || self.live.splice_off.load(Ordering::Relaxed) {
            return None;
        }
        url::Url::parse(url).ok().filter(splice::eligible)
    }

    /// Send the GET over the splice path when it can carry it, else through reqwest; the answer's status, headers
    /// and body.
    async fn send(
        &self,
        url: &str,
        headers: HeaderMap,
        ranges: bool,
        conn: &mut Option<splice::Conn>,
    ) -> Result<(StatusCode, HeaderMap, Body), TransferError> {
        if ranges && let Some(parsed) = self.splice_url(url) {
            match splice::get(conn.take(), &parsed, &headers).await {
                Ok(splice::Answer::Body(status, h, body)) => {
                    return Ok((status, h, Body::Spliced(body)));
                }
                Ok(splice::Answer::Other(status, h)) => return Ok((status, h, Body::Unread)),
                Ok(splice::Answer::NotHere) => {
                    debug!("the server's answer needs reqwest; no more splicing for this transfer");
                    self.live.splice_off.store(true, Ordering::Relaxed);
                }
                Err(e) if e.kind() == ErrorKind::InvalidData => {
                    return Err(TransferError::Malformed(e.to_string()));
                }
                Err(e) => return Err(TransferError::Network(e.to_string())),
            }
        }
        let resp = self
            .client
            .get(url)
            .headers(headers)
            .send()
            .await
            .map_err(TransferError::from_reqwest)?;
        let (status, h) = (resp.status(), resp.headers().clone());
        let body = Body::Reqwest {
            resp,
            pending: Bytes::new(),
        };
        Ok((status, h, body))
    }

    /// The caller's headers for `url`, less `Cookie` and `Authorization` when a redirect moved the download to
    /// another host: forwarded credentials belong to the site they came from.
    fn request_headers(&self, url: &str) -> HeaderMap {
        let mut h = self.headers.clone();
        let host = |u: &str| {
            url::Url::parse(u)
                .ok()
                .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        };
        if host(url) != host(&self.url) {
            h.remove(header::COOKIE);
            h.remove(header::AUTHORIZATION);
        }
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        h
    }

    /// Sync, check, and move the `.part` file to its final path without overwriting anything.
    async fn finish(&self, file: &Arc<File>) -> Result<PathBuf, TransferError> {
        let plan = self.live.snapshot().expect("prepared");
        let part = filename::part_path(&plan.path);
        let expected = self.options.sha256.clone();
        let file = file.clone();
        let total = plan.total;
        let result = tokio::task::spawn_blocking(move || -> Result<PathBuf, TransferError> {
            if let Some(t) = total {
                file.set_len(t).map_err(|e| TransferError::io(&part, e))?;
            }
            file.sync_data().map_err(|e| TransferError::io(&part, e))?;
            if let Some(expected) = expected {
                let actual = sha256_file(&part).map_err(|e| TransferError::io(&part, e))?;
                if !actual.eq_ignore_ascii_case(&expected) {
                    let _ = std::fs::remove_file(&part);
                    return Err(TransferError::Checksum { expected, actual });
                }
            }
            place(&part, &plan.path)
        })
        .await
        .map_err(|e| TransferError::Setup(format!("finishing task failed: {e}")))??;
        if let Some(p) = self.live.plan().as_mut() {
            p.path = result.clone();
        }
        Ok(result)
    }
}

/// Move `part` to `path`, or to the next free name if something appeared there meanwhile. A hard link refuses to
/// replace an existing file, which a rename would do silently.
/// Most bytes staged at once.
const STAGE_MAX: usize = 1 << 20;

/// A response body on its way into the file: [`Body::stage`] takes bytes off the network, [`Body::commit`] writes
/// them, so the rate limiters are charged in between.
enum Body {
    Reqwest {
        resp: reqwest::Response,
        pending: Bytes,
    },
    Spliced(splice::Body),
    /// An error answer's body, never read.
    Unread,
}

impl Body {
    /// Take up to `max` (> 0) bytes; 0 means the body is over.
    async fn stage(&mut self, max: usize) -> Result<usize, TransferError> {
        match self {
            Body::Reqwest { resp, pending } => {
                while pending.is_empty() {
                    match resp.chunk().await.map_err(TransferError::from_reqwest)? {
                        Some(chunk) => *pending = chunk,
                        None => return Ok(0),
                    }
                }
                Ok(pending.len().min(max))
            }
            Body::Spliced(b) => b
                .stage(max)
                .await
                .map_err(|e| TransferError::Network(e.to_string())),
            Body::Unread => Ok(0),
        }
    }

    /// Write the first `n` staged bytes at `at`.
    fn commit(&mut self, file: &File, at: u64, n: usize) -> std::io::Result<()> {
        match self {
            Body::Reqwest { pending, .. } => {
                file.write_all_at(&pending[..n], at)?;
                pending.advance(n);
                Ok(())
            }
            Body::Spliced(b) => b.commit(file, at, n),
            Body::Unread => Ok(()),
        }
    }
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn place(part: &Path, path: &Path) -> Result<PathBuf, TransferError> {
    let mut target = path.to_path_buf();
    loop {
        match std::fs::hard_link(part, &target) {
            Ok(()) => {
                std::fs::remove_file(part).map_err(|e| TransferError::io(part, e))?;
                break;
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let dir = target.parent().unwrap_or(Path::new(".")).to_path_buf();
                let name = target
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                target = filename::unique_path(&dir, &name);
            }
            Err(_) if !target.exists() => {
                // File systems without hard links: a rename, checked just before.
                std::fs::rename(part, &target).map_err(|e| TransferError::io(&target, e))?;
                break;
            }
            Err(e) => return Err(TransferError::io(&target, e)),
        }
    }
    if let Some(dir) = target.parent().and_then(|d| File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(target)
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Counts a connection as open while it is alive.
struct ConnectionGuard<'a>(&'a AtomicU32);

impl<'a> ConnectionGuard<'a> {
    fn new(c: &'a AtomicU32) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(c)
    }
}

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Speed smoothed over the last few seconds, from samples of a byte counter.
#[derive(Debug, Default)]
pub struct SpeedMeter {
    samples: std::collections::VecDeque<(tokio::time::Instant, u64)>,
}

impl SpeedMeter {
    /// How far back the average reaches.
    const WINDOW: Duration = Duration::from_secs(3);

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
        let dt = now.duration_since(t0).as_secs_f64();
        if dt < 0.05 {
            0
        } else {
            ((bytes - b0) as f64 / dt) as u64
        }
    }

    pub fn reset(&mut self) {
        self.samples.clear();
    }
}

/// Seconds left at `speed`, when both are known.
pub fn eta(total: Option<u64>, downloaded: u64, speed: u64) -> Option<u64> {
    let total = total?;
    (speed > 0).then(|| total.saturating_sub(downloaded).div_ceil(speed))
}

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
    /// Move plain-HTTP ranged bodies with splice(2) (see [`splice`]); off, every byte goes through reqwest.
    pub splice: bool,
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

/// Turn `(name, value)` pairs into headers, refusing malformed ones.
pub fn header_map<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        let name = HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| format!("invalid header name {k:?}"))?;
        // Framing and encoding are the engine's business: a forwarded Range or Accept-Encoding would corrupt files.
        if [
            header::RANGE,
            header::IF_RANGE,
            header::ACCEPT_ENCODING,
            header::HOST,
            header::CONTENT_LENGTH,
            header::CONNECTION,
            header::TRANSFER_ENCODING,
        ]
        .contains(&name)
        {
            continue;
        }
        let value = HeaderValue::from_str(v.trim())
            .map_err(|_| format!("invalid value for header {k:?}"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// Download `spec.url` to its final path and return that path. On any error nothing is left at the final path, and
/// the `.part` file is removed (a one-shot download has no later resume). `on_progress` is called 5 times a second.
pub async fn get(
    spec: GetSpec,
    mut on_progress: impl FnMut(&Snapshot) + Send,
) -> anyhow::Result<PathBuf> {
    let headers = header_map(spec.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(anyhow::Error::msg)?;
    let dest = if spec.output.is_dir() {
        Dest::Dir {
            dir: spec.output.clone(),
            name: None,
        }
    } else {
        Dest::File(spec.output.clone())
    };
    let live = Live::new(None);
    let transfer = Transfer {
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
        },
        limiters: vec![Arc::new(RateLimiter::new(spec.limit))],
        cancel: CancellationToken::new(),
        live: live.clone(),
        on_plan: None,
    };
    let mut run = std::pin::pin!(transfer.run());
    let mut meter = SpeedMeter::default();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let result = loop {
        tokio::select! {
            r = &mut run => break r,
            _ = tick.tick() => {
                let plan = live.snapshot();
                let downloaded = live.downloaded.load(Ordering::Relaxed);
                on_progress(&Snapshot {
                    filename: plan.as_ref().and_then(|p| p.path.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                    total: plan.as_ref().and_then(|p| p.total),
                    downloaded,
                    speed: meter.sample(downloaded),
                    connections: live.connections.load(Ordering::Relaxed),
                });
            }
        }
    };
    match result {
        Ok(path) => Ok(path),
        Err(e) => {
            if let Some(plan) = live.snapshot() {
                let _ = std::fs::remove_file(filename::part_path(&plan.path));
            }
            Err(e.into())
        }
    }
}
