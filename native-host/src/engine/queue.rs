//! [`Engine`], the queue: it holds every download, runs up to `max_concurrent` of them, applies commands and
//! settings live, and pushes [`Event`]s on a broadcast channel.
//!
//! **Invariant:** the core lock guards memory only. Nothing waits while holding it: no file I/O, no `.await`. Files
//! are written by the writer thread of [`super::persist`]; a command changes memory under the lock, then awaits the
//! writer with the lock released, and answers only once its change is in `state.json`.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use protocol::{
    DownloadId, DownloadInfo, ErrorBody, ErrorCode, Event, HistoryItem, HistoryResult, ListResult,
    PageRequest, Settings, SettingsPatch, Status, validate,
};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use super::add::Verifications;
use super::entry::{Entry, now_ms};
use super::error::TransferError;
use super::persist::{self, Disk};
use super::probe;
use super::ratelimit::RateLimiter;
use super::state;

/// Where the engine keeps its files.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The user data directory: state, history and settings live here.
    pub data_dir: PathBuf,
    /// Where downloads go while the settings name no folder.
    pub default_download_dir: PathBuf,
    /// A fault point for tests only (`sdm serve` reads it from `SDM_TEST_CRASH_AFTER_ADD`): once an add that
    /// carries a `client_key` is in `state.json`, if this file exists, remove it and exit at once with
    /// [`CRASH_EXIT_CODE`], before the download starts and before any reply: a crash between the write and the
    /// acknowledgement, which a client recovers from with `find`. `None`: nothing changes.
    pub crash_after_keyed_add: Option<PathBuf>,
}

/// The exit code of the crash asked for by [`EngineConfig::crash_after_keyed_add`].
pub const CRASH_EXIT_CODE: i32 = 86;

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

impl From<validate::Invalid> for ApiError {
    fn from(e: validate::Invalid) -> ApiError {
        invalid(e.0)
    }
}

/// Why the engine did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {}: {source}", dir.display())]
    DataDir { dir: PathBuf, source: io::Error },
    #[error(transparent)]
    Client(#[from] TransferError),
    #[error("cannot start the state writer: {0}")]
    Writer(io::Error),
    #[error("reading the data directory failed: {0}")]
    Load(#[from] tokio::task::JoinError),
}

/// The queue of downloads. Cheap to clone; every clone drives the same queue.
#[derive(Clone)]
pub struct Engine {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) config: EngineConfig,
    pub(super) client: reqwest::Client,
    pub(super) core: Mutex<Core>,
    events: broadcast::Sender<Event>,
    /// The cap over all downloads.
    pub(super) global: Arc<RateLimiter>,
    /// The one writer of the data directory.
    pub(super) disk: Disk,
    /// Something changed that must reach disk soon (progress: within a second).
    pub(super) dirty: AtomicBool,
    /// A status changed: the checkpointer writes state now.
    pub(super) save_now: Notify,
    /// Changes made to the queue so far (bumped under the core lock), and how many of them the last completed state
    /// write covers: [`Engine::persist`] waits until the second reaches the first.
    pub(super) mutations: AtomicU64,
    pub(super) saved: AtomicU64,
    /// Settings changes take turns, so each is checked, written and applied over the one before it.
    settings_turn: tokio::sync::Mutex<()>,
    pub(super) stopping: CancellationToken,
    /// Completions waiting for their history line to be on disk to be announced (`Engine::announce`); shutdown
    /// waits for them.
    pub(super) announcing: TaskTracker,
    warnings: Vec<String>,
    pub(super) verify: Verifications,
}

pub(super) struct Core {
    pub(super) settings: Settings,
    pub(super) next_id: DownloadId,
    /// Ids below this are reserved on disk (`ids.json`); reaching it reserves the next block first.
    pub(super) reserved_ids: DownloadId,
    pub(super) downloads: BTreeMap<DownloadId, Entry>,
    /// The newest [`state::MAX_HISTORY`] finished downloads, oldest first. A deque: once it is full, each download
    /// that ends drops the oldest, which a `Vec` would pay for by moving all the others.
    history: VecDeque<HistoryItem>,
    /// How many items were ever recorded in `history`, so a clear knows which came after it was asked for.
    history_recorded: u64,
}

/// The range of `stall_timeout_secs`.
const STALL_TIMEOUT_SECS: std::ops::RangeInclusive<u64> = 1..=3600;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn not_found(id: DownloadId) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no download with id {id}"))
}

/// Download `id` is in `status`, where it cannot do `what`.
fn invalid_state(id: DownloadId, status: Status, what: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidState,
        format!("download {id} is {}: {what}", status.as_str()),
    )
}

pub(super) fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidArgument, message)
}

impl Core {
    fn entry_mut(&mut self, id: DownloadId) -> Result<&mut Entry, ApiError> {
        self.downloads.get_mut(&id).ok_or_else(|| not_found(id))
    }

    /// The download added with this client key, unless it is on its way out.
    pub(super) fn by_key(&self, key: &str) -> Option<DownloadId> {
        self.downloads
            .values()
            .find(|e| {
                e.removing.is_none()
                    && (e.rec.client_key.as_deref() == Some(key)
                        || e.rec.joined_keys.iter().any(|k| k == key))
            })
            .map(|e| e.rec.id)
    }

    /// An unfinished (queued, running or paused) download of this URL.
    pub(super) fn unfinished(&self, url: &str) -> Option<DownloadId> {
        self.downloads
            .values()
            .find(|e| e.removing.is_none() && !e.rec.status.is_finished() && e.rec.url == url)
            .map(|e| e.rec.id)
    }
}

/// What start-up reads from the data directory.
pub(super) struct Loaded {
    pub(super) core: Core,
    warnings: Vec<String>,
    /// Lines in `history.jsonl`, for the writer's rotation.
    history_lines: usize,
}

impl Loaded {
    /// Read settings, state, history and the id reservation (blocking).
    pub(super) fn read(dir: &Path) -> Result<Loaded, StartError> {
        state::ensure_dir(dir).map_err(|source| StartError::DataDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let mut warnings = Vec::new();
        let mut settings = state::load_settings(dir, &mut warnings);
        if !settings.download_dir.is_empty() {
            // Saved by a version that did not check, or edited by hand: the default folder is used instead.
            let home = std::env::home_dir();
            let checked =
                validate::download_dir(&settings.download_dir, home.as_deref(), &SYSTEM_FOLDERS)
                    .map_err(ApiError::from)
                    .and_then(|_| check_links(&settings.download_dir, home));
            if let Err(e) = checked {
                warnings.push(format!("{e}; downloads go to the default folder instead"));
                settings.download_dir.clear();
            }
        }
        let mut loaded = state::load_state(dir, &mut warnings);
        let state::LoadedHistory {
            items: history,
            lines: history_lines,
        } = state::load_history(dir, &mut warnings);
        state::completed_since_saved(&mut loaded.downloads, &history);
        // Ids are never reused: not those of finished downloads in history, nor (when the state file was damaged)
        // those of downloads lost with it, which the reservation on disk covers.
        let reserved = state::load_reserved_ids(dir, &mut warnings);
        for w in &warnings {
            warn!("{w}");
        }
        let mut next_id = loaded
            .next_id
            .max(history.iter().map(|h| h.id + 1).max().unwrap_or(1));
        let mut reserved_ids = reserved.until;
        if loaded.damaged || reserved.damaged {
            next_id = next_id.max(reserved.until);
        }
        if reserved.damaged {
            // Ids handed out after the last state write lie below the last reservation, which reached at most one
            // block past the next id known here; skip that block, and reserve anew before the next add.
            next_id = next_id.saturating_add(state::ID_BLOCK);
            reserved_ids = next_id;
        }
        let mut downloads = BTreeMap::new();
        for mut rec in loaded.downloads {
            // Downloads that were running when the service stopped go back to the queue, in their order.
            if rec.status == Status::Downloading {
                rec.status = Status::Queued;
            }
            downloads.insert(rec.id, Entry::new(rec));
        }
        let core = Core {
            settings,
            next_id,
            reserved_ids,
            downloads,
            history: history.into(),
            history_recorded: 0,
        };
        Ok(Loaded {
            core,
            warnings,
            history_lines,
        })
    }
}

impl Engine {
    /// Load state from `config.data_dir` and start: downloads that were running resume by themselves.
    pub async fn start(config: EngineConfig) -> Result<Engine, StartError> {
        let dir = config.data_dir.clone();
        let Loaded {
            core,
            warnings,
            history_lines,
        } = tokio::task::spawn_blocking(move || Loaded::read(&dir)).await??;
        let (disk, jobs) = persist::channel();
        let (events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            client: probe::client()?,
            global: Arc::new(RateLimiter::new(core.settings.bandwidth_limit)),
            core: Mutex::new(core),
            disk,
            config,
            events,
            dirty: AtomicBool::new(false),
            save_now: Notify::new(),
            mutations: AtomicU64::new(0),
            saved: AtomicU64::new(0),
            settings_turn: tokio::sync::Mutex::new(()),
            stopping: CancellationToken::new(),
            announcing: TaskTracker::new(),
            warnings,
            verify: Verifications::default(),
        });
        let dir = inner.config.data_dir.clone();
        persist::spawn_writer(dir, Arc::downgrade(&inner), jobs, history_lines)
            .map_err(StartError::Writer)?;
        let engine = Engine { inner };
        engine.start_queued();
        tokio::spawn(engine.clone().ticker());
        tokio::spawn(engine.clone().checkpointer());
        Ok(engine)
    }

    /// What start-up found wrong and set aside (a damaged state file, say), for the service to report.
    pub fn warnings(&self) -> Vec<String> {
        self.inner.warnings.clone()
    }

    pub(super) fn emit(&self, event: Event) {
        // No subscriber is not an error.
        let _ = self.inner.events.send(event);
    }

    pub(super) fn changed(&self, entry: &Entry) {
        self.emit(Event::State {
            download: entry.info(),
        });
        self.touch();
    }

    /// The queue changed: state must be written (now, by the checkpointer, or by [`Engine::persist`]).
    pub(super) fn touch(&self) {
        self.inner.mutations.fetch_add(1, Ordering::SeqCst);
        self.inner.save_now.notify_one();
    }

    /// Have the writer delete `path`, if there is one, after what it was asked to do before.
    fn delete_later(&self, path: Option<PathBuf>) {
        if let Some(path) = path {
            self.inner.disk.delete(path);
        }
    }

    pub(super) fn download_dir(&self, settings: &Settings) -> PathBuf {
        if settings.download_dir.is_empty() {
            self.inner.config.default_download_dir.clone()
        } else {
            PathBuf::from(&settings.download_dir)
        }
    }

    /// A page of the downloads, in the queue's order (the order in which queued ones start; see `move_to`).
    pub fn list(&self, page: PageRequest) -> ListResult {
        let core = lock(&self.inner.core);
        let limit = page
            .limit
            .unwrap_or(protocol::MAX_PAGE)
            .min(protocol::MAX_PAGE);
        ListResult {
            downloads: core
                .ordered()
                .iter()
                .skip(page.offset)
                .take(limit)
                .map(|id| core.downloads[id].info())
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

    /// Pause a queued or running download.
    pub fn pause(&self, id: DownloadId) -> Result<(), ApiError> {
        let mut core = lock(&self.inner.core);
        let e = core.entry_mut(id)?;
        match e.rec.status {
            Status::Paused => return Ok(()),
            Status::Queued | Status::Downloading => {}
            s => return Err(invalid_state(id, s, "nothing to pause")),
        }
        e.rec.status = Status::Paused;
        if let Some(t) = &e.task {
            t.cancel();
        }
        self.changed(e);
        self.schedule(&mut core);
        Ok(())
    }

    /// Queue a paused or failed download again.
    pub fn resume(&self, id: DownloadId) -> Result<(), ApiError> {
        let mut core = lock(&self.inner.core);
        let e = core.entry_mut(id)?;
        match e.rec.status {
            Status::Queued | Status::Downloading => return Ok(()),
            Status::Paused | Status::Failed => {}
            s => return Err(invalid_state(id, s, "it cannot be resumed")),
        }
        e.rec.status = Status::Queued;
        e.rec.error = None;
        e.rec.finished_at = None;
        self.changed(e);
        self.schedule(&mut core);
        Ok(())
    }

    /// Cancel an unfinished download and delete its `.part` file.
    pub fn cancel(&self, id: DownloadId) -> Result<(), ApiError> {
        let mut core = lock(&self.inner.core);
        let e = core.entry_mut(id)?;
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
                self.delete_later(e.part_file());
                let item = e.history_item();
                self.changed(e);
                self.record_history(&mut core, item);
            }
        }
        self.schedule(&mut core);
        Ok(())
    }

    /// Forget a download (cancelling it if it runs); `delete_file` also deletes its completed file. A running
    /// download is forgotten once its task has stopped.
    pub fn remove(&self, id: DownloadId, delete_file: bool) -> Result<(), ApiError> {
        let mut core = lock(&self.inner.core);
        let e = core.entry_mut(id)?;
        if let Some(t) = &e.task {
            t.cancel();
            e.removing = Some(delete_file);
            return Ok(());
        }
        let e = core.downloads.remove(&id).expect("present");
        self.delete_later(e.leftover(delete_file));
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
            (s, _) => Err(invalid_state(
                id,
                s,
                "only a completed download can be opened",
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

    /// Empty the history file, then forget the items it held.
    pub async fn clear_history(&self) -> Result<(), ApiError> {
        // Asked under the lock: items recorded later are appended after the clear, and stay.
        let (recorded, cleared) = {
            let core = lock(&self.inner.core);
            (core.history_recorded, self.inner.disk.clear_history())
        };
        cleared
            .await
            .map_err(|e| ApiError::new(ErrorCode::Io, format!("cannot clear history: {e}")))?;
        let mut core = lock(&self.inner.core);
        let later = usize::try_from(core.history_recorded - recorded).unwrap_or(usize::MAX);
        let cleared = core.history.len().saturating_sub(later);
        core.history.drain(..cleared);
        self.emit(Event::History {
            total: core.history.len(),
        });
        Ok(())
    }

    pub(super) fn record_history(&self, core: &mut Core, item: HistoryItem) {
        self.inner.disk.append_history(item.clone());
        self.show_history(core, item);
    }

    /// [`Engine::record_history`] for an item already appended to `history.jsonl`.
    pub(super) fn show_history(&self, core: &mut Core, item: HistoryItem) {
        core.history.push_back(item);
        core.history_recorded += 1;
        let over = core.history.len().saturating_sub(state::MAX_HISTORY);
        core.history.drain(..over);
        self.emit(Event::History {
            total: core.history.len(),
        });
    }

    pub fn settings(&self) -> Settings {
        lock(&self.inner.core).settings.clone()
    }

    /// Validate a settings change, save it, and apply it at once (running downloads see new caps and limits live).
    pub async fn set_settings(&self, patch: SettingsPatch) -> Result<Settings, ApiError> {
        let _turn = self.inner.settings_turn.lock().await;
        let asked_folder = patch.download_dir.as_ref().is_some_and(|d| !d.is_empty());
        let home = std::env::home_dir();
        let s = patched(self.settings(), patch, home.as_deref())?;
        if asked_folder {
            let folder = s.download_dir.clone();
            // Checked again where its links lead before anything is created, so a link to /etc is refused too.
            tokio::task::spawn_blocking(move || {
                check_links(&folder, home)?;
                std::fs::create_dir_all(&folder)
                    .map_err(|e| invalid(format!("cannot use {folder:?} as download folder: {e}")))
            })
            .await
            .unwrap_or_else(|e| Err(ApiError::new(ErrorCode::Internal, e.to_string())))?;
        }
        self.inner
            .disk
            .save_settings(s.clone())
            .await
            .map_err(|e| ApiError::new(ErrorCode::Io, format!("cannot save settings: {e}")))?;
        let mut core = lock(&self.inner.core);
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
        // Completions told of now, with their history items, are in the last checkpoint's batch.
        self.inner.announcing.close();
        if tokio::time::timeout_at(deadline, self.inner.announcing.wait())
            .await
            .is_err()
        {
            warn!("completions were not announced within 10 s");
        }
        self.checkpoint().await;
    }
}

/// The folders downloads may not go into on this platform (see [`validate::download_dir`]).
#[cfg(unix)]
const SYSTEM_FOLDERS: validate::SystemFolders = validate::UNIX_SYSTEM_FOLDERS;
#[cfg(windows)]
static SYSTEM_FOLDERS: std::sync::LazyLock<validate::SystemFolders> =
    std::sync::LazyLock::new(crate::paths::windows_system_folders);

/// Check where download folder `dir` really leads: its longest existing part with every symbolic link followed,
/// then the rest as written, against `home` resolved the same way (blocking).
fn check_links(dir: &str, home: Option<PathBuf>) -> Result<(), ApiError> {
    let path = Path::new(dir);
    let resolved = path
        .ancestors()
        .find_map(|existing| {
            let real = std::fs::canonicalize(existing).ok()?;
            let rest = path.strip_prefix(existing).ok()?;
            Some(real.join(rest))
        })
        .unwrap_or_else(|| path.to_path_buf());
    let home = home.map(|h| std::fs::canonicalize(&h).unwrap_or(h));
    validate::resolved_download_dir(dir, &resolved, home.as_deref(), &SYSTEM_FOLDERS)?;
    Ok(())
}

/// `settings` with `patch` applied, every field checked (the download folder against `home`); nothing is created
/// or written.
fn patched(
    mut s: Settings,
    patch: SettingsPatch,
    home: Option<&Path>,
) -> Result<Settings, ApiError> {
    if let Some(v) = patch.max_concurrent {
        s.max_concurrent = validate::max_concurrent(v)?;
    }
    if let Some(v) = patch.bandwidth_limit {
        s.bandwidth_limit = v;
    }
    if let Some(v) = patch.download_dir {
        // Saved with `.` and `..` resolved, so the folder checked is the one created and used.
        s.download_dir = if v.is_empty() {
            v
        } else {
            let dir = validate::download_dir(&v, home, &SYSTEM_FOLDERS)?;
            dir.to_string_lossy().into_owned()
        };
    }
    if let Some(v) = patch.default_threads {
        s.default_threads = validate::threads(v)?;
    }
    if let Some(v) = patch.default_retries {
        s.default_retries = validate::retries(v)?;
    }
    if let Some(v) = patch.stall_timeout_secs {
        if !STALL_TIMEOUT_SECS.contains(&v) {
            return Err(invalid(format!(
                "stall_timeout_secs must be between {} and {}, not {v}",
                STALL_TIMEOUT_SECS.start(),
                STALL_TIMEOUT_SECS.end()
            )));
        }
        s.stall_timeout_secs = v;
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
    Ok(s)
}
