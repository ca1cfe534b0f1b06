//! Commands on downloads already in the queue: `update` (speed cap, connections), `set_url` (a new address),
//! `move` (the queue's order), and the bulk `pause_all`, `resume_all` and `clear_finished`.
//!
//! **Queue order:** each download may carry a rank (`DownloadRecord::rank`). Ranked downloads come first, lowest rank
//! first; the rest follow by id, so new downloads join at the bottom and an older state file keeps "oldest first".
//! A move ranks every download 0..n in the new order. `list` and the scheduler both follow [`Core::ordered`].

use std::collections::BTreeMap;
use std::time::Duration;

use protocol::{DownloadId, ErrorCode, MoveTo, Status, validate};

use super::entry::{Entry, Readdress, Restart};
use super::plan::{Live, Plan};
use super::queue::{ApiError, Core, Engine, lock};
use super::{probe, transfer};

impl Core {
    /// Every download's id in the queue's order.
    pub(super) fn ordered(&self) -> Vec<DownloadId> {
        self.ordered_where(|_| true)
    }

    /// The ids of the downloads `keep` picks, in the queue's order.
    pub(super) fn ordered_where(&self, keep: impl Fn(&Entry) -> bool) -> Vec<DownloadId> {
        let mut ids: Vec<(bool, Option<u64>, DownloadId)> = self
            .downloads
            .values()
            .filter(|e| keep(e))
            .map(queue_key)
            .collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, _, id)| id).collect()
    }

    /// The first `n` downloads `keep` picks, in the queue's order: [`Core::ordered_where`] cut to `n`, in one pass
    /// and without sorting the rest, for the scheduler, which looks for the next download each time one ends.
    pub(super) fn first_where(&self, n: usize, keep: impl Fn(&Entry) -> bool) -> Vec<DownloadId> {
        let mut first: Vec<(bool, Option<u64>, DownloadId)> = Vec::with_capacity(n + 1);
        for e in self.downloads.values().filter(|e| keep(e)) {
            let key = queue_key(e);
            if first.len() == n && first.last().is_none_or(|last| key >= *last) {
                continue;
            }
            let at = first.partition_point(|k| *k < key);
            first.insert(at, key);
            first.truncate(n);
        }
        first.into_iter().map(|(_, _, id)| id).collect()
    }
}

/// Where a download stands in the queue's order, as a key that sorts that way: ranked ones first, lowest rank first
/// (`None` sorts before `Some`, so "has no rank" goes first in the key), then unranked ones by id.
fn queue_key(e: &Entry) -> (bool, Option<u64>, DownloadId) {
    (e.rec.rank.is_none(), e.rec.rank, e.rec.id)
}

/// What [`Engine::set_url`] is asked for: the new address and what goes with it.
#[derive(Debug, Clone, Default)]
pub struct NewAddress {
    pub url: String,
    /// Start over from byte 0 when the new address serves another file, instead of answering `conflict`.
    pub restart: bool,
    /// Headers that replace the saved ones from now on, the probe of the new address included (a link started
    /// again in the browser comes with its own cookies); `None`, with no `referrer` either, keeps the saved ones.
    pub headers: Option<BTreeMap<String, String>>,
    /// Sent as `Referer` unless `headers` has one, as in `add`.
    pub referrer: Option<String>,
}

fn not_found(id: DownloadId) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no download with id {id}"))
}

fn conflict(message: String) -> ApiError {
    ApiError::new(ErrorCode::Conflict, message)
}

/// Download `id` is completed or cancelled: `what` cannot apply to it.
fn finished(id: DownloadId, status: Status, what: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidState,
        format!("download {id} is {}: {what}", status.as_str()),
    )
}

/// Whether a download in `status` may still go on (be resumed, changed or given a new address).
fn may_go_on(status: Status) -> bool {
    !matches!(status, Status::Completed | Status::Cancelled)
}

/// Why the file at the new address is not the one `plan` has part of, if it is not: the size must be known and
/// equal, and each validator that both sides give must be equal.
fn other_file(plan: &Plan, found: &probe::ProbeResult) -> Option<String> {
    let differs = |what: &str, old: &Option<String>, new: &Option<String>| match (old, new) {
        (Some(o), Some(n)) if o != n => Some(format!("its {what} is {n}, not {o}")),
        _ => None,
    };
    match (plan.total, found.total) {
        (Some(old), Some(new)) if old != new => {
            return Some(format!("it is {new} bytes, not {old}"));
        }
        (Some(_), Some(_)) => {}
        _ => {
            return Some("its size is not known, so it cannot be shown to be the same file".into());
        }
    }
    differs("ETag", &plan.etag, &found.etag)
        .or_else(|| differs("Last-Modified", &plan.last_modified, &found.last_modified))
}

impl Engine {
    /// Change a download's speed cap (bytes per second, 0 = none) and connections. The cap applies at once; a
    /// running download with a new connection count stops its transfer and starts it again from its plan, so it
    /// goes on from the bytes it has with the new count.
    pub fn update(
        &self,
        id: DownloadId,
        bandwidth_limit: Option<u64>,
        threads: Option<u32>,
    ) -> Result<(), ApiError> {
        if let Some(t) = threads {
            validate::threads(t)?;
        }
        let mut core = lock(&self.inner.core);
        let e = core.downloads.get_mut(&id).ok_or_else(|| not_found(id))?;
        if !may_go_on(e.rec.status) {
            return Err(finished(id, e.rec.status, "there is nothing to change"));
        }
        if let Some(limit) = bandwidth_limit {
            e.rec.bandwidth_limit = limit;
            e.limiter.set_rate(limit);
        }
        if let Some(t) = threads.filter(|&t| t != e.rec.threads) {
            e.rec.threads = t;
            if let Some(task) = &e.task {
                // A new address asked for earlier stays asked for.
                e.restart.get_or_insert(Restart::Resume);
                task.cancel();
            }
        }
        self.changed(e);
        Ok(())
    }

    /// Give a download a new address. The bytes it has are kept when the new address serves the same file (see
    /// [`other_file`]); otherwise the answer is `conflict`, unless `restart`, which starts over from byte 0 there.
    /// A running download goes on at once from the new address; any other keeps its status. New headers, when
    /// given, are checked as `add`'s are and replace the saved ones only once the new address is accepted.
    pub async fn set_url(&self, id: DownloadId, to: NewAddress) -> Result<(), ApiError> {
        let NewAddress {
            url,
            restart,
            headers: new_headers,
            referrer,
        } = to;
        let url = validate::url(&url)?.to_string();
        let new_headers = if new_headers.is_some() || referrer.is_some() {
            Some(validate::request_headers(
                new_headers.unwrap_or_default(),
                referrer.as_deref(),
            )?)
        } else {
            None
        };
        let (plan, headers, timeout) = {
            let core = lock(&self.inner.core);
            let e = core.downloads.get(&id).ok_or_else(|| not_found(id))?;
            if !may_go_on(e.rec.status) || e.removing.is_some() {
                return Err(finished(id, e.rec.status, "its address cannot change"));
            }
            let plan = e.live.snapshot().or_else(|| e.rec.plan.clone());
            let sent = new_headers.as_ref().unwrap_or(&e.rec.headers);
            let headers =
                transfer::caller_headers(sent.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .unwrap_or_default();
            let timeout = Duration::from_secs(core.settings.stall_timeout_secs);
            (plan, headers, timeout)
        };
        // Nothing on disk to keep (never probed, or no byte yet): the transfer asks the new address itself.
        let has_bytes = plan.as_ref().is_some_and(|p| p.downloaded() > 0);
        let readdress = if restart || !has_bytes {
            Readdress {
                final_url: url.clone(),
                keep: None,
            }
        } else {
            let plan = plan.expect("has bytes");
            let (found, _) = probe::probe(&self.inner.client, &url, &headers, timeout, true)
                .await
                .map_err(|e| {
                    ApiError::new(
                        ErrorCode::FetchFailed,
                        format!("cannot reach the new address: {e}"),
                    )
                })?;
            if let Some(why) = other_file(&plan, &found) {
                return Err(conflict(format!(
                    "the new address serves another file ({why}); set it with restart to start over from there"
                )));
            }
            Readdress {
                final_url: found.final_url,
                keep: Some((found.etag, found.last_modified)),
            }
        };
        let mut core = lock(&self.inner.core);
        let e = core.downloads.get_mut(&id).ok_or_else(|| not_found(id))?;
        if !may_go_on(e.rec.status) || e.removing.is_some() {
            return Err(finished(id, e.rec.status, "its address cannot change"));
        }
        e.rec.url = url;
        if let Some(h) = new_headers {
            e.rec.headers = h;
        }
        match &e.task {
            Some(task) => {
                e.restart = Some(Restart::Readdress(readdress));
                task.cancel();
            }
            None => {
                e.rec.plan = readdress.apply(e.rec.plan.take());
                e.live = Live::new(e.rec.plan.clone());
            }
        }
        self.changed(e);
        Ok(())
    }

    /// Move a download in the queue's order: to the top or bottom, or up or down past the next download that may
    /// still go on (finished ones are passed over: they do not wait in the queue, and a move past one would change
    /// nothing that shows).
    pub fn move_to(&self, id: DownloadId, to: MoveTo) -> Result<(), ApiError> {
        let mut core = lock(&self.inner.core);
        let mut order = core.ordered();
        let from = order
            .iter()
            .position(|&d| d == id)
            .ok_or_else(|| not_found(id))?;
        let waits = |d: &DownloadId| !core.downloads[d].rec.status.is_finished();
        let last = order.len() - 1;
        let dest = match to {
            MoveTo::Top => 0,
            MoveTo::Bottom => last,
            MoveTo::Up => order[..from].iter().rposition(waits).unwrap_or(from),
            MoveTo::Down => order[from + 1..]
                .iter()
                .position(waits)
                .map_or(from, |i| from + 1 + i),
        };
        let moved = order.remove(from);
        order.insert(dest, moved);
        for (rank, d) in order.iter().enumerate() {
            if let Some(e) = core.downloads.get_mut(d) {
                e.rec.rank = Some(rank as u64);
            }
        }
        if let Some(e) = core.downloads.get(&id) {
            self.changed(e);
        }
        // A queued download moved to the top starts next; one already running keeps running.
        self.schedule(&mut core);
        Ok(())
    }

    /// Pause every queued and running download; returns how many were paused.
    pub fn pause_all(&self) -> usize {
        let mut core = lock(&self.inner.core);
        let mut count = 0;
        for e in core.downloads.values_mut() {
            if matches!(e.rec.status, Status::Queued | Status::Downloading) && e.removing.is_none()
            {
                e.rec.status = Status::Paused;
                if let Some(t) = &e.task {
                    t.cancel();
                }
                self.changed(e);
                count += 1;
            }
        }
        self.schedule(&mut core);
        count
    }

    /// Queue every paused and failed download again, in the queue's order; returns how many.
    pub fn resume_all(&self) -> usize {
        let mut core = lock(&self.inner.core);
        let mut count = 0;
        for id in core.ordered() {
            let e = core.downloads.get_mut(&id).expect("listed");
            if matches!(e.rec.status, Status::Paused | Status::Failed) && e.removing.is_none() {
                e.rec.status = Status::Queued;
                e.rec.error = None;
                e.rec.finished_at = None;
                self.changed(e);
                count += 1;
            }
        }
        self.schedule(&mut core);
        count
    }

    /// Take completed, failed and cancelled downloads off the list (history keeps them); returns how many. A
    /// completed file stays; a failed download's `.part` file, which nothing can resume any more, is deleted.
    pub fn clear_finished(&self) -> usize {
        let mut core = lock(&self.inner.core);
        let gone: Vec<DownloadId> = core
            .downloads
            .values()
            .filter(|e| e.rec.status.is_finished() && e.task.is_none())
            .map(|e| e.rec.id)
            .collect();
        for id in &gone {
            if let Some(e) = core.downloads.remove(id)
                && let Some(part) = e.leftover(false)
            {
                self.inner.disk.delete(part);
            }
            self.emit(protocol::Event::Removed { id: *id });
        }
        if !gone.is_empty() {
            self.touch();
        }
        gone.len()
    }
}
