//! The one writer of the data directory: `state.json`, `ids.json`, `settings.json` and `history.jsonl`. It also
//! deletes the files a command leaves behind (a cancelled or removed download that was not running), so they are gone
//! before the command's [`Engine::persist`] returns; a transfer task deletes its own when it ends.
//!
//! A command changes the queue in memory under the core lock, hands the writer a job (sending never blocks), and
//! awaits the writer's acknowledgement once the lock is released. The writer is a thread of its own, so its fsyncs
//! stall neither the lock's other users nor an async worker. It takes jobs in the order they were sent: an older
//! snapshot of the queue never lands after a newer one, and an id reservation is on disk before any state that uses
//! its ids. Jobs that pile up during a write are done together, with one state write for all who asked for one.
//!
//! A completion is told of once its history line is synced (`Engine::announce`), one small append rather than a state
//! write per completion; start-up reads such a line as the completion `state.json` may not hold yet.
//!
//! **Invariant:** saved progress never exceeds what is on disk. A checkpoint reads each running download's segment
//! marks, then `fdatasync`s its part file ([`Live::durable_plan`]), then writes `state.json`.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak, mpsc};
use std::time::Duration;

use protocol::{DownloadId, HistoryItem, Settings};
use tokio::sync::oneshot;
use tracing::warn;

use super::plan::Live;
use super::queue::{Engine, Inner, lock};
use super::state::{self, DownloadRecord};

/// Running downloads' progress is saved at most this often.
const CHECKPOINT: Duration = Duration::from_secs(1);

/// The engine's end of the writer: each method sends a job and returns at once; those that return a future
/// complete when the writer has done the job.
pub(super) struct Disk {
    jobs: mpsc::Sender<Job>,
    /// Chores sent and chores done, so [`Engine::persist`] knows whether one it must wait for is still queued.
    chores: Arc<Chores>,
}

#[derive(Default)]
struct Chores {
    sent: AtomicU64,
    done: AtomicU64,
}

/// The writer's end of the channel, until [`spawn_writer`] takes it.
pub(super) struct Jobs(mpsc::Receiver<Job>, Arc<Chores>);

type Ack = oneshot::Sender<io::Result<()>>;

enum Job {
    /// Write `state.json`, unless `sync_parts` is false and an earlier write covers the first `target` changes (see
    /// `Inner::mutations`). `sync_parts`: sync running downloads' `.part` files and save their progress as of now;
    /// otherwise save the progress of their last sync, so a command's own write never syncs their data (it may
    /// still share a checkpoint's write that does).
    State {
        sync_parts: bool,
        target: u64,
        done: oneshot::Sender<()>,
    },
    Chore(Chore),
}

/// A job other than a state write, done in the order it was sent.
enum Chore {
    /// Record that ids below `until` may have been handed out.
    ReserveIds {
        until: DownloadId,
        done: Ack,
    },
    Settings {
        settings: Box<Settings>,
        done: Ack,
    },
    /// Append to history; with an acknowledgement, the line is synced to disk before it is sent.
    AppendHistory {
        item: Box<HistoryItem>,
        done: Option<Ack>,
    },
    ClearHistory {
        done: Ack,
    },
    /// A file a download leaves behind; one already gone is fine.
    Delete(PathBuf),
}

pub(super) fn channel() -> (Disk, Jobs) {
    let (jobs, receiver) = mpsc::channel();
    let chores = Arc::new(Chores::default());
    (
        Disk {
            jobs,
            chores: chores.clone(),
        },
        Jobs(receiver, chores),
    )
}

/// Start the writer thread for `engine`'s data directory `dir`, whose `history.jsonl` holds `history_lines` lines.
/// It ends once the engine is dropped.
pub(super) fn spawn_writer(
    dir: PathBuf,
    engine: Weak<Inner>,
    jobs: Jobs,
    history_lines: usize,
) -> io::Result<()> {
    let Jobs(jobs, chores) = jobs;
    let mut writer = Writer {
        dir,
        engine,
        chores,
        history_lines,
    };
    std::thread::Builder::new()
        .name("sdm-state-writer".into())
        .spawn(move || writer.run(jobs))
        .map(drop)
}

/// An acknowledgement to send with a chore, and the future that waits for it.
fn ack() -> (Ack, impl Future<Output = io::Result<()>>) {
    let (done, answer) = oneshot::channel();
    let answer = async move {
        answer
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the state writer has stopped")))
    };
    (done, answer)
}

impl Disk {
    fn send(&self, job: Job) {
        if matches!(job, Job::Chore(_)) {
            self.chores.sent.fetch_add(1, Ordering::SeqCst);
        }
        // Fails only once the writer is gone; every acknowledgement then reports it.
        let _ = self.jobs.send(job);
    }

    /// Whether a chore sent before this call is not done yet.
    fn chores_pending(&self) -> bool {
        self.chores.done.load(Ordering::SeqCst) < self.chores.sent.load(Ordering::SeqCst)
    }

    fn write_state(&self, sync_parts: bool, target: u64) -> impl Future<Output = ()> + use<> {
        let (done, answer) = oneshot::channel();
        self.send(Job::State {
            sync_parts,
            target,
            done,
        });
        async move {
            let _ = answer.await;
        }
    }

    pub(super) fn reserve_ids(
        &self,
        until: DownloadId,
    ) -> impl Future<Output = io::Result<()>> + use<> {
        let (done, answer) = ack();
        self.send(Job::Chore(Chore::ReserveIds { until, done }));
        answer
    }

    pub(super) fn save_settings(
        &self,
        settings: Settings,
    ) -> impl Future<Output = io::Result<()>> + use<> {
        let (done, answer) = ack();
        let settings = Box::new(settings);
        self.send(Job::Chore(Chore::Settings { settings, done }));
        answer
    }

    /// Append to history; a failure is logged, as the item stays in memory.
    pub(super) fn append_history(&self, item: HistoryItem) {
        let item = Box::new(item);
        self.send(Job::Chore(Chore::AppendHistory { item, done: None }));
    }

    /// Append to history and sync the line to disk; the future completes once it is there.
    pub(super) fn append_history_synced(
        &self,
        item: HistoryItem,
    ) -> impl Future<Output = io::Result<()>> + use<> {
        let (done, answer) = ack();
        let item = Box::new(item);
        self.send(Job::Chore(Chore::AppendHistory {
            item,
            done: Some(done),
        }));
        answer
    }

    pub(super) fn clear_history(&self) -> impl Future<Output = io::Result<()>> + use<> {
        let (done, answer) = ack();
        self.send(Job::Chore(Chore::ClearHistory { done }));
        answer
    }

    pub(super) fn delete(&self, path: PathBuf) {
        self.send(Job::Chore(Chore::Delete(path)));
    }
}

struct Writer {
    dir: PathBuf,
    engine: Weak<Inner>,
    chores: Arc<Chores>,
    /// Lines in `history.jsonl`: at `MAX_HISTORY + HISTORY_SLACK` it is rotated.
    history_lines: usize,
}

impl Writer {
    fn run(&mut self, jobs: mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let mut state: Option<(bool, u64)> = None;
            let mut waiting = Vec::new();
            for job in std::iter::once(first).chain(jobs.try_iter()) {
                match job {
                    Job::State {
                        sync_parts,
                        target,
                        done,
                    } => {
                        let (s, t) = state.unwrap_or_default();
                        state = Some((s || sync_parts, t.max(target)));
                        waiting.push(done);
                    }
                    Job::Chore(chore) => {
                        self.chore(chore);
                        self.chores.done.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            // After the batch's other jobs, so the snapshot sees their reservations.
            if let Some((sync_parts, target)) = state {
                self.write_state(sync_parts, target);
            }
            for done in waiting {
                let _ = done.send(());
            }
        }
    }

    fn chore(&mut self, chore: Chore) {
        match chore {
            Chore::ReserveIds { until, done } => {
                let _ = done.send(state::save_reserved_ids(&self.dir, until));
            }
            Chore::Settings { settings, done } => {
                let _ = done.send(state::save_settings(&self.dir, &settings));
            }
            Chore::AppendHistory { item, done } => {
                let appended = state::append_history(&self.dir, &item, done.is_some());
                if let Err(e) = &appended {
                    warn!(cause = %e, "cannot append to history");
                }
                let ok = appended.is_ok();
                if let Some(done) = done {
                    let _ = done.send(appended);
                }
                if !ok {
                    return;
                }
                self.history_lines += 1;
                if self.history_lines >= state::MAX_HISTORY + state::HISTORY_SLACK {
                    match state::rotate_history(&self.dir, state::MAX_HISTORY) {
                        Ok(lines) => self.history_lines = lines,
                        Err(e) => warn!(cause = %e, "cannot rotate history"),
                    }
                }
            }
            Chore::ClearHistory { done } => {
                // A completion told of but not yet in `state.json` is known by its history line only: written
                // there first, it does not go with the history.
                self.write_state(false, u64::MAX);
                let cleared = state::clear_history(&self.dir);
                if cleared.is_ok() {
                    self.history_lines = 0;
                }
                let _ = done.send(cleared);
            }
            Chore::Delete(path) => {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    fn write_state(&self, sync_parts: bool, target: u64) {
        let Some(inner) = self.engine.upgrade() else {
            return;
        };
        if !sync_parts && inner.saved.load(Ordering::SeqCst) >= target {
            return;
        }
        let (covers, next_id, mut records, lives) = snapshot(&inner);
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
        match state::save_state(&self.dir, next_id, &records) {
            Ok(()) => {
                inner.saved.fetch_max(covers, Ordering::SeqCst);
            }
            Err(e) => warn!(cause = %e, "cannot write state"),
        }
    }
}

/// The queue as of now: how many changes it covers, the next id, every record, and the live state of those
/// running (whose plans are filled in once their bytes are known to be on disk).
fn snapshot(inner: &Inner) -> (u64, DownloadId, Vec<DownloadRecord>, Vec<Option<Arc<Live>>>) {
    let core = lock(&inner.core);
    let covers = inner.mutations.load(Ordering::SeqCst);
    let records = core
        .downloads
        .values()
        .map(|e| {
            let mut rec = e.rec.clone();
            if !rec.keeps_headers() {
                rec.headers.clear();
            }
            rec
        })
        .collect();
    let lives = core
        .downloads
        .values()
        .map(|e| e.task.as_ref().map(|_| e.live.clone()))
        .collect();
    (covers, core.next_id, records, lives)
}

impl Engine {
    /// Return once every change made before the call is in `state.json`. Callers that acknowledge a change to
    /// someone who will act on it (the browser erases its own copy of a captured download) await this first.
    /// Concurrent callers share writes: one write covers every change made before it started.
    pub async fn persist(&self) {
        let target = self.inner.mutations.load(Ordering::SeqCst);
        // A write may cover the change already while a file the change deletes is still queued: that waits too.
        if self.inner.saved.load(Ordering::SeqCst) >= target && !self.inner.disk.chores_pending() {
            return;
        }
        self.inner.disk.write_state(false, target).await;
    }

    /// Write `state.json` with running downloads' progress synced to disk first.
    pub(super) async fn checkpoint(&self) {
        self.inner.disk.write_state(true, 0).await;
    }

    /// Checkpoint at every status change, and at most once a second while downloads make progress.
    pub(super) async fn checkpointer(self) {
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
            self.checkpoint().await;
            // Status changes made during the write or the 50 ms after it are written together by the next one.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
