//! Where a transfer stands: the [`Plan`] that is saved in `state.json` so a download resumes after a restart, and the
//! [`Live`] state around it that lasts only as long as the process.
//!
//! The plan's segment marks are the progress that [`Live::durable_plan`] reports: marks are read first, then the part
//! file is synced, so a saved plan never claims bytes that are not on disk.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::segments::{self, OPEN_END, Segment};
use super::splice;

/// Where the file goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dest {
    /// Into this folder, under `name` (already validated) or the server's name, sanitized.
    Dir { dir: PathBuf, name: Option<String> },
    /// At this path (or `path (1)` if it exists).
    File(PathBuf),
}

impl Dest {
    /// The folder the file goes in, and the name asked for (the server's is used when there is none).
    pub fn folder_and_name(&self) -> (&Path, Option<String>) {
        match self {
            Dest::Dir { dir, name } => (dir, name.clone()),
            Dest::File(path) => (
                path.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new(".")),
                path.file_name().map(|n| n.to_string_lossy().into_owned()),
            ),
        }
    }
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
}

/// A transfer's state shared between its connections and whoever watches it. Nothing here but the plan is saved.
#[derive(Debug, Default)]
pub struct Live {
    plan: Mutex<Option<Plan>>,
    pub downloaded: AtomicU64,
    pub connections: AtomicU32,
    /// The part file while connections write into it, for [`Live::durable_plan`] to sync.
    file: Mutex<Option<Arc<File>>>,
    /// What the last [`Live::durable_plan`] returned: progress known to be on disk, for writers of state that must
    /// not wait for a sync.
    last_durable: Mutex<Option<Plan>>,
    /// Whether this transfer's ranged bodies may still take the splice path, and the connections it opened ahead.
    pub(super) splice: splice::Route,
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

    pub(super) fn plan(&self) -> MutexGuard<'_, Option<Plan>> {
        lock(&self.plan)
    }

    /// The plan as it stands, without the guarantee that its bytes are on disk.
    pub fn snapshot(&self) -> Option<Plan> {
        self.plan().clone()
    }

    /// The plan with only bytes that are on disk counted: marks are read, then the file is synced. Blocking.
    pub fn durable_plan(&self) -> Option<Plan> {
        let mut plan = self.plan().clone()?;
        plan.segments = segments::unfinished(&plan.segments);
        let file = lock(&self.file).clone();
        if let Some(f) = file
            && let Err(e) = f.sync_data()
        {
            warn!(cause = %e, "cannot sync the part file; saving no progress past the last sync");
            return None;
        }
        *lock(&self.last_durable) = Some(plan.clone());
        Some(plan)
    }

    /// The plan of the last [`Live::durable_plan`], without syncing anything now.
    pub fn last_durable_plan(&self) -> Option<Plan> {
        lock(&self.last_durable).clone()
    }

    pub(super) fn set_file(&self, file: Option<Arc<File>>) {
        *lock(&self.file) = file;
    }

    /// Forget progress: after a change of file (`reprobe`: size and validators too), or to go on over one connection
    /// without ranges. `restarts`: the new count of changes, when this is one.
    pub(super) fn reset(&self, reprobe: bool, restarts: Option<u32>) {
        *lock(&self.last_durable) = None;
        let mut guard = self.plan();
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
        self.downloaded.store(0, Ordering::Relaxed);
    }
}

/// Poisoning is ignored: the transfer's other connections and its watchers go on with the data as the panicking
/// holder left it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
