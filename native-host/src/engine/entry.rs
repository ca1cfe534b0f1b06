//! One download in the queue: its saved record beside what only a running transfer knows, and how it is shown.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use protocol::{DownloadInfo, HistoryItem, Status};
use tokio_util::sync::CancellationToken;

use super::filename;
use super::oneshot::{SpeedMeter, eta};
use super::plan::{Live, Plan};
use super::ratelimit::RateLimiter;
use super::state::DownloadRecord;

pub(super) struct Entry {
    pub(super) rec: DownloadRecord,
    pub(super) live: Arc<Live>,
    pub(super) limiter: Arc<RateLimiter>,
    /// Set while a transfer task runs; cancelling it stops the task, which then reports back.
    pub(super) task: Option<CancellationToken>,
    /// How many transfer tasks this download has started: the number of the one `task` stands for, which its report
    /// carries back (`Engine::finished` hears only the current task).
    pub(super) run: u64,
    /// `remove` was asked while the task ran: forget the download (deleting its file if `true`) when it stops.
    pub(super) removing: Option<bool>,
    pub(super) meter: SpeedMeter,
    pub(super) speed: u64,
    /// `update` or `set_url` stopped the running task to start it again: when it reports back still running, the
    /// plan it leaves is changed by this and a new task starts from it at once (see `Engine::finished`).
    pub(super) restart: Option<Restart>,
    /// Completed, but not yet on disk as such (its history line, see `Engine::announce`): until then it shows as
    /// downloading and holds its slot, so no one is told of a completion that a crash could still undo.
    pub(super) unannounced: bool,
}

/// How a running download's plan changes before its transfer starts again.
#[derive(Debug, Clone)]
pub(super) enum Restart {
    /// The same plan: only the connection count changed.
    Resume,
    /// The plan at a new address (`set_url`).
    Readdress(Readdress),
}

/// A new address for a download, and what becomes of what it already has.
#[derive(Debug, Clone)]
pub(super) struct Readdress {
    /// Where ranges are now fetched from (the new URL after redirects).
    pub(super) final_url: String,
    /// `Some`: the new address serves the same file and the part file is kept; these are its validators, sent with
    /// every range from now on. `None`: start over from byte 0.
    pub(super) keep: Option<(Option<String>, Option<String>)>,
}

impl Readdress {
    /// `plan` as it goes on at the new address.
    pub(super) fn apply(&self, plan: Option<Plan>) -> Option<Plan> {
        let mut plan = plan?;
        plan.final_url = self.final_url.clone();
        match &self.keep {
            Some((etag, last_modified)) => {
                plan.etag = etag.clone();
                plan.last_modified = last_modified.clone();
            }
            // No segments: the transfer probes the new address and truncates the part file, keeping the path.
            None => {
                plan.total = None;
                plan.ranges = false;
                plan.etag = None;
                plan.last_modified = None;
                plan.segments.clear();
                plan.restarts = 0;
            }
        }
        Some(plan)
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Entry {
    pub(super) fn new(rec: DownloadRecord) -> Entry {
        let live = Live::new(rec.plan.clone());
        if let Some(size) = rec.size {
            live.downloaded.store(size, Ordering::Relaxed);
        }
        Entry {
            live,
            limiter: Arc::new(RateLimiter::new(rec.bandwidth_limit)),
            rec,
            task: None,
            run: 0,
            removing: None,
            meter: SpeedMeter::default(),
            speed: 0,
            restart: None,
            unannounced: false,
        }
    }

    pub(super) fn path(&self) -> Option<PathBuf> {
        self.live
            .plan()
            .as_ref()
            .map(|p| p.path.clone())
            .or_else(|| self.rec.path.clone())
    }

    /// The `.part` file of a download that will not go on, to delete.
    pub(super) fn part_file(&self) -> Option<PathBuf> {
        self.path().map(|path| filename::part_path(&path))
    }

    /// What a removed download leaves to delete: its `.part` file always, its completed file when asked.
    pub(super) fn leftover(&self, delete_file: bool) -> Option<PathBuf> {
        if self.rec.status != Status::Completed {
            self.part_file()
        } else if delete_file {
            self.path()
        } else {
            None
        }
    }

    /// How the download is shown. It runs for every event and every row of a list, so the live plan is read under
    /// its lock for the two things wanted of it, not cloned whole.
    pub(super) fn info(&self) -> DownloadInfo {
        let (live_total, live_path) = match self.live.plan().as_ref() {
            Some(p) => (p.total, Some(p.path.clone())),
            None => (None, None),
        };
        let path = live_path.or_else(|| self.rec.path.clone());
        let status = match self.unannounced {
            true => Status::Downloading,
            false => self.rec.status,
        };
        let running = status == Status::Downloading;
        let total = live_total
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
            status,
            total,
            downloaded,
            speed,
            eta: if running {
                eta(total, downloaded, speed)
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

    pub(super) fn history_item(&self) -> HistoryItem {
        let info = self.info();
        HistoryItem {
            id: info.id,
            url: info.url,
            filename: info.filename,
            path: info.path,
            // How it ended, even before that is announced.
            status: self.rec.status,
            total: info.total,
            downloaded: info.downloaded,
            error: info.error,
            created_at: info.created_at,
            finished_at: info.finished_at.unwrap_or_else(now_ms),
        }
    }
}
