//! Running the queue: starting queued downloads up to `max_concurrent`, the transfer task of each, what the queue
//! records when one ends, and the ticker that measures speeds and sends progress.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use protocol::{DownloadId, Event, Progress, Status};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::entry::{Entry, now_ms};
use super::error::TransferError;
use super::plan::{Live, Plan};
use super::queue::{Core, Engine, lock};
use super::transfer::{self, Options, Transfer};

/// Progress events go out at most this often.
const TICK: Duration = Duration::from_millis(200);

impl Engine {
    /// [`Engine::schedule`] under the lock, for a caller that does not hold it.
    pub(super) fn start_queued(&self) {
        self.schedule(&mut lock(&self.inner.core));
    }

    /// Start queued downloads, oldest first, up to `max_concurrent`; send the newest back to the queue when there
    /// are more running than that (after the setting was lowered).
    pub(super) fn schedule(&self, core: &mut Core) {
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
            transfer::caller_headers(e.rec.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
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
            // How far it got, synced, for a download that will go on. A completed one keeps no plan, and reports
            // back at once: a command that comes meanwhile would still see it running.
            let plan = match result {
                Ok(_) => None,
                Err(_) => tokio::task::spawn_blocking(move || live.durable_plan())
                    .await
                    .ok()
                    .flatten(),
            };
            // Deleted here rather than by the writer, which may be busy syncing: the download already shows as
            // cancelled or is gone, so its file should be too.
            if let Some(path) = engine.finished(id, result, plan) {
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
            }
        });
    }

    /// A transfer task ended: record why, and start the next download. Returns a file the download leaves behind
    /// (cancelled or removed), for the task to delete once the lock is released.
    fn finished(
        &self,
        id: DownloadId,
        result: Result<PathBuf, TransferError>,
        plan: Option<Plan>,
    ) -> Option<PathBuf> {
        let mut core = lock(&self.inner.core);
        let e = core.downloads.get_mut(&id)?;
        e.task = None;
        if plan.is_some() {
            e.rec.plan = plan;
        }
        if let Some(delete_file) = e.removing {
            let e = core.downloads.remove(&id).expect("present");
            self.emit(Event::Removed { id });
            self.touch();
            self.schedule(&mut core);
            return e.leftover(delete_file);
        }
        let mut history = false;
        let mut leftover = None;
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
                    leftover = e.part_file();
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
        leftover
    }

    /// Every 200 ms: speeds, a `progress` event while anything runs, and a checkpoint mark.
    pub(super) async fn ticker(self) {
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
}
