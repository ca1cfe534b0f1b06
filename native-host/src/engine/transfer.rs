//! One file, start to finish.
//!
//! A [`Transfer`] probes the URL (unless a saved [`Plan`] says where it stands), creates the `.part` file beside the
//! final path, and runs up to N connections. The probe is a plain GET whose body goes on as the first segment (see
//! [`PROBE_WHOLE`]), so a small file costs one request. Each connection owns a [`Segment`] and writes what it
//! receives in place with positional writes; when its segment is done it takes another, or half of the largest one
//! left (see [`segments`]). Every response is judged before a byte of it is written (see [`response`]): a ranged
//! request must get 206 with exactly the range asked for, and a changed ETag or Last-Modified means the file changed
//! on the server, so the transfer starts over rather than splice two versions. When all bytes are written and synced,
//! the `.part` file is placed at the final path, never over an existing file (see [`part`]).

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use protocol::validate::{self, Invalid};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Method, StatusCode};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::body::{Body, STAGE_MAX};
use super::error::{self, TransferError};
use super::filename;
use super::part;
use super::plan::{Dest, Live, Plan};
use super::probe::{self, FirstBody};
use super::ratelimit::{self, RateLimiter};
use super::response::{self, Asked};
use super::segments::{self, Segment};
use super::splice;

/// Per-transfer knobs.
#[derive(Debug, Clone)]
pub struct Options {
    pub threads: u32,
    pub retries: u32,
    pub stall_timeout: Duration,
    /// Expected sha256 of the whole file, lowercase hex.
    pub sha256: Option<String>,
    /// Carry ranged bodies over our own socket (see [`splice`]): with splice(2) over http, decrypted into a buffer of
    /// ours over https; off, every byte goes through reqwest.
    pub splice: bool,
    /// The smallest file whose https bodies take the own path ([`OWN_TLS_MIN`] but in tests, which take it at any
    /// size).
    pub own_tls_min: u64,
}

/// Called once the probe has fixed the final path and size.
pub type OnPlan = Box<dyn Fn(&Plan) + Send + Sync>;

/// One file's download.
pub struct Transfer {
    pub client: Client,
    pub url: String,
    /// The caller's headers ([`caller_headers`]), given for `url`'s origin: sent only there (see [`probe::Caller`]).
    pub headers: HeaderMap,
    pub dest: Dest,
    pub options: Options,
    /// The buckets this transfer's bytes are charged to: its own, then the global one.
    pub limiters: Vec<Arc<RateLimiter>>,
    pub cancel: CancellationToken,
    pub live: Arc<Live>,
    pub on_plan: Option<OnPlan>,
}

/// The smallest file whose https bodies take the own path. Its connection is a TLS handshake of its own (a key
/// exchange and a certificate check), while reqwest's first request reuses the probe's; the own path saves about a
/// sixth of the CPU per byte, which repays that handshake from a few MiB on. (200 files of 256 KiB over the own path
/// took 4x aria2c's time with eight spare connections a file, 2x with one.)
pub const OWN_TLS_MIN: u64 = 4 << 20;
/// The largest file whose probe's answer carries it when the own path carries the transfer's ranged requests. A
/// larger one's bytes go over the own path, which costs less CPU, on connections opened while the probe was out: the
/// probe's answer is dropped (a connection carrying the file besides the N would take a share of a long link from
/// them: 5 % of the 100 ms RTT scenario's speed). Through reqwest, the probe's answer carries the first segment.
const PROBE_WHOLE: u64 = segments::MIN_SPLIT;
/// How many times a file may change under a download before it fails.
const MAX_RESTARTS: u32 = 3;
/// Longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What one request for a segment needs from the plan, read under one lock.
struct Ask {
    url: String,
    /// The final path, to name in errors about its part file.
    path: PathBuf,
    asked: Asked,
}

impl Transfer {
    /// Run to completion; returns the final path. On error the `.part` file stays (for a resume); nothing is ever at
    /// the final path unless it is complete and exact.
    pub async fn run(self) -> Result<PathBuf, TransferError> {
        let this = Arc::new(self);
        loop {
            if this.cancel.is_cancelled() {
                return Err(TransferError::Cancelled);
            }
            let (file, first) = this.prepare().await?;
            this.live.set_file(Some(file.clone()));
            let result = this.clone().run_connections(file.clone(), first).await;
            match result {
                Ok(()) => {
                    let path = this.finish(&file).await;
                    this.live.set_file(None);
                    return path;
                }
                Err(TransferError::NoRanges) => {
                    warn!("server ignores ranges; going on over one connection from the start");
                    this.live.reset(false, None);
                }
                Err(TransferError::Changed(why)) => {
                    let restarts = this.live.plan().as_ref().map_or(0, |p| p.restarts) + 1;
                    if restarts > MAX_RESTARTS {
                        return Err(TransferError::Changed(why));
                    }
                    warn!(cause = %why, "file changed on the server; starting over");
                    this.live.reset(true, Some(restarts));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Probe if needed, fix the final path, and open the `.part` file; with the probe's answer's body, when it holds
    /// the file's first bytes.
    async fn prepare(&self) -> Result<(Arc<File>, Option<FirstBody>), TransferError> {
        let existing = self.live.snapshot();
        let needs_probe = existing.as_ref().is_none_or(|p| p.segments.is_empty());
        let (mut plan, first) = match existing {
            Some(plan) if !needs_probe => (plan, None),
            previous => self.new_plan(previous).await?,
        };
        let part = filename::part_path(&plan.path);
        let file = match needs_probe {
            true => part::create(&part)?,
            false => match part::reopen(&part)? {
                Some(f) => f,
                None => {
                    warn!(path = %part.display(), "part file is gone; starting from zero");
                    plan.segments = segments::fresh(plan.total, plan.ranges, self.options.threads);
                    part::create(&part)?
                }
            },
        };
        part::set_size(&file, &part, plan.total)?;
        self.live
            .downloaded
            .store(plan.downloaded(), Ordering::Relaxed);
        *self.live.plan() = Some(plan.clone());
        if let Some(cb) = &self.on_plan {
            cb(&plan);
        }
        Ok((Arc::new(file), first))
    }

    /// Probe the URL and plan the transfer from what the server says; `previous`: the plan of a file that changed.
    /// The probe's body, when it holds the file's first bytes, comes back with the plan.
    async fn new_plan(
        &self,
        previous: Option<Plan>,
    ) -> Result<(Plan, Option<FirstBody>), TransferError> {
        self.preconnect();
        let (found, first) = self.probe_with_retries().await?;
        debug!(total = ?found.total, ranges = found.ranges, "probed");
        let path = match &previous {
            Some(p) => p.path.clone(),
            None => self.choose_path(found.name.as_deref())?,
        };
        // On the own path a larger file's body goes over the connections opened while the probe was out, and the
        // probe's answer is dropped at once: it is then no more than a HEAD.
        let first = first.filter(|_| {
            found.total.is_some_and(|t| t <= PROBE_WHOLE)
                || !self.own_path(&found.final_url, found.total, found.ranges)
        });
        let segments = segments::fresh(found.total, found.ranges, self.options.threads);
        let plan = Plan {
            final_url: found.final_url,
            total: found.total,
            ranges: found.ranges,
            etag: found.etag,
            last_modified: found.last_modified,
            path,
            segments,
            restarts: previous.map_or(0, |p| p.restarts),
        };
        Ok((plan, first))
    }

    /// The final path for a new transfer: never an existing file, and its `.part` file reserved at once.
    fn choose_path(&self, server_name: Option<&str>) -> Result<PathBuf, TransferError> {
        let (dir, name) = self.dest.folder_and_name();
        let name = name.unwrap_or_else(|| filename::sanitize(server_name.unwrap_or("download")));
        part::reserve(dir, &name)
    }

    /// Run the connections until every segment is written, one fails for good, or the transfer is cancelled. `first`:
    /// the probe's body, written into the segment it starts by the first connection.
    async fn run_connections(
        self: Arc<Self>,
        file: Arc<File>,
        first: Option<FirstBody>,
    ) -> Result<(), TransferError> {
        let (own_path, count) = match self.live.plan().as_ref() {
            Some(p) => (
                self.own_path(&p.final_url, p.total, p.ranges),
                if p.ranges {
                    self.options.threads.max(1)
                } else {
                    1
                },
            ),
            None => (false, 1),
        };
        // The probe's body holds the start of the first segment, which its connection takes before any other.
        let mut first = first.and_then(|f| {
            let mut guard = self.live.plan();
            let segs = &mut guard.as_mut()?.segments;
            let idx = segments::take(segs, Instant::now(), true)?;
            if segs[idx].pos == f.range.start {
                return Some((idx, f));
            }
            segments::release(segs, idx, Instant::now());
            None
        });
        // The connections opened during the probe that will carry a first request; only the own path uses them.
        let usable = match self.live.plan().as_ref() {
            Some(p) if own_path => p
                .segments
                .iter()
                .filter(|s| !s.is_done() && !s.busy)
                .count(),
            _ => 0,
        };
        self.live.splice.keep_spares(usable.min(count as usize));
        let stop = self.cancel.child_token();
        let mut set = JoinSet::new();
        // The probe's connection is one of the N.
        for _ in 0..count {
            let (this, file, stop, first) =
                (self.clone(), file.clone(), stop.clone(), first.take());
            set.spawn(async move { this.connection(&file, &stop, first).await });
        }
        let mut first_err = None;
        while let Some(res) = set.join_next().await {
            let res = res.unwrap_or_else(|e| Err(TransferError::Task("connection", e)));
            if let Err(e) = res {
                stop.cancel();
                if first_err.is_none() || matches!(first_err, Some(TransferError::Cancelled)) {
                    first_err = Some(e);
                }
            }
        }
        self.live.splice.keep_spares(0);
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
            return Err(TransferError::Internal("connections ended with bytes left"));
        }
        Ok(())
    }

    /// One connection: take segments until none is left, retrying each with backoff. `first`: a segment it owns
    /// already and the probe's body for it, to start with.
    async fn connection(
        &self,
        file: &File,
        stop: &CancellationToken,
        mut first: Option<(usize, FirstBody)>,
    ) -> Result<(), TransferError> {
        let mut conn = None;
        let mut fetched = false;
        loop {
            let (idx, body) = match first.take() {
                Some((idx, body)) => (idx, Some(body)),
                None => {
                    // Warm: our spliced connection is still open, or (through reqwest, whose pool we cannot see)
                    // connections of this transfer have finished responses and are pooled.
                    let warm = conn.is_some()
                        || (fetched
                            && (self.live.plan().as_ref())
                                .is_none_or(|p| self.splice_url(&p.final_url).is_none()));
                    let Some(idx) = (self.live.plan().as_mut())
                        .and_then(|p| segments::take(&mut p.segments, Instant::now(), warm))
                    else {
                        return Ok(());
                    };
                    if !fetched {
                        conn = self.live.splice.take_spare(stop).await;
                    }
                    (idx, None)
                }
            };
            let result = self
                .fetch_with_retries(idx, file, stop, &mut conn, body)
                .await;
            fetched = true;
            if let Some(p) = self.live.plan().as_mut() {
                segments::release(&mut p.segments, idx, Instant::now());
            }
            result?;
        }
    }

    /// Whether the own path ([`splice`]) carries this transfer's ranged requests, for a file at `final_url` of `total`
    /// bytes: over https only from [`Options::own_tls_min`] on, which this sets on the route as it asks.
    fn own_path(&self, final_url: &str, total: Option<u64>, ranges: bool) -> bool {
        self.live
            .splice
            .allow_tls(total.is_some_and(|t| t >= self.options.own_tls_min));
        ranges && self.splice_url(final_url).is_some()
    }

    /// Open this transfer's connections while the probe is out, when its requests will go over the splice path:
    /// on a long link each one's first request then goes out a round trip sooner (BENCHMARKS.md, latency). A
    /// connection the plan turns out not to need is closed once the probe has answered.
    fn preconnect(&self) {
        // Over https the own path is chosen only once the size is known (`run_connections`), so nothing is opened
        // here for it.
        if let Some(url) = self.splice_url(&self.url) {
            self.live.splice.open_spares(&url, self.options.threads);
        }
    }

    /// Fetch what is left of segment `idx`, starting with `first` (the probe's body) when given.
    async fn fetch_with_retries(
        &self,
        idx: usize,
        file: &File,
        stop: &CancellationToken,
        conn: &mut Option<splice::Conn>,
        mut first: Option<FirstBody>,
    ) -> Result<(), TransferError> {
        let mut attempt = 0u32;
        loop {
            let before = self.seg_pos(idx);
            let result = match first.take() {
                Some(body) => {
                    let r = self.fetch_first(idx, file, stop, body).await;
                    // The rest of the segment, if any, goes over a connection opened during the probe.
                    if conn.is_none() && !self.seg_done(idx) {
                        *conn = self.live.splice.take_spare(stop).await;
                    }
                    r
                }
                None => self.fetch(idx, file, stop, conn).await,
            };
            let err = match result {
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
    ) -> Result<(probe::ProbeResult, Option<FirstBody>), TransferError> {
        let mut attempt = 0;
        loop {
            let err = tokio::select! {
                _ = self.cancel.cancelled() => return Err(TransferError::Cancelled),
                r = probe::probe(&self.client, &self.url, &self.headers, self.options.stall_timeout, false) => match r {
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

    /// What a request for segment `idx` needs from the plan; `None` when the segment is done. Without ranges a stream
    /// can only start at zero, so a segment part-written without them starts over.
    fn ask(&self, idx: usize) -> Option<Ask> {
        let mut guard = self.live.plan();
        let plan = guard.as_mut().expect("prepared");
        let s = &mut plan.segments[idx];
        if !plan.ranges && s.pos > 0 {
            s.pos = 0;
            s.claimed = 0;
            self.live.downloaded.store(0, Ordering::Relaxed);
        }
        if s.is_done() {
            return None;
        }
        Some(Ask {
            url: plan.final_url.clone(),
            path: plan.path.clone(),
            asked: Asked {
                pos: s.pos,
                end: s.end,
                ranges: plan.ranges,
                total: plan.total,
                etag: plan.etag.clone(),
                last_modified: plan.last_modified.clone(),
            },
        })
    }

    /// Fetch what is left of segment `idx` over one request; `conn` is the plain connection the last one left open.
    async fn fetch(
        &self,
        idx: usize,
        file: &File,
        stop: &CancellationToken,
        conn: &mut Option<splice::Conn>,
    ) -> Result<(), TransferError> {
        let Some(ask) = self.ask(idx) else {
            return Ok(());
        };
        let mut own = HeaderMap::new();
        own.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        ask.asked.add_headers(&mut own);
        let stall = self.options.stall_timeout;
        let (status, h, body) = tokio::select! {
            _ = stop.cancelled() => return Err(TransferError::Cancelled),
            r = tokio::time::timeout(stall, self.send(&ask.url, &own, ask.asked.ranges, conn)) => r.map_err(|_| TransferError::Stalled)??,
        };
        let range = response::judge(&ask.asked, status, &h)?;
        let answer = Judged { body, range };
        self.consume(idx, file, stop, answer, &ask.path, conn).await
    }

    /// Write the probe's body, judged when it came, into segment `idx`, which starts where it does (checked when the
    /// segment was taken for it, in `run_connections`).
    async fn fetch_first(
        &self,
        idx: usize,
        file: &File,
        stop: &CancellationToken,
        first: FirstBody,
    ) -> Result<(), TransferError> {
        let Some(ask) = self.ask(idx) else {
            return Ok(());
        };
        let answer = Judged {
            body: Body::reqwest(first.resp),
            range: first.range,
        };
        self.consume(idx, file, stop, answer, &ask.path, &mut None)
            .await
    }

    /// Write an answer's body into segment `idx`; `conn` receives the connection of a spliced body used up, for the
    /// next request.
    async fn consume(
        &self,
        idx: usize,
        file: &File,
        stop: &CancellationToken,
        answer: Judged,
        path: &Path,
        conn: &mut Option<splice::Conn>,
    ) -> Result<(), TransferError> {
        let Judged { mut body, range } = answer;
        let _conn = ConnectionGuard::new(&self.live.connections);
        let at = self
            .write_body(idx, file, stop, &mut body, range.clone(), path)
            .await?;
        // Once the response's range is used up, its connection may serve the next request.
        body.finish(conn, at == range.end, self.options.stall_timeout)
            .await;
        Ok(())
    }

    /// Write `body`, whose bytes are `range` of the file, into segment `idx` piece by piece; returns where it stopped.
    /// The segment's end may move closer meanwhile (a split): once it is reached, nothing more is taken off the
    /// network.
    async fn write_body(
        &self,
        idx: usize,
        file: &File,
        stop: &CancellationToken,
        body: &mut Body,
        range: Range<u64>,
        path: &Path,
    ) -> Result<u64, TransferError> {
        let own: Vec<&RateLimiter> = self.limiters.iter().map(Arc::as_ref).collect();
        let stall = self.options.stall_timeout;
        let mut at = range.start;
        let mut wrote = false;
        loop {
            let max = self.next_piece(idx, at, wrote, range.end, &own)?;
            if max == 0 {
                return Ok(at);
            }
            let staged = tokio::select! {
                _ = stop.cancelled() => return Err(TransferError::Cancelled),
                r = tokio::time::timeout(stall, body.stage(max)) => r.map_err(|_| TransferError::Stalled)??,
            };
            if staged == 0 {
                return self.body_ended(idx, at, range.end);
            }
            ratelimit::acquire(&own, staged).await;
            body.commit(file, at, staged)
                .map_err(|e| TransferError::io(path, e))?;
            at += staged as u64;
            wrote = true;
            self.live
                .downloaded
                .fetch_add(staged as u64, Ordering::Relaxed);
        }
    }

    /// The plan's one lock for a piece of segment `idx`: record bytes up to `at` as written (`wrote`), check the
    /// segment is still where this connection left it, and claim the next piece, so that a split leaves it alone while
    /// it is staged and written. A piece is at most one piece of the rate limiters, [`STAGE_MAX`], and what is left of
    /// the segment and of the response (up to `end`); its size is returned, 0 when nothing is left to take.
    fn next_piece(
        &self,
        idx: usize,
        at: u64,
        wrote: bool,
        end: u64,
        own: &[&RateLimiter],
    ) -> Result<usize, TransferError> {
        let cap = ratelimit::piece_size(own).map_or(STAGE_MAX, |p| p.min(STAGE_MAX));
        let mut guard = self.live.plan();
        let s = &mut guard.as_mut().expect("prepared").segments[idx];
        if wrote {
            s.wrote(at, Instant::now());
        }
        if s.pos != at {
            return Err(TransferError::Internal(
                "segment moved under its connection",
            ));
        }
        let max = (s.end - s.pos).min(end - at).min(cap as u64) as usize;
        s.claimed = s.pos + max as u64;
        Ok(max)
    }

    /// The body of the response for segment `idx` ended at `at`, before `end`: a stream of unknown length ends here;
    /// otherwise the server closed early.
    fn body_ended(&self, idx: usize, at: u64, end: u64) -> Result<u64, TransferError> {
        let mut guard = self.live.plan();
        let plan = guard.as_mut().expect("prepared");
        let s = &mut plan.segments[idx];
        if s.end == segments::OPEN_END {
            s.end = s.pos;
            plan.total = Some(s.pos);
            return Ok(at);
        }
        if s.is_done() || at == end {
            return Ok(at);
        }
        Err(TransferError::EarlyEof(s.remaining()))
    }

    /// `url`, parsed, when this transfer's ranged bodies from it go over the splice path.
    fn splice_url(&self, url: &str) -> Option<url::Url> {
        if !self.options.splice || self.live.splice.is_off() {
            return None;
        }
        url::Url::parse(url)
            .ok()
            .filter(|u| splice::eligible(u) && self.live.splice.carries(u))
    }

    /// Send the GET for `url` over the splice path when it can carry it, else through reqwest; the answer's status,
    /// headers and body. `own`: the engine's headers (range, encoding). The caller's headers go only to the origin
    /// of the URL they were given for ([`probe::Caller`]): not to where a redirect led, on either path.
    async fn send(
        &self,
        url: &str,
        own: &HeaderMap,
        ranges: bool,
        conn: &mut Option<splice::Conn>,
    ) -> Result<(StatusCode, HeaderMap, Body), TransferError> {
        let caller = probe::Caller::new(&self.headers, &self.url);
        if ranges && let Some(parsed) = self.splice_url(url) {
            let mut headers = caller.for_url(&parsed);
            headers.extend(own.clone());
            match splice::get(conn.take(), &parsed, &headers).await {
                Ok(splice::Answer::Body(status, h, body)) => {
                    return Ok((status, h, Body::Spliced(body)));
                }
                Ok(splice::Answer::Other(status, h)) => return Ok((status, h, Body::Unread)),
                Ok(splice::Answer::NotHere) => {
                    debug!("the server's answer needs reqwest; no more splicing for this transfer");
                    self.live.splice.turn_off();
                }
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    return Err(TransferError::Malformed(e.to_string()));
                }
                // Over https: rustls refusing the certificate, as reqwest would report it.
                Err(e) => {
                    return Err(match error::certificate_problem(&e) {
                        Some(problem) => TransferError::Certificate(problem),
                        None => TransferError::Network(e.to_string()),
                    });
                }
            }
        }
        let resp = probe::send(&self.client, Method::GET, url, &caller, own).await?;
        let (status, h) = (resp.status(), resp.headers().clone());
        Ok((status, h, Body::reqwest(resp)))
    }

    /// Sync, check, and move the `.part` file to its final path without overwriting anything.
    async fn finish(&self, file: &Arc<File>) -> Result<PathBuf, TransferError> {
        let plan = self.live.snapshot().expect("prepared");
        let (file, sha256) = (file.clone(), self.options.sha256.clone());
        let placed = tokio::task::spawn_blocking(move || {
            part::finish(&file, &plan.path, plan.total, sha256)
        })
        .await
        .map_err(|e| TransferError::Task("finishing", e))??;
        if let Some(p) = self.live.plan().as_mut() {
            p.path = placed.clone();
        }
        Ok(placed)
    }
}

/// The caller's `(name, value)` pairs as request headers; a malformed one is refused. Framing and encoding are the
/// engine's business, so those headers are dropped: a forwarded Range or Accept-Encoding would corrupt files.
pub fn caller_headers<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<HeaderMap, Invalid> {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        validate::header(k, v)?;
        let name = HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| Invalid(format!("invalid header name {k:?}")))?;
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
            .map_err(|_| Invalid(format!("invalid value for header {k:?}")))?;
        map.append(name, value);
    }
    Ok(map)
}

/// An answer judged fit to write: its body holds bytes `range` of the file.
struct Judged {
    body: Body,
    range: Range<u64>,
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
