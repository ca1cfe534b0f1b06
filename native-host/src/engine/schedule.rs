//! Running the queue: starting queued downloads up to `max_concurrent`, the transfer task of each, what the queue
//! records when one ends, and the ticker that measures speeds and sends progress.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use protocol::{DownloadId, Event, HistoryItem, Progress, Status};
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
    ///
    /// This runs each time a download ends, so the usual case (a slot is free, the queue is long) is one pass over the
    /// queue with no sort: only the next few queued downloads are picked out (`Core::first_where`).
    pub(super) fn schedule(&self, core: &mut Core) {
        if self.inner.stopping.is_cancelled() {
            return;
        }
        let max = core.settings.max_concurrent as usize;
        // A completion not yet announced still holds its slot (see `announce`).
        let running = core
            .downloads
            .values()
            .filter(|e| e.rec.status == Status::Downloading || e.unannounced)
            .count();
        if running > max {
            let order = core.ordered_where(|e| e.rec.status == Status::Downloading);
            for id in order.iter().skip(max).rev() {
                let e = core.downloads.get_mut(id).expect("listed");
                e.rec.status = Status::Queued;
                if let Some(t) = &e.task {
                    t.cancel();
                }
                self.changed(e);
            }
            return;
        }
        let slots = max - running;
        if slots == 0 {
            return;
        }
        let stall = Duration::from_secs(core.settings.stall_timeout_secs);
        let next = core.first_where(slots, |e| {
            e.rec.status == Status::Queued && e.task.is_none()
        });
        for id in next {
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
        e.run += 1;
        let run = e.run;
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
            if let Some(path) = engine.finished(id, run, result, plan) {
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
            }
        });
    }

    /// Transfer task number `run` of download `id` ended: record why, and start the next download. Returns a file the
    /// download leaves behind (cancelled or removed), for the task to delete once the lock is released.
    ///
    /// Only the download's current task is heard. The engine runs one at a time per download, but a report from one
    /// that no longer stands for it (a test stands one in for the real one, which still reports back) would otherwise
    /// record its ending over the current task's: a completion would be told twice, a running download shown stopped.
    fn finished(
        &self,
        id: DownloadId,
        run: u64,
        result: Result<PathBuf, TransferError>,
        plan: Option<Plan>,
    ) -> Option<PathBuf> {
        let mut core = lock(&self.inner.core);
        let stall = Duration::from_secs(core.settings.stall_timeout_secs);
        let e = core.downloads.get_mut(&id)?;
        if e.task.is_none() || e.run != run {
            warn!(
                id,
                run,
                current = e.run,
                "a report from a task that no longer runs the download; ignored"
            );
            return None;
        }
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
            // Told once it is on disk, by a task of its own, which then gives its slot to the next download.
            let item = e.history_item();
            e.unannounced = true;
            self.touch();
            self.inner.announcing.spawn(self.clone().announce(id, item));
            return leftover;
        }
        let item = history.then(|| e.history_item());
        self.changed(e);
        if let Some(item) = item {
            self.record_history(&mut core, item);
        }
        self.schedule(&mut core);
        leftover
    }

    /// Tell of a completed download once its completion is on disk: its history line, synced (a restart reads a
    /// download that history says completed as completed, whatever `state.json` still says: see
    /// [`super::state::completed_since_saved`]); one small append, where a state write costs the whole queue. Then its
    /// `state` event goes out, its history item is shown (even if it was removed meanwhile: it did complete), and its
    /// slot goes to the next download. Until then it shows as downloading and holds its slot, so neither a
    /// subscriber nor a list (`sdm wait`) is told of a completion that a crash would undo (the download would start
    /// again, its file already at the final path), and no more than `max_concurrent` downloads ever show as running.
    async fn announce(self, id: DownloadId, item: HistoryItem) {
        if let Err(e) = self.inner.disk.append_history_synced(item.clone()).await {
            // Then it is told once `state.json` holds it.
            warn!(id, cause = %e, "cannot record the completion in history; saving the state instead");
            self.persist().await;
        }
        let mut core = lock(&self.inner.core);
        if let Some(e) = core.downloads.get_mut(&id)
            && e.unannounced
        {
            e.unannounced = false;
            self.emit(Event::State { download: e.info() });
        }
        self.show_history(&mut core, item);
        self.schedule(&mut core);
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

    /// An engine with one download that looks as if its transfer is running, the number of that (stand-in) task, and
    /// the file that transfer just finished: the moment between a transfer's last write and the engine hearing of it.
    async fn finishing() -> (tempfile::TempDir, Engine, DownloadId, u64, PathBuf) {
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
        e.run += 1;
        let run = e.run;
        e.rec.status = Status::Downloading;
        drop(core);
        (tmp, engine, added.id, run, file)
    }

    #[tokio::test]
    async fn a_cancel_acknowledged_before_the_transfer_reports_back_wins() {
        let (_tmp, engine, id, run, file) = finishing().await;
        engine.cancel(id).unwrap();
        let leftover = engine.finished(id, run, Ok(file.clone()), None);
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

    /// The status of download `id` as start-up would read it from the data folder now.
    fn status_after_restart(data: &std::path::Path, id: DownloadId) -> Option<Status> {
        let loaded = crate::engine::queue::Loaded::read(data).unwrap();
        loaded.core.downloads.get(&id).map(|e| e.rec.status)
    }

    #[tokio::test]
    async fn a_completion_is_told_only_once_a_restart_would_find_it() {
        let (tmp, engine, id, run, file) = finishing().await;
        let mut events = engine.subscribe();
        let _ = engine.finished(id, run, Ok(file), None);
        assert_eq!(
            engine.get(id).unwrap().status,
            Status::Downloading,
            "shown completed before the completion is on disk"
        );
        loop {
            match events.recv().await.unwrap() {
                Event::State { download } if download.status == Status::Completed => break,
                _ => {}
            }
        }
        // A restart now, from `state.json` or else from the history line, must find it completed.
        assert_eq!(
            status_after_restart(&tmp.path().join("data"), id),
            Some(Status::Completed),
            "told of a completion that a crash now would undo"
        );
        let history = engine.history(protocol::PageRequest::default()).unwrap();
        let statuses: Vec<Status> = history.items.iter().map(|h| h.status).collect();
        assert_eq!(statuses, [Status::Completed]);
    }

    /// A report that comes after the completion changes nothing and is not told again.
    #[tokio::test]
    async fn a_report_after_the_completion_is_not_told_again() {
        let (_tmp, engine, id, run, file) = finishing().await;
        let _ = engine.finished(id, run, Ok(file), None);
        assert_eq!(
            engine.finished(id, run, Err(TransferError::Cancelled), None),
            None
        );
        engine.inner.announcing.close();
        engine.inner.announcing.wait().await;
        assert_eq!(engine.get(id).unwrap().status, Status::Completed);
        let history = engine.history(protocol::PageRequest::default()).unwrap();
        let statuses: Vec<Status> = history.items.iter().map(|h| h.status).collect();
        assert_eq!(statuses, [Status::Completed]);
    }

    /// The task the fixture stood in for reports back while the download runs on: it is not the download's task, and
    /// its ending (cancelled, or a failure) must not stop the download or reach history.
    #[tokio::test]
    async fn a_report_from_a_replaced_task_is_not_heard() {
        let (_tmp, engine, id, run, _file) = finishing().await;
        for result in [
            Err(TransferError::Cancelled),
            Err(TransferError::Internal("a stale task failed")),
        ] {
            assert_eq!(engine.finished(id, run - 1, result, None), None);
            let core = lock(&engine.inner.core);
            let e = &core.downloads[&id];
            assert_eq!(e.rec.status, Status::Downloading);
            assert!(e.task.is_some(), "the running task was forgotten");
        }
        let history = engine.history(protocol::PageRequest::default()).unwrap();
        assert!(history.items.is_empty(), "{:?}", history.items);
    }

    #[tokio::test]
    async fn a_remove_as_the_transfer_finishes_deletes_the_final_file_only_when_asked() {
        for delete_file in [false, true] {
            let (_tmp, engine, id, run, file) = finishing().await;
            engine.remove(id, delete_file).unwrap();
            let leftover = engine.finished(id, run, Ok(file.clone()), None);
            assert_eq!(
                leftover,
                delete_file.then_some(file),
                "delete_file: {delete_file}"
            );
            assert!(!lock(&engine.inner.core).downloads.contains_key(&id));
        }
    }
}
