//! Running the queue: starting queued downloads up to `max_concurrent`, the transfer task of each, what the queue
//! records when one ends, and the ticker that measures speeds and sends progress.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use protocol::{DownloadId, Event, Progress, Status};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::entry::{Entry, Restart, now_ms};
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

    /// Start queued downloads in the queue's order (see `Core::ordered`), up to `max_concurrent`; send the last ones
    /// back to the queue when there are more running than that (after the setting was lowered).
    pub(super) fn schedule(&self, core: &mut Core) {
        if self.inner.stopping.is_cancelled() {
            return;
        }
        let max = core.settings.max_concurrent as usize;
        let order =
            core.ordered_where(|e| matches!(e.rec.status, Status::Queued | Status::Downloading));
        let running: Vec<DownloadId> = order
            .iter()
            .copied()
            .filter(|id| core.downloads[id].rec.status == Status::Downloading)
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
        let ids: Vec<DownloadId> = order
            .into_iter()
            .filter(|id| {
                let e = &core.downloads[id];
                e.rec.status == Status::Queued && e.task.is_none()
            })
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

    pub(super) fn spawn(&self, e: &mut Entry, stall: Duration) {
        let id = e.rec.id;
        e.rec.status = Status::Downloading;
        e.rec.error = None;
        e.live = Live::new(e.rec.plan.clone());
        // Measured from the bytes it starts with, so the first progress after a (re)start already has a speed;
        // the last run's speed is not this one's.
        e.meter.start(e.live.downloaded.load(Ordering::Relaxed));
        e.speed = 0;
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
                own_tls_min: super::transfer::OWN_TLS_MIN,
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
        let stall = Duration::from_secs(core.settings.stall_timeout_secs);
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
            // A transfer that finished as it was removed leaves its final file, not a `.part`.
            return match result {
                Ok(path) => delete_file.then_some(path),
                Err(_) => e.leftover(delete_file),
            };
        }
        // Stopped by `update` or `set_url` to go on differently: unless it was paused, cancelled or shut down
        // meanwhile, it starts again at once, in the slot it held. A new address applies whatever the ending.
        if let Some(restart) = e.restart.take()
            && result.is_err()
        {
            if let Restart::Readdress(r) = &restart {
                e.rec.plan = r.apply(e.rec.plan.take());
            }
            if matches!(result, Err(TransferError::Cancelled))
                && e.rec.status == Status::Downloading
                && !self.inner.stopping.is_cancelled()
            {
                self.spawn(e, stall);
                return None;
            }
        }
        let mut history = false;
        let mut leftover = None;
        match result {
            // Cancelled between the transfer's last write and this: the cancel was acknowledged, so it wins and
            // the finished file goes the way a `.part` would.
            Ok(path) if e.rec.status == Status::Cancelled => {
                info!(id, "completed, but cancelled first");
                e.rec.path = Some(path.clone());
                leftover = Some(path);
                history = true;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;

    /// An engine with one download that looks as if its transfer is running, and the file that transfer just
    /// finished: the moment between a transfer's last write and the engine hearing of it.
    async fn finishing() -> (tempfile::TempDir, Engine, DownloadId, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let engine = Engine::start(EngineConfig {
            data_dir: tmp.path().join("data"),
            default_download_dir: tmp.path().join("dl"),
            crash_after_keyed_add: None,
        })
        .await
        .unwrap();
        let added = engine
            .add(protocol::AddRequest {
                url: "http://127.0.0.1:9/f.bin".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let file = tmp.path().join("f.bin");
        std::fs::write(&file, b"done").unwrap();
        let mut core = lock(&engine.inner.core);
        let e = core.downloads.get_mut(&added.id).unwrap();
        // Whatever the real task did, this one stands for it.
        if let Some(t) = e.task.replace(CancellationToken::new()) {
            t.cancel();
        }
        e.rec.status = Status::Downloading;
        drop(core);
        (tmp, engine, added.id, file)
    }

    #[tokio::test]
    async fn a_cancel_acknowledged_before_the_transfer_reports_back_wins() {
        let (_tmp, engine, id, file) = finishing().await;
        engine.cancel(id).unwrap();
        let leftover = engine.finished(id, Ok(file.clone()), None);
        assert_eq!(
            leftover,
            Some(file),
            "the finished file is the cancel's to delete"
        );
        assert_eq!(
            lock(&engine.inner.core).downloads[&id].rec.status,
            Status::Cancelled
        );
        let history = engine.history(protocol::PageRequest::default()).unwrap();
        let statuses: Vec<Status> = history.items.iter().map(|h| h.status).collect();
        assert_eq!(statuses, [Status::Cancelled]);
    }

    #[tokio::test]
    async fn a_remove_as_the_transfer_finishes_deletes_the_final_file_only_when_asked() {
        for delete_file in [false, true] {
            let (_tmp, engine, id, file) = finishing().await;
            engine.remove(id, delete_file).unwrap();
            let leftover = engine.finished(id, Ok(file.clone()), None);
            assert_eq!(
                leftover,
                delete_file.then_some(file),
                "delete_file: {delete_file}"
            );
            assert!(!lock(&engine.inner.core).downloads.contains_key(&id));
        }
    }
}
