//! The download engine.
//!
//! # Layout
//! - [`Engine`] (this file): the queue. Holds every download, runs up to `max_concurrent` of them, applies commands and
//!   settings live, pushes [`protocol::Event`]s, and checkpoints state.
//! - [`transfer`]: one file, start to finish: probe, segmented ranged download into a `.part` file, validation, rename.
//! - [`probe`]: what the server says about a URL (size, ranges, validators, name).
//! - [`segments`]: the ranges still to fetch and how a free connection takes half of the largest.
//! - [`ratelimit`]: token buckets, per download under a global one.
//! - [`filename`]: Content-Disposition parsing and file-name sanitizing.
//! - [`state`]: the JSON files in the data directory, written atomically.

pub mod filename;
pub mod probe;
pub mod ratelimit;
pub mod segments;
pub mod splice;
pub mod state;
pub mod transfer;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protocol::{
    AddRequest, AddResult, DownloadId, DownloadInfo, ErrorBody, ErrorCode, Event, HistoryItem,
    HistoryResult, ListResult, PageRequest, Progress, Settings, SettingsPatch, Status,
};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use ratelimit::RateLimiter;
use state::DownloadRecord;
use transfer::{Dest, Live, Options, Plan, SpeedMeter, Transfer, TransferError};

/// Where the engine keeps its files.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The user data directory: state, history and settings live here.
    pub data_dir: PathBuf,
    /// Where downloads go while the settings name no folder.
    pub default_download_dir: PathBuf,
}

/// A request the engine refused, with a code a program can match on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

impl From<ApiError> for ErrorBody {
    fn from(e: ApiError) -> ErrorBody {
        ErrorBody {
            code: e.code,
            message: e.message,
        }
    }
}

/// The queue of downloads. Cheap to clone; every clone drives the same queue.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: EngineConfig,
    client: reqwest::Client,
    core: Mutex<Core>,
    events: broadcast::Sender<Event>,
    /// The cap over all downloads.
    global: Arc<RateLimiter>,
    /// Something changed that must reach disk soon (progress: within a second).
    dirty: AtomicBool,
    /// A status changed: write state now.
    save_now: Notify,
    /// One state write at a time, so an older snapshot never lands after a newer one.
    save_lock: tokio::sync::Mutex<()>,
    /// Changes made to the queue so far (bumped under the core lock), and how many of them the last completed state
    /// write covers: [`Engine::persist`] waits until the second reaches the first.
    mutations: AtomicU64,
    saved: AtomicU64,
    stopping: CancellationToken,
    warnings: Vec<String>,
    /// Verified adds take turns per URL (see [`Engine::add_verified`]): an entry lives while an add holds or waits
    /// for that URL's turn.
    url_turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Client keys of verified adds that have not answered yet, with how many carry each: `find` waits for them.
    verifying: Mutex<HashMap<String, usize>>,
    /// Signalled each time a verified add with a client key answers.
    verified: Notify,
}

struct Core {
    settings: Settings,
    next_id: DownloadId,
    /// Ids below this are reserved on disk (`ids.json`); reaching it reserves the next block first.
    reserved_ids: DownloadId,
    downloads: BTreeMap<DownloadId, Entry>,
    /// Oldest first.
    history: Vec<HistoryItem>,
}

struct Entry {
    rec: DownloadRecord,
    live: Arc<Live>,
    limiter: Arc<RateLimiter>,
    /// Set while a transfer task runs; cancelling it stops the task, which then reports back.
    task: Option<CancellationToken>,
    /// `remove` was asked while the task ran: forget the download (deleting its file if `true`) when it stops.
    removing: Option<bool>,
    meter: SpeedMeter,
    speed: u64,
}

/// Progress events go out at most this often.
const TICK: Duration = Duration::from_millis(200);
/// Running downloads' progress is saved at most this often.
const CHECKPOINT: Duration = Duration::from_secs(1);
/// How long a verified add waits for the server's first response.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(20);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn not_found(id: DownloadId) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no download with id {id}"))
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidArgument, message)
}

fn fetch_failed(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::FetchFailed, message)
}

impl Core {
    /// The download added with this client key, unless it is on its way out.
    fn by_key(&self, key: &str) -> Option<DownloadId> {
        self.downloads
            .values()
            .find(|e| e.removing.is_none() && e.rec.client_key.as_deref() == Some(key))
            .map(|e| e.rec.id)
    }

    /// An unfinished (queued, running or paused) download of this URL.
    fn unfinished(&self, url: &str) -> Option<DownloadId> {
        self.downloads
            .values()
            .find(|e| e.removing.is_none() && !e.rec.status.is_finished() && e.rec.url == url)
            .map(|e| e.rec.id)
    }
}

/// An add request, checked, before it touches the queue.
struct NewDownload {
    url: url::Url,
    client_key: Option<String>,
    /// The file name: the request's, or for a verified add the server's (sanitized); `None` leaves it to the probe.
    name: Option<String>,
    /// The request's headers, `Referer` included.
    headers: Vec<(String, String)>,
    /// `None`: the settings' default at the time of the add.
    threads: Option<u32>,
    retries: Option<u32>,
    bandwidth_limit: u64,
}

impl NewDownload {
    /// Check every field of `req`; nothing is sent or saved.
    fn check(req: AddRequest) -> Result<NewDownload, ApiError> {
        let url = validate_url(&req.url)?;
        if let Some(t) = req.threads {
            in_range("threads", t, protocol::THREADS_RANGE)?;
        }
        if let Some(r) = req.retries {
            in_range("retries", r, 0..=protocol::MAX_RETRIES)?;
        }
        if let Some(name) = &req.filename {
            filename::validate_user_name(name).map_err(invalid)?;
        }
        if let Some(key) = &req.client_key {
            check_client_key(key)?;
        }
        if req.headers.len() > 64 {
            return Err(invalid("at most 64 headers"));
        }
        let mut headers: Vec<(String, String)> = req.headers.into_iter().collect();
        if let Some(referrer) = req.referrer.filter(|r| !r.is_empty()) {
            url::Url::parse(&referrer)
                .map_err(|e| invalid(format!("referrer is not a URL: {e}")))?;
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("referer"))
            {
                headers.push(("Referer".into(), referrer));
            }
        }
        transfer::header_map(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(invalid)?;
        Ok(NewDownload {
            url,
            client_key: req.client_key,
            name: req.filename,
            headers,
            threads: req.threads,
            retries: req.retries,
            bandwidth_limit: req.bandwidth_limit.unwrap_or(0),
        })
    }
}

/// A client key is 1 to 128 bytes of printable ASCII: it is logged and stored, so nothing that could break a line.
fn check_client_key(key: &str) -> Result<(), ApiError> {
    if protocol::CLIENT_KEY_LEN.contains(&key.len())
        && key.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        Ok(())
    } else {
        Err(invalid(format!(
            "client_key must be {} to {} characters of printable ASCII",
            protocol::CLIENT_KEY_LEN.start(),
            protocol::CLIENT_KEY_LEN.end()
        )))
    }
}

/// One URL's turn among verified adds, held until dropped. Dropped by the last add that held or waited for it, it
/// takes the URL out of [`Inner::url_turns`].
struct UrlTurn {
    engine: Engine,
    url: String,
    turn: Arc<tokio::sync::Mutex<()>>,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for UrlTurn {
    fn drop(&mut self) {
        self.held = None;
        let mut turns = lock(&self.engine.inner.url_turns);
        // Two references: the map's and ours. Anyone else waiting holds a third.
        if turns
            .get(&self.url)
            .is_some_and(|t| Arc::ptr_eq(t, &self.turn) && Arc::strong_count(t) == 2)
        {
            turns.remove(&self.url);
        }
    }
}

/// Marks a client key as being verified, from before the verification starts until its add has answered.
struct Verifying {
    engine: Engine,
    key: String,
}

impl Verifying {
    fn start(engine: &Engine, key: String) -> Verifying {
        *lock(&engine.inner.verifying)
            .entry(key.clone())
            .or_default() += 1;
        Verifying {
            engine: engine.clone(),
            key,
        }
    }
}

impl Drop for Verifying {
    fn drop(&mut self) {
        {
            let mut verifying = lock(&self.engine.inner.verifying);
            if let Some(n) = verifying.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    verifying.remove(&self.key);
                }
            }
        }
        self.engine.inner.verified.notify_waiters();
    }
}

impl Entry {
    fn new(rec: DownloadRecord) -> Entry {
        let live = Live::new(rec.plan.clone());
        if let Some(size) = rec.size {
            live.downloaded.store(size, Ordering::Relaxed);
        }
        Entry {
            live,
            limiter: Arc::new(RateLimiter::new(rec.bandwidth_limit)),
            rec,
            task: None,
            removing: None,
            meter: SpeedMeter::default(),
            speed: 0,
        }
    }

    fn path(&self) -> Option<PathBuf> {
        self.live
            .snapshot()
            .map(|p| p.path)
            .or_else(|| self.rec.path.clone())
    }

    fn info(&self) -> DownloadInfo {
        let plan = self.live.snapshot();
        let path = self.path();
        let running = self.rec.status == Status::Downloading;
        let total = plan
            .as_ref()
            .and_then(|p| p.total)
            .or(self.rec.plan.as_ref().and_then(|p| p.total))
            .or(self.rec.size);
        let downloaded = self.live.downloaded.load(Ordering::Relaxed);
        let total = total.or((self.rec.status == Status::Completed).then_some(downloaded));
        let speed = if running { self.speed } else { 0 };
        DownloadInfo {
            id: self.rec.id,
            url: self.rec.url.clone(),
            filename: path
                .as_ref()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.rec.filename.clone()),
            path: path.map(|p| p.display().to_string()).unwrap_or_default(),
            status: self.rec.status,
            total,
            downloaded,
            speed,
            eta: if running {
                transfer::eta(total, downloaded, speed)
            } else {
                None
            },
            threads: self.rec.threads,
            connections: if running {
                self.live.connections.load(Ordering::Relaxed)
            } else {
                0
            },
            retries: self.rec.retries,
            bandwidth_limit: self.rec.bandwidth_limit,
            error: self.rec.error.clone(),
            created_at: self.rec.created_at,
            finished_at: self.rec.finished_at,
        }
    }

    fn history_item(&self) -> HistoryItem {
        let info = self.info();
        HistoryItem {
            id: info.id,
            url: info.url,
            filename: info.filename,
            path: info.path,
            status: info.status,
            total: info.total,
            downloaded: info.downloaded,
            error: info.error,
            created_at: info.created_at,
            finished_at: info.finished_at.unwrap_or_else(now_ms),
        }
    }
}

impl Engine {
    /// Load state from `config.data_dir` and start: downloads that were running resume by themselves.
    pub async fn start(config: EngineConfig) -> anyhow::Result<Engine> {
        state::ensure_dir(&config.data_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the data directory {}: {e}",
                config.data_dir.display()
            )
        })?;
        let mut warnings = Vec::new();
        let settings = state::load_settings(&config.data_dir, &mut warnings);
        let loaded = state::load_state(&config.data_dir, &mut warnings);
        let history = state::load_history(&config.data_dir, &mut warnings);
        for w in &warnings {
            warn!("{w}");
        }
        // Ids are never reused: not those of finished downloads in history, nor (when the state file was damaged)
        // those of downloads lost with it, which the reservation on disk covers.
        let reserved_ids = state::load_reserved_ids(&config.data_dir);
        let mut next_id = loaded
            .next_id
            .max(history.iter().map(|h| h.id + 1).max().unwrap_or(1));
        if loaded.damaged {
            next_id = next_id.max(reserved_ids);
        }
        let mut downloads = BTreeMap::new();
        for mut rec in loaded.downloads {
            // Downloads that were running when the service stopped go back to the queue, in their order.
            if rec.status == Status::Downloading {
                rec.status = Status::Queued;
            }
            downloads.insert(rec.id, Entry::new(rec));
        }
        let (events, _) = broadcast::channel(1024);
        let engine = Engine {
            inner: Arc::new(Inner {
                client: probe::client()?,
                global: Arc::new(RateLimiter::new(settings.bandwidth_limit)),
                core: Mutex::new(Core {
                    settings,
                    next_id,
                    reserved_ids,
                    downloads,
                    history,
                }),
                config,
                events,
                dirty: AtomicBool::new(false),
                save_now: Notify::new(),
                save_lock: tokio::sync::Mutex::new(()),
                mutations: AtomicU64::new(0),
                saved: AtomicU64::new(0),
                stopping: CancellationToken::new(),
                warnings,
                url_turns: Mutex::new(HashMap::new()),
                verifying: Mutex::new(HashMap::new()),
                verified: Notify::new(),
            }),
        };
        engine.schedule(&mut lock(&engine.inner.core));
        tokio::spawn(engine.clone().ticker());
        tokio::spawn(engine.clone().checkpointer());
        Ok(engine)
    }

    /// What start-up found wrong and set aside (a damaged state file, say), for the service to report.
    pub fn warnings(&self) -> Vec<String> {
        self.inner.warnings.clone()
    }

    fn emit(&self, event: Event) {
        // No subscriber is not an error.
        let _ = self.inner.events.send(event);
    }

    fn changed(&self, entry: &Entry) {
        self.emit(Event::State {
            download: entry.info(),
        });
        self.touch();
    }

    /// The queue changed: state must be written (now, by the checkpointer, or by [`Engine::persist`]).
    fn touch(&self) {
        self.inner.mutations.fetch_add(1, Ordering::SeqCst);
        self.inner.save_now.notify_one();
    }

    /// Return once every change made before the call is in `state.json`. Callers that acknowledge a change to
    /// someone who will act on it (the browser erases its own copy of a captured download) await this first.
    /// Concurrent callers share writes: one write covers every change made before it started.
    pub async fn persist(&self) {
        let target = self.inner.mutations.load(Ordering::SeqCst);
        if self.inner.saved.load(Ordering::SeqCst) >= target {
            return;
        }
        let _one = self.inner.save_lock.lock().await;
        // A write that started after our change, while we waited, may have covered it already.
        if self.inner.saved.load(Ordering::SeqCst) >= target {
            return;
        }
        // Only the queue changed: the running downloads' progress may stay where the last checkpoint left it, so
        // that acknowledging a command never waits for their data to reach the disk.
        self.save_locked(false).await;
    }

    /// Add a download. When its `client_key` is already in the queue, nothing is added and that download is the
    /// answer (`existing`). `req.expect` is not looked at: browser capture goes through [`Engine::add_verified`].
    pub fn add(&self, req: AddRequest) -> Result<AddResult, ApiError> {
        self.insert(NewDownload::check(req)?)
    }

    /// A verified add, as browser capture makes it. The browser lets go of its own copy once this answers, so it
    /// answers only when SDM can fetch the same file:
    /// 1. a `client_key` already in the queue, or else an unfinished download of the same URL, is the answer
    ///    (`existing`): a second capture of a URL joins the first;
    /// 2. otherwise the server is asked for the first byte, with the add's headers, within 20 s; an error status, a
    ///    size other than `expect.size`, or a web page where the browser got something else fails with
    ///    `fetch_failed`, and nothing is added or written;
    /// 3. then the download is added, named by the request, else by that response (its Content-Disposition, else
    ///    its URL), and written to `state.json` before this returns.
    ///
    /// Verified adds of one URL take turns, so the second of two at once sees the first's download in step 1.
    ///
    /// The key counts as being verified from this call on, before the returned future first runs, so a
    /// [`Engine::find`] asked after the call waits for the answer.
    pub fn add_verified(
        &self,
        req: AddRequest,
    ) -> impl Future<Output = Result<AddResult, ApiError>> + Send + 'static {
        let verifying = req
            .client_key
            .as_deref()
            .filter(|k| check_client_key(k).is_ok())
            .map(|k| Verifying::start(self, k.to_string()));
        let engine = self.clone();
        async move {
            let result = engine.verify_and_add(req).await;
            drop(verifying);
            result
        }
    }

    async fn verify_and_add(&self, req: AddRequest) -> Result<AddResult, ApiError> {
        let expect = req.expect.clone().unwrap_or_default();
        let mut new = NewDownload::check(req)?;
        let joined = |id| AddResult { id, existing: true };
        let known = |core: &Core| {
            new.client_key
                .as_deref()
                .and_then(|k| core.by_key(k))
                .or_else(|| core.unfinished(new.url.as_str()))
        };
        if let Some(id) = known(&lock(&self.inner.core)) {
            return Ok(joined(id));
        }
        let turn = self.url_turn(new.url.as_str()).await;
        // The add that held the turn before may have added this very download.
        if let Some(id) = known(&lock(&self.inner.core)) {
            return Ok(joined(id));
        }
        let headers =
            transfer::header_map(new.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .map_err(invalid)?;
        let first = probe::first_byte(
            &self.inner.client,
            new.url.as_str(),
            &headers,
            VERIFY_TIMEOUT,
        )
        .await
        .map_err(|e| match e {
            TransferError::Stalled => fetch_failed(format!(
                "the server did not answer within {} s",
                VERIFY_TIMEOUT.as_secs()
            )),
            e => fetch_failed(format!("cannot fetch the file: {e}")),
        })?;
        if let Err(why) = first.check(expect.size, expect.mime.as_deref()) {
            info!(cause = %why, "verified add refused");
            return Err(fetch_failed(why));
        }
        if new.name.is_none() {
            new.name = first.name.as_deref().map(filename::sanitize);
        }
        // The add may write the id reservation (and fsync it): off the async threads.
        let engine = self.clone();
        let added = tokio::task::spawn_blocking(move || engine.insert(new))
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("the add failed: {e}")))??;
        // The download is in the queue: the next add of this URL joins it, and need not wait for the write.
        drop(turn);
        self.persist().await;
        Ok(added)
    }

    /// The download added with `key`, if it is in the queue. A verified add of that key still under way is waited
    /// for first, so the answer is final.
    pub async fn find(&self, key: &str) -> Result<Option<DownloadInfo>, ApiError> {
        check_client_key(key)?;
        loop {
            // Made before the check, so an add that answers in between still wakes us.
            let answered = self.inner.verified.notified();
            if !lock(&self.inner.verifying).contains_key(key) {
                break;
            }
            answered.await;
        }
        let core = lock(&self.inner.core);
        Ok(core
            .by_key(key)
            .and_then(|id| core.downloads.get(&id))
            .map(Entry::info))
    }

    /// Wait for `url`'s turn among verified adds; it lasts until the returned value is dropped.
    async fn url_turn(&self, url: &str) -> UrlTurn {
        let turn = lock(&self.inner.url_turns)
            .entry(url.to_string())
            .or_default()
            .clone();
        // Built before waiting, so an add dropped while it waits still takes the URL out of the map.
        let mut guard = UrlTurn {
            engine: self.clone(),
            url: url.to_string(),
            turn: turn.clone(),
            held: None,
        };
        guard.held = Some(turn.lock_owned().await);
        guard
    }

    /// Put a checked download in the queue, unless its client key is there already.
    fn insert(&self, new: NewDownload) -> Result<AddResult, ApiError> {
        let mut core = lock(&self.inner.core);
        if let Some(id) = new.client_key.as_deref().and_then(|k| core.by_key(k)) {
            return Ok(AddResult { id, existing: true });
        }
        let threads = new.threads.unwrap_or(core.settings.default_threads);
        let retries = new.retries.unwrap_or(core.settings.default_retries);
        let dir = self.download_dir(&core.settings);
        let id = core.next_id;
        if id >= core.reserved_ids {
            let until = id + state::ID_BLOCK;
            state::save_reserved_ids(&self.inner.config.data_dir, until).map_err(|e| {
                ApiError::new(
                    ErrorCode::Io,
                    format!("cannot write to the data directory: {e}"),
                )
            })?;
            core.reserved_ids = until;
        }
        core.next_id += 1;
        let shown = new
            .name
            .clone()
            .or_else(|| filename::from_url(&new.url).map(|n| filename::sanitize(&n)));
        let rec = DownloadRecord {
            id,
            url: new.url.to_string(),
            headers: new.headers,
            filename: shown.unwrap_or_else(|| "download".into()),
            dest: Dest::Dir {
                dir,
                name: new.name,
            },
            status: Status::Queued,
            threads,
            retries,
            bandwidth_limit: new.bandwidth_limit,
            error: None,
            created_at: now_ms(),
            finished_at: None,
            plan: None,
            path: None,
            size: None,
            client_key: new.client_key,
        };
        info!(id, "added");
        let entry = Entry::new(rec);
        self.changed(&entry);
        core.downloads.insert(id, entry);
        self.schedule(&mut core);
        Ok(AddResult {
            id,
            existing: false,
        })
    }

    fn download_dir(&self, settings: &Settings) -> PathBuf {
        if settings.download_dir.is_empty() {
            self.inner.config.default_download_dir.clone()
        } else {
            PathBuf::from(&settings.download_dir)
        }
    }

    pub fn list(&self, page: PageRequest) -> ListResult {
        let core = lock(&self.inner.core);
        let limit = page
            .limit
            .unwrap_or(protocol::MAX_PAGE)
            .min(protocol::MAX_PAGE);
        ListResult {
            downloads: core
                .downloads
                .values()
                .skip(page.offset)
                .take(limit)
                .map(Entry::info)
                .collect(),
            total: core.downloads.len(),
        }
    }

    pub fn get(&self, id: DownloadId) -> Result<DownloadInfo, ApiError> {
        lock(&self.inner.core)
            .downloads
            .get(&id)
            .map(Entry::info)
            .ok_or_else(|| not_found(id))
    }

    pub fn pause(&self, id: DownloadId) -> Result<(), ApiError> {
        let mut core = lock(&self.inner.core);
        let e = core.downloads.get_mut(&id).ok_or_else(|| not_found(id))?;
        match e.rec.status {
            Status::Paused => return Ok(()),
            Status::Queued | Status::Downloading => {}
            s => {
                return Err(ApiError::new(
                    ErrorCode::InvalidState,
                    format!("download {id} is {}: nothing to pause", s.as_str()),
                ));
            }
        }
        e.rec.status = Status::Paused;
        if let Some(t) = &e.task {
            t.cancel();
        }
        self.changed(e);
        self.schedule(&mut core);
        Ok(())
    }

    pub fn resume(&self, id: DownloadId) -> Result<(), ApiError> {
        let mut core = lock(&self.inner.core);
        let e = core.downloads.get_mut(&id).ok_or_else(|| not_found(id))?;
        match e.rec.status {
            Status::Queued | Status::Downloading => return Ok(()),
            Status::Paused | Status::Failed => {}
            s => {
                return Err(ApiError::new(
                    ErrorCode::InvalidState,
                    format!("download {id} is {}: it cannot be resumed", s.as_str()),
                ));
            }
        }
        e.rec.status = Status::Queued;
        e.rec.error = None;
        e.rec.finished_at = None;
        self.changed(e);
        self.schedule(&mut core);
        Ok(())
    }

    pub fn cancel(&self, id: DownloadId) -> Result<(), ApiError> {
        let mut core = lock(&self.inner.core);
        let e = core.downloads.get_mut(&id).ok_or_else(|| not_found(id))?;
        if e.rec.status.is_finished() {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                format!("download {id} is already {}", e.rec.status.as_str()),
            ));
        }
        e.rec.status = Status::Cancelled;
        e.rec.finished_at = Some(now_ms());
        match &e.task {
            Some(t) => t.cancel(),
            None => {
                delete_part(e);
                let item = e.history_item();
                self.changed(e);
                self.record_history(&mut core, item);
            }
        }
        self.schedule(&mut core);
        Ok(())
    }

    /// Forget a download (cancelling it if it runs); `delete_file` also deletes its completed file.
    pub fn remove(&self, id: DownloadId, delete_file: bool) -> Result<(), ApiError> {
        let mut core = lock(&self.inner.core);
        let e = core.downloads.get_mut(&id).ok_or_else(|| not_found(id))?;
        if let Some(t) = &e.task {
            t.cancel();
            e.removing = Some(delete_file);
            return Ok(());
        }
        let e = core.downloads.remove(&id).expect("present");
        forget_files(&e, delete_file);
        self.emit(Event::Removed { id });
        self.touch();
        self.schedule(&mut core);
        Ok(())
    }

    /// The final path of a completed download.
    pub fn completed_path(&self, id: DownloadId) -> Result<PathBuf, ApiError> {
        let core = lock(&self.inner.core);
        let e = core.downloads.get(&id).ok_or_else(|| not_found(id))?;
        match (e.rec.status, e.path()) {
            (Status::Completed, Some(p)) => Ok(p),
            (s, _) => Err(ApiError::new(
                ErrorCode::InvalidState,
                format!(
                    "download {id} is {}: only a completed download can be opened",
                    s.as_str()
                ),
            )),
        }
    }

    pub fn history(&self, page: PageRequest) -> Result<HistoryResult, ApiError> {
        let core = lock(&self.inner.core);
        let limit = page
            .limit
            .unwrap_or(protocol::MAX_PAGE)
            .min(protocol::MAX_PAGE);
        Ok(HistoryResult {
            items: core
                .history
                .iter()
                .rev()
                .skip(page.offset)
                .take(limit)
                .cloned()
                .collect(),
            total: core.history.len(),
        })
    }

    pub fn clear_history(&self) -> Result<(), ApiError> {
        let mut core = lock(&self.inner.core);
        state::clear_history(&self.inner.config.data_dir)
            .map_err(|e| ApiError::new(ErrorCode::Io, format!("cannot clear history: {e}")))?;
        core.history.clear();
        self.emit(Event::History { total: 0 });
        Ok(())
    }

    fn record_history(&self, core: &mut Core, item: HistoryItem) {
        if let Err(e) = state::append_history(&self.inner.config.data_dir, &item) {
            warn!(cause = %e, "cannot append to history");
        }
        core.history.push(item);
        self.emit(Event::History {
            total: core.history.len(),
        });
    }

    pub fn settings(&self) -> Settings {
        lock(&self.inner.core).settings.clone()
    }

    /// Validate and apply a settings change at once (running downloads see new caps and limits live).
    pub fn set_settings(&self, patch: SettingsPatch) -> Result<Settings, ApiError> {
        let mut core = lock(&self.inner.core);
        let mut s = core.settings.clone();
        if let Some(v) = patch.max_concurrent {
            s.max_concurrent = in_range("max_concurrent", v, protocol::MAX_CONCURRENT_RANGE)?;
        }
        if let Some(v) = patch.bandwidth_limit {
            s.bandwidth_limit = v;
        }
        if let Some(v) = patch.download_dir {
            if !v.is_empty() {
                let p = Path::new(&v);
                if !p.is_absolute() {
                    return Err(invalid(format!(
                        "download_dir must be an absolute path, not {v:?}"
                    )));
                }
                std::fs::create_dir_all(p)
                    .map_err(|e| invalid(format!("cannot use {v:?} as download folder: {e}")))?;
            }
            s.download_dir = v;
        }
        if let Some(v) = patch.default_threads {
            s.default_threads = in_range("default_threads", v, protocol::THREADS_RANGE)?;
        }
        if let Some(v) = patch.default_retries {
            s.default_retries = in_range("default_retries", v, 0..=protocol::MAX_RETRIES)?;
        }
        if let Some(v) = patch.stall_timeout_secs {
            s.stall_timeout_secs = in_range("stall_timeout_secs", v, 1..=3600)?;
        }
        if let Some(v) = patch.capture_enabled {
            s.capture_enabled = v;
        }
        if let Some(v) = patch.capture_min_size {
            s.capture_min_size = v;
        }
        if let Some(v) = patch.capture_exclude {
            if v.len() > 1000 || v.iter().any(|h| h.len() > 253) {
                return Err(invalid("capture_exclude takes at most 1000 host names"));
            }
            s.capture_exclude = v;
        }
        state::save_settings(&self.inner.config.data_dir, &s)
            .map_err(|e| ApiError::new(ErrorCode::Io, format!("cannot save settings: {e}")))?;
        self.inner.global.set_rate(s.bandwidth_limit);
        core.settings = s.clone();
        self.emit(Event::Settings {
            settings: s.clone(),
        });
        self.schedule(&mut core);
        Ok(s)
    }

    /// Events from now on: `state` on every change of status, `progress` at most 5 times a second.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Stop every transfer and write state; running downloads resume at the next start.
    pub async fn shutdown(&self) {
        self.inner.stopping.cancel();
        let tasks: Vec<CancellationToken> = lock(&self.inner.core)
            .downloads
            .values()
            .filter_map(|e| e.task.clone())
            .collect();
        for t in &tasks {
            t.cancel();
        }
        // Each task reports back (and its progress is synced) before it clears `task`.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while lock(&self.inner.core)
            .downloads
            .values()
            .any(|e| e.task.is_some())
        {
            if tokio::time::Instant::now() > deadline {
                warn!("transfers did not stop within 10 s; saving what is known");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.save().await;
    }

    /// Start queued downloads, oldest first, up to `max_concurrent`; send the newest back to the queue when there
    /// are more running than that (after the setting was lowered).
    fn schedule(&self, core: &mut Core) {
        if self.inner.stopping.is_cancelled() {
            return;
        }
        let max = core.settings.max_concurrent as usize;
        let running: Vec<DownloadId> = core
            .downloads
            .values()
            .filter(|e| e.rec.status == Status::Downloading)
            .map(|e| e.rec.id)
            .collect();
        for id in running.iter().skip(max).rev() {
            let e = core.downloads.get_mut(id).expect("listed");
            e.rec.status = Status::Queued;
            if let Some(t) = &e.task {
                t.cancel();
            }
            self.changed(e);
        }
        let mut slots = max.saturating_sub(running.len());
        let stall = Duration::from_secs(core.settings.stall_timeout_secs);
        let ids: Vec<DownloadId> = core
            .downloads
            .values()
            .filter(|e| e.rec.status == Status::Queued && e.task.is_none())
            .map(|e| e.rec.id)
            .collect();
        for id in ids {
            if slots == 0 {
                break;
            }
            slots -= 1;
            let e = core.downloads.get_mut(&id).expect("listed");
            self.spawn(e, stall);
        }
    }

    fn spawn(&self, e: &mut Entry, stall: Duration) {
        let id = e.rec.id;
        e.rec.status = Status::Downloading;
        e.rec.error = None;
        e.meter.reset();
        e.live = Live::new(e.rec.plan.clone());
        let cancel = CancellationToken::new();
        e.task = Some(cancel.clone());
        let headers =
            transfer::header_map(e.rec.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .unwrap_or_default();
        let weak = Arc::downgrade(&self.inner);
        let transfer = Transfer {
            client: self.inner.client.clone(),
            url: e.rec.url.clone(),
            headers,
            dest: e.rec.dest.clone(),
            options: Options {
                threads: e.rec.threads,
                retries: e.rec.retries,
                stall_timeout: stall,
                sha256: None,
                splice: true,
            },
            limiters: vec![e.limiter.clone(), self.inner.global.clone()],
            cancel,
            live: e.live.clone(),
            on_plan: Some(Box::new(move |plan: &Plan| {
                if let Some(inner) = weak.upgrade() {
                    let engine = Engine { inner };
                    let mut core = lock(&engine.inner.core);
                    if let Some(e) = core.downloads.get_mut(&id) {
                        e.rec.path = Some(plan.path.clone());
                        e.rec.plan = Some(plan.clone());
                        engine.changed(e);
                    }
                }
            })),
        };
        info!(id, "starting");
        self.changed(e);
        let engine = self.clone();
        let live = e.live.clone();
        tokio::spawn(async move {
            let result = transfer.run().await;
            let plan = tokio::task::spawn_blocking(move || live.durable_plan())
                .await
                .ok()
                .flatten();
            engine.finished(id, result, plan);
        });
    }

    /// A transfer task ended: record why, and start the next download.
    fn finished(&self, id: DownloadId, result: Result<PathBuf, TransferError>, plan: Option<Plan>) {
        let mut core = lock(&self.inner.core);
        let Some(e) = core.downloads.get_mut(&id) else {
            return;
        };
        e.task = None;
        if plan.is_some() {
            e.rec.plan = plan;
        }
        if let Some(delete_file) = e.removing {
            let e = core.downloads.remove(&id).expect("present");
            forget_files(&e, delete_file);
            self.emit(Event::Removed { id });
            self.touch();
            self.schedule(&mut core);
            return;
        }
        let mut history = false;
        match result {
            Ok(path) => {
                info!(id, "completed");
                e.rec.status = Status::Completed;
                e.rec.path = Some(path);
                e.rec.size = Some(e.live.downloaded.load(Ordering::Relaxed));
                e.rec.finished_at = Some(now_ms());
                e.rec.error = None;
                history = true;
            }
            Err(TransferError::Cancelled) => match e.rec.status {
                Status::Cancelled => {
                    delete_part(e);
                    history = true;
                }
                // Shut down, paused, or sent back to the queue: the plan keeps the progress.
                Status::Downloading if self.inner.stopping.is_cancelled() => {}
                Status::Downloading => e.rec.status = Status::Queued,
                _ => {}
            },
            Err(err) if err.is_disk_full() => {
                warn!(id, cause = %err, "pausing");
                e.rec.status = Status::Paused;
                e.rec.error = Some(err.to_string());
            }
            Err(err) => {
                warn!(id, cause = %err, "failed");
                e.rec.status = Status::Failed;
                e.rec.error = Some(err.to_string());
                e.rec.finished_at = Some(now_ms());
                history = true;
            }
        }
        if e.rec.status == Status::Completed {
            e.rec.plan = None;
        }
        let item = history.then(|| e.history_item());
        self.changed(e);
        if let Some(item) = item {
            self.record_history(&mut core, item);
        }
        self.schedule(&mut core);
    }

    /// Every 200 ms: speeds, a `progress` event while anything runs, and a checkpoint mark.
    async fn ticker(self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.inner.stopping.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut core = lock(&self.inner.core);
            let mut progress = Vec::new();
            for e in core
                .downloads
                .values_mut()
                .filter(|e| e.rec.status == Status::Downloading)
            {
                e.speed = e.meter.sample(e.live.downloaded.load(Ordering::Relaxed));
                let info = e.info();
                progress.push(Progress {
                    id: info.id,
                    status: info.status,
                    total: info.total,
                    downloaded: info.downloaded,
                    speed: info.speed,
                    eta: info.eta,
                    connections: info.connections,
                });
            }
            drop(core);
            if !progress.is_empty() {
                self.inner.dirty.store(true, Ordering::Relaxed);
                self.emit(Event::Progress {
                    downloads: progress,
                });
            }
        }
    }

    /// Write state at every status change, and at most once a second while downloads make progress.
    async fn checkpointer(self) {
        loop {
            tokio::select! {
                _ = self.inner.stopping.cancelled() => return,
                _ = self.inner.save_now.notified() => {}
                _ = tokio::time::sleep(CHECKPOINT) => {
                    if !self.inner.dirty.swap(false, Ordering::Relaxed) {
                        continue;
                    }
                }
            }
            self.save().await;
            // Rate-limit writes: a burst of status changes is one write a second at most after the first.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Write `state.json`: running downloads' plans only count bytes that are synced to disk.
    async fn save(&self) {
        let _one = self.inner.save_lock.lock().await;
        self.save_locked(true).await;
    }

    /// [`Engine::save`], with `save_lock` held by the caller. `sync_parts`: sync running downloads' `.part` files and
    /// save their progress as of now; otherwise save the progress of their last sync.
    async fn save_locked(&self, sync_parts: bool) {
        let (next_id, records, lives, covers) = {
            let core = lock(&self.inner.core);
            let covers = self.inner.mutations.load(Ordering::SeqCst);
            let records: Vec<DownloadRecord> =
                core.downloads.values().map(|e| e.rec.clone()).collect();
            let lives: Vec<Option<Arc<Live>>> = core
                .downloads
                .values()
                .map(|e| e.task.as_ref().map(|_| e.live.clone()))
                .collect();
            (core.next_id, records, lives, covers)
        };
        let dir = self.inner.config.data_dir.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut records = records;
            for (rec, live) in records.iter_mut().zip(lives) {
                let plan = match live {
                    Some(l) if sync_parts => l.durable_plan(),
                    Some(l) => l.last_durable_plan(),
                    None => None,
                };
                if plan.is_some() {
                    rec.plan = plan;
                }
            }
            state::save_state(&dir, next_id, &records)
        })
        .await;
        match result {
            Ok(Ok(())) => {
                self.inner.saved.fetch_max(covers, Ordering::SeqCst);
            }
            Ok(Err(e)) => warn!(cause = %e, "cannot write state"),
            Err(e) => warn!(cause = %e, "state writer failed"),
        }
    }
}

/// Delete the `.part` file of a download that will not go on.
fn delete_part(e: &Entry) {
    if let Some(path) = e.path() {
        let _ = std::fs::remove_file(filename::part_path(&path));
    }
}

/// Delete what a removed download leaves: its `.part` file always, its completed file when asked.
fn forget_files(e: &Entry, delete_file: bool) {
    if e.rec.status != Status::Completed {
        delete_part(e);
    } else if delete_file && let Some(path) = e.path() {
        let _ = std::fs::remove_file(path);
    }
}

/// `value` when `range` holds it, else an error naming the field and the range.
fn in_range<T: PartialOrd + std::fmt::Display>(
    name: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ApiError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(invalid(format!(
            "{name} must be from {} to {}, not {value}",
            range.start(),
            range.end()
        )))
    }
}

/// Accept http and https URLs of sane length, without credentials in them.
pub fn validate_url(text: &str) -> Result<url::Url, ApiError> {
    if text.len() > protocol::MAX_URL_LEN {
        return Err(invalid(format!(
            "URL is {} bytes long; at most {} are allowed",
            text.len(),
            protocol::MAX_URL_LEN
        )));
    }
    let url = url::Url::parse(text.trim()).map_err(|e| invalid(format!("not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "only http and https URLs can be downloaded, not {}:",
            url.scheme()
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "URL must not contain a user name or password; send an Authorization header instead",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("URL has no host"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(validate_url("http://127.0.0.1/a").is_ok());
        assert!(validate_url("https://example.org/a?b=c").is_ok());
        for bad in [
            "ftp://x/a",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "http://u:p@x/a",
            "nope",
            "data:,x",
        ] {
            let err = validate_url(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidArgument, "{bad}");
        }
        let long = format!("http://x/{}", "a".repeat(protocol::MAX_URL_LEN));
        assert!(validate_url(&long).unwrap_err().message.contains("at most"));
    }
}
