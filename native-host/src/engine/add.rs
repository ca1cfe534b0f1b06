//! Adding downloads: the checks on an add request, ids reserved on disk before they are handed out, the verified add
//! that browser capture makes, and `find` by client key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{AddRequest, AddResult, DownloadId, DownloadInfo, ErrorCode, Status, validate};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::entry::{Entry, now_ms};
use super::error::TransferError;
use super::filename;
use super::plan::Dest;
use super::probe;
use super::queue::{ApiError, CRASH_EXIT_CODE, Core, Engine, invalid, lock};
use super::state::{self, DownloadRecord};
use super::transfer;

/// How long a verified add waits for the server's first response.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(20);

/// Most downloads the queue holds, finished ones included (everything `list` shows): each is rewritten into
/// `state.json` with every checkpoint, so the queue must not grow without bound.
pub(super) const MAX_QUEUE: usize = 10_000;

/// What the engine tracks of verified adds under way.
#[derive(Default)]
pub(super) struct Verifications {
    /// Verified adds take turns per URL (see [`Engine::add_verified`]): an entry lives while an add holds or waits
    /// for that URL's turn.
    url_turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Client keys of verified adds that have not answered yet, with how many carry each: `find` waits for them.
    verifying: Mutex<HashMap<String, usize>>,
    /// Signalled each time a verified add with a client key answers.
    verified: Notify,
}

fn queue_full() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidState,
        format!(
            "the queue holds {MAX_QUEUE} downloads, the most it can: remove finished ones, then add again"
        ),
    )
}

fn fetch_failed(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::FetchFailed, message)
}

/// An add request, checked, before it touches the queue.
pub(super) struct NewDownload {
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
        let url = validate::url(&req.url)?;
        if let Some(t) = req.threads {
            validate::threads(t)?;
        }
        if let Some(r) = req.retries {
            validate::retries(r)?;
        }
        if let Some(name) = &req.filename {
            filename::validate_user_name(name).map_err(invalid)?;
        }
        if let Some(key) = &req.client_key {
            check_client_key(key)?;
        }
        let headers = validate::request_headers(req.headers, req.referrer.as_deref())?;
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

    /// The record of this download as download `id`, with the settings' defaults filled in.
    fn record(
        self,
        id: protocol::DownloadId,
        core: &Core,
        dir: std::path::PathBuf,
    ) -> DownloadRecord {
        let shown = self
            .name
            .clone()
            .or_else(|| filename::from_url(&self.url).map(|n| filename::sanitize(&n)));
        DownloadRecord {
            id,
            url: self.url.to_string(),
            headers: self.headers,
            filename: shown.unwrap_or_else(|| "download".into()),
            dest: Dest::Dir {
                dir,
                name: self.name,
            },
            status: Status::Queued,
            threads: self.threads.unwrap_or(core.settings.default_threads),
            retries: self.retries.unwrap_or(core.settings.default_retries),
            bandwidth_limit: self.bandwidth_limit,
            error: None,
            created_at: now_ms(),
            finished_at: None,
            plan: None,
            path: None,
            size: None,
            client_key: self.client_key,
            joined_keys: Vec::new(),
            rank: None,
        }
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
/// takes the URL out of [`Verifications::url_turns`].
struct UrlTurn {
    engine: Engine,
    url: String,
    turn: Arc<tokio::sync::Mutex<()>>,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for UrlTurn {
    fn drop(&mut self) {
        self.held = None;
        let mut turns = lock(&self.engine.inner.verify.url_turns);
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
        *lock(&engine.inner.verify.verifying)
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
        let verify = &self.engine.inner.verify;
        {
            let mut verifying = lock(&verify.verifying);
            if let Some(n) = verifying.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    verifying.remove(&self.key);
                }
            }
        }
        verify.verified.notify_waiters();
    }
}

impl Engine {
    /// Add a download. When its `client_key` is already in the queue, nothing is added and that download is the
    /// answer (`existing`). `req.expect` is not looked at: browser capture goes through [`Engine::add_verified`].
    /// The add is in `state.json` before this returns, and only then does the download start: no file of a download
    /// exists before the download is on disk, so a crash can never leave a `.part` file that no saved download
    /// owns (and that would push the restarted download to `name (1)`).
    pub async fn add(&self, req: AddRequest) -> Result<AddResult, ApiError> {
        let new = NewDownload::check(req)?;
        let keyed = new.client_key.is_some();
        let added = self.insert(new).await?;
        self.persist().await;
        self.crash_point(keyed);
        self.start_queued();
        Ok(added)
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
        if let Some(id) = self.join(&new) {
            self.persist().await;
            return Ok(AddResult { id, existing: true });
        }
        // Refused before the server is asked; `insert` checks again under the lock.
        if lock(&self.inner.core).downloads.len() >= MAX_QUEUE {
            return Err(queue_full());
        }
        let turn = self.url_turn(new.url.as_str()).await;
        // The add that held the turn before may have added this very download.
        if let Some(id) = self.join(&new) {
            self.persist().await;
            return Ok(AddResult { id, existing: true });
        }
        let headers =
            transfer::caller_headers(new.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
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
        let added = self.insert(new).await?;
        // The download is in the queue: the next add of this URL joins it, and need not wait for the write.
        drop(turn);
        self.persist().await;
        self.crash_point(true);
        self.start_queued();
        Ok(added)
    }

    /// The download a verified add joins instead of adding one: its key's, else an unfinished one of its URL. A key
    /// that joins another capture's download is kept with it, so `find` answers for that key too; the caller
    /// persists before answering.
    fn join(&self, new: &NewDownload) -> Option<DownloadId> {
        let mut core = lock(&self.inner.core);
        let key = new.client_key.as_deref();
        if let Some(id) = key.and_then(|k| core.by_key(k)) {
            return Some(id);
        }
        let id = core.unfinished(new.url.as_str())?;
        let e = core.downloads.get_mut(&id).expect("found");
        if let Some(k) = key
            && e.rec.joined_keys.len() < state::MAX_JOINED_KEYS
        {
            e.rec.joined_keys.push(k.to_owned());
            self.touch();
        }
        Some(id)
    }

    /// [`EngineConfig::crash_after_keyed_add`], when armed and the add carried a key.
    fn crash_point(&self, keyed: bool) {
        if let Some(path) = &self.inner.config.crash_after_keyed_add
            && keyed
            && std::fs::remove_file(path).is_ok()
        {
            warn!(
                code = CRASH_EXIT_CODE,
                "SDM_TEST_CRASH_AFTER_ADD: exiting after the write, before the reply"
            );
            std::process::exit(CRASH_EXIT_CODE);
        }
    }

    /// The download added with `key`, if it is in the queue. A verified add of that key still under way is waited
    /// for first, so the answer is final.
    pub async fn find(&self, key: &str) -> Result<Option<DownloadInfo>, ApiError> {
        check_client_key(key)?;
        let verify = &self.inner.verify;
        loop {
            // Made before the check, so an add that answers in between still wakes us.
            let answered = verify.verified.notified();
            if !lock(&verify.verifying).contains_key(key) {
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
        let turn = lock(&self.inner.verify.url_turns)
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

    /// Put a checked download in the queue, unless its client key is there already. An id is handed out only once
    /// it is reserved on disk (`ids.json`), so no crash, nor a state file lost whole, lets it be used twice.
    async fn insert(&self, new: NewDownload) -> Result<AddResult, ApiError> {
        loop {
            let reserved = {
                let mut core = lock(&self.inner.core);
                if let Some(id) = new.client_key.as_deref().and_then(|k| core.by_key(k)) {
                    return Ok(AddResult { id, existing: true });
                }
                if core.downloads.len() >= MAX_QUEUE {
                    return Err(queue_full());
                }
                let id = core.next_id;
                if id < core.reserved_ids {
                    return Ok(self.place(&mut core, new));
                }
                self.reserve_block(id)
            };
            reserved.await?;
        }
    }

    /// Put a checked download in the queue as the next id, which the caller has seen is reserved.
    fn place(&self, core: &mut Core, new: NewDownload) -> AddResult {
        let id = core.next_id;
        core.next_id += 1;
        let dir = self.download_dir(&core.settings);
        let entry = Entry::new(new.record(id, core, dir));
        info!(id, "added");
        self.changed(&entry);
        core.downloads.insert(id, entry);
        AddResult {
            id,
            existing: false,
        }
    }

    /// Add several downloads (`add_many`): one result per item, in order, each judged on its own, so a refused item
    /// does not refuse the others. The whole batch goes into the queue under one lock, and this returns once one write
    /// of `state.json` holds it all, so a list of 200 URLs costs one write, not 200. A verified add (`expect`) is
    /// refused here: each waits for its own server, which [`Engine::add_verified`] does one by one.
    ///
    /// The error is for the batch as a whole: more than [`protocol::MAX_ADD_MANY`] items, or ids that cannot be
    /// reserved on disk.
    pub async fn add_many(
        &self,
        items: Vec<AddRequest>,
    ) -> Result<Vec<Result<AddResult, ApiError>>, ApiError> {
        if items.len() > protocol::MAX_ADD_MANY {
            return Err(invalid(format!(
                "add_many takes at most {} items, not {}: send the rest in another request",
                protocol::MAX_ADD_MANY,
                items.len()
            )));
        }
        let checked: Vec<Result<NewDownload, ApiError>> = items
            .into_iter()
            .map(|req| {
                if req.expect.is_some() {
                    return Err(invalid(
                        "a verified add (with expect) cannot be in add_many: send it alone as add",
                    ));
                }
                NewDownload::check(req)
            })
            .collect();
        let keyed = checked
            .iter()
            .any(|c| c.as_ref().is_ok_and(|n| n.client_key.is_some()));
        let results = self.insert_batch(checked).await?;
        info!(
            items = results.len(),
            added = results
                .iter()
                .filter(|r| r.as_ref().is_ok_and(|a| !a.existing))
                .count(),
            "batch added"
        );
        self.persist().await;
        self.crash_point(keyed);
        self.start_queued();
        Ok(results)
    }

    /// Reserve on disk the block of ids from `next_id`. Called under the lock, so reservations reach the writer in the
    /// order they were asked for; the future waits for the write, then lets the queue use the block.
    fn reserve_block(
        &self,
        next_id: DownloadId,
    ) -> impl Future<Output = Result<(), ApiError>> + use<'_> {
        let until = next_id + state::ID_BLOCK;
        let written = self.inner.disk.reserve_ids(until);
        async move {
            written.await.map_err(|e| {
                ApiError::new(
                    ErrorCode::Io,
                    format!("cannot write to the data directory: {e}"),
                )
            })?;
            let mut core = lock(&self.inner.core);
            core.reserved_ids = core.reserved_ids.max(until);
            Ok(())
        }
    }

    /// [`Engine::insert`] for a batch: ids for all of it are reserved on disk first, then every item goes in under
    /// one lock, so no checkpoint writes half a batch.
    async fn insert_batch(
        &self,
        checked: Vec<Result<NewDownload, ApiError>>,
    ) -> Result<Vec<Result<AddResult, ApiError>>, ApiError> {
        // One block always covers a batch, so one reservation is enough.
        const _: () = assert!(protocol::MAX_ADD_MANY as DownloadId <= state::ID_BLOCK);
        let needed = checked.iter().filter(|c| c.is_ok()).count() as DownloadId;
        // Taken by the pass that inserts; a pass that must reserve ids first leaves it for the next.
        let mut checked = Some(checked);
        loop {
            let reserved = {
                let mut core = lock(&self.inner.core);
                if core.next_id + needed <= core.reserved_ids {
                    let results = checked
                        .take()
                        .into_iter()
                        .flatten()
                        .map(|c| {
                            let new = c?;
                            if let Some(id) = new.client_key.as_deref().and_then(|k| core.by_key(k))
                            {
                                return Ok(AddResult { id, existing: true });
                            }
                            if core.downloads.len() >= MAX_QUEUE {
                                return Err(queue_full());
                            }
                            Ok(self.place(&mut core, new))
                        })
                        .collect();
                    return Ok(results);
                }
                self.reserve_block(core.next_id)
            };
            reserved.await?;
        }
    }
}
