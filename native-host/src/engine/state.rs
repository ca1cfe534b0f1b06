//! The engine's files in the data directory, all JSON, all private to the user (0600 in a 0700 folder):
//! - `state.json`: the queue, each download with its plan (segment progress and validators). Replaced atomically.
//! - `settings.json`: [`protocol::Settings`]. Replaced atomically.
//! - `history.jsonl`: finished downloads, one JSON object a line, appended; the newest [`MAX_HISTORY`] are kept
//!   (rotated once the file holds [`HISTORY_SLACK`] lines more).
//! - `ids.json`: the first id not yet reserved ([`ID_BLOCK`]).
//!
//! A file that cannot be read is never dropped silently: it is renamed `<name>.damaged-<unix time>`, what can be
//! recovered from it is kept, and the loader says what it did.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use protocol::{DownloadId, HistoryItem, Settings, Status};
use serde::{Deserialize, Serialize};

use super::plan::{Dest, Plan};

const STATE: &str = "state.json";
const SETTINGS: &str = "settings.json";
const HISTORY: &str = "history.jsonl";
const IDS: &str = "ids.json";

/// Ids are reserved on disk this many at a time, so that even a state file lost whole never lets an id be reused.
pub const ID_BLOCK: DownloadId = 1000;

/// History keeps the newest this many finished downloads; older ones are forgotten. At a few hundred bytes a line,
/// that is a few MiB of `history.jsonl` (a URL may be 16 KiB, so at worst about 200 MiB).
pub const MAX_HISTORY: usize = 10_000;

/// `history.jsonl` is rewritten with its newest [`MAX_HISTORY`] lines once it holds this many more: the rewrite
/// costs the whole file, so it happens once per this many appends rather than on each.
pub const HISTORY_SLACK: usize = 1_000;

/// Numbers read from a damaged file at or above this are garbage, not ids: no id gets near it, and adding to it
/// cannot overflow.
const MAX_SALVAGED_ID: DownloadId = 1 << 53;

/// One download as saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownloadRecord {
    pub id: DownloadId,
    pub url: String,
    /// Request headers to send (cookies among them): kept here so a resume after restart is still authorized, and
    /// never copied into history or logs.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The name shown until the server's is known.
    pub filename: String,
    pub dest: Dest,
    pub status: Status,
    pub threads: u32,
    pub retries: u32,
    pub bandwidth_limit: u64,
    #[serde(default)]
    pub error: Option<String>,
    pub created_at: u64,
    #[serde(default)]
    pub finished_at: Option<u64>,
    /// Where the transfer stands; `None` before the first probe and after completion.
    #[serde(default)]
    pub plan: Option<Plan>,
    /// The final path, once known.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The size of the completed file (a completed download keeps no plan).
    #[serde(default)]
    pub size: Option<u64>,
    /// The key the client added it with (`add.client_key`): a second add with the same key, or `find`, names this
    /// download, across restarts too. Absent in older state files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    /// Keys of later verified adds that joined this download (a second capture of the same URL), so `find` answers
    /// for them too after a lost reply. At most [`MAX_JOINED_KEYS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joined_keys: Vec<String>,
    /// Where the download stands in the queue's order (`move`): downloads with a rank come first, lowest rank first,
    /// then those without one (new ones, and every one of an older state file) by id, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u64>,
}

impl DownloadRecord {
    /// Whether `state.json` keeps this download's request headers (cookies, authorization): only while it may still
    /// send them. A completed or cancelled download never will; a failed one can be resumed, so it keeps them.
    pub fn keeps_headers(&self) -> bool {
        !matches!(self.status, Status::Completed | Status::Cancelled)
    }
}

/// How many joined keys a download keeps: a page that starts the same download over and over must not grow the
/// state file without bound.
pub const MAX_JOINED_KEYS: usize = 16;

#[derive(Serialize)]
struct StateOut<'a> {
    version: u32,
    next_id: DownloadId,
    downloads: &'a [DownloadRecord],
}

/// What was loaded from `state.json`.
#[derive(Debug, Default)]
pub struct LoadedState {
    pub next_id: DownloadId,
    pub downloads: Vec<DownloadRecord>,
    /// The file could not be read whole: `next_id` must also clear every id ever reserved.
    pub damaged: bool,
}

/// What `ids.json` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservedIds {
    /// The first id not yet reserved (see [`ID_BLOCK`]); 1 when nothing was. From a damaged file, the largest number
    /// that could still be read in it.
    pub until: DownloadId,
    /// The file could not be read: it was set aside, and ids up to a block past every known one may have been
    /// handed out.
    pub damaged: bool,
}

/// Read a data file. `Ok(None)`: there is none. `Err(())`: it cannot be read, which goes into `warnings` with
/// `instead`, what start-up does without it.
fn read_data(
    path: &Path,
    instead: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<Vec<u8>>, ()> {
    match fs::read(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => {
            warnings.push(format!("cannot read {}: {e}; {instead}", path.display()));
            Err(())
        }
    }
}

/// Read `ids.json`. A damaged file is set aside and reported like the others.
pub fn load_reserved_ids(dir: &Path, warnings: &mut Vec<String>) -> ReservedIds {
    let path = dir.join(IDS);
    let text = match read_data(&path, "ids skip a block past every known one", warnings) {
        Ok(Some(t)) => t,
        absent_or_unreadable => {
            return ReservedIds {
                until: 1,
                damaged: absent_or_unreadable.is_err(),
            };
        }
    };
    let read = serde_json::from_slice::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("reserved_until").and_then(|n| n.as_u64()));
    match read {
        Some(until) => ReservedIds {
            until,
            damaged: false,
        },
        None => {
            let until = largest_number(&text, b"").unwrap_or(1);
            let aside = set_aside(&path);
            warnings.push(format!(
                "{} was damaged: ids skip a block past every known one; the damaged file is kept as {}",
                path.display(),
                aside.display()
            ));
            ReservedIds {
                until,
                damaged: true,
            }
        }
    }
}

/// The largest number in `text` written right after `key` (any number at all when `key` is empty), ignoring
/// those at or above [`MAX_SALVAGED_ID`]: what can still be learnt of the ids in a damaged file.
fn largest_number(text: &[u8], key: &[u8]) -> Option<DownloadId> {
    let mut largest = None;
    let mut i = 0;
    while i < text.len() {
        let after_key = key.is_empty() || text[..i].ends_with(key);
        let starts = text[i].is_ascii_digit() && (i == 0 || !text[i - 1].is_ascii_digit());
        if !(starts && after_key) {
            i += 1;
            continue;
        }
        let digits = text[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        let n = std::str::from_utf8(&text[i..i + digits])
            .ok()
            .and_then(|d| d.parse::<DownloadId>().ok())
            .filter(|&n| n < MAX_SALVAGED_ID);
        largest = largest.max(n);
        i += digits;
    }
    largest
}

/// Record that ids below `until` may have been handed out.
pub fn save_reserved_ids(dir: &Path, until: DownloadId) -> io::Result<()> {
    write_atomic(
        &dir.join(IDS),
        serde_json::json!({ "reserved_until": until })
            .to_string()
            .as_bytes(),
    )
}

/// Create the data directory, private to the user.
#[cfg(unix)]
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Create the data directory; on Windows it is private through the ACL it inherits from `%LOCALAPPDATA%`.
#[cfg(windows)]
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)
}

/// Options that create a file readable by its owner only (0600) and never open one through a link.
#[cfg(unix)]
fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    options
}

/// Options that create a file; on Windows the data directory's ACL, inherited, keeps it private.
#[cfg(windows)]
fn private_file() -> OpenOptions {
    OpenOptions::new()
}

/// Make a folder's entries durable after a rename.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Nothing to do on Windows: NTFS journals a folder's entries, and a folder cannot be flushed there.
#[cfg(windows)]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Load the queue. A damaged file is set aside and every download in it that still parses is kept.
pub fn load_state(dir: &Path, warnings: &mut Vec<String>) -> LoadedState {
    let path = dir.join(STATE);
    let Ok(Some(text)) = read_data(&path, "starting with an empty queue", warnings) else {
        return LoadedState {
            next_id: 1,
            downloads: Vec::new(),
            damaged: false,
        };
    };
    let mut lost = 0usize;
    let mut loaded = LoadedState {
        next_id: 1,
        downloads: Vec::new(),
        damaged: false,
    };
    let damaged = match serde_json::from_slice::<serde_json::Value>(&text) {
        Ok(v) => {
            loaded.next_id = v.get("next_id").and_then(|n| n.as_u64()).unwrap_or(1);
            match v.get("downloads").and_then(|d| d.as_array()) {
                Some(items) => {
                    for item in items {
                        match serde_json::from_value::<DownloadRecord>(item.clone()) {
                            Ok(r) => loaded.downloads.push(r),
                            Err(_) => lost += 1,
                        }
                    }
                    lost > 0
                }
                None => true,
            }
        }
        Err(_) => {
            // Cut short or garbled: keep every whole record before the damage.
            let (records, bad) = salvage_records(&text);
            loaded.downloads = records;
            lost = bad;
            true
        }
    };
    let max_id = loaded.downloads.iter().map(|d| d.id).max().unwrap_or(0);
    loaded.next_id = loaded.next_id.max(max_id + 1);
    if damaged {
        // Records that no longer parse may still show their ids, and so may the next id itself.
        let seen = largest_number(&text, b"\"id\":")
            .max(largest_number(&text, b"\"next_id\":").map(|n| n.saturating_sub(1)));
        loaded.next_id = loaded.next_id.max(seen.map_or(1, |n| n + 1));
    }
    loaded.damaged = damaged;
    if damaged {
        let aside = set_aside(&path);
        warnings.push(format!(
            "{} was damaged: kept {} downloads, could not read {lost}; the damaged file is kept as {}",
            path.display(),
            loaded.downloads.len(),
            aside.display()
        ));
    }
    loaded
}

/// Read the `"downloads": [...]` array of a damaged state file record by record, up to the first that does not
/// parse; returns the records read and how many elements were found unreadable.
fn salvage_records(text: &[u8]) -> (Vec<DownloadRecord>, usize) {
    let key = b"\"downloads\"";
    let Some(at) = text.windows(key.len()).position(|w| w == key) else {
        return (Vec::new(), 0);
    };
    let mut rest = &text[at + key.len()..];
    let skip = |r: &mut &[u8], set: &[u8]| {
        while let [c, tail @ ..] = *r {
            if !(c.is_ascii_whitespace() || set.contains(c)) {
                break;
            }
            *r = tail;
        }
    };
    skip(&mut rest, b":");
    let [b'[', tail @ ..] = rest else {
        return (Vec::new(), 0);
    };
    rest = tail;
    let (mut records, mut bad) = (Vec::new(), 0);
    loop {
        skip(&mut rest, b",");
        if rest.first().is_none_or(|&c| c == b']') {
            break;
        }
        let mut stream =
            serde_json::Deserializer::from_slice(rest).into_iter::<serde_json::Value>();
        match stream.next() {
            Some(Ok(value)) => {
                match serde_json::from_value::<DownloadRecord>(value) {
                    Ok(r) => records.push(r),
                    Err(_) => bad += 1,
                }
                rest = &rest[stream.byte_offset()..];
            }
            _ => {
                bad += 1;
                break;
            }
        }
    }
    (records, bad)
}

/// Replace `state.json` atomically.
pub fn save_state(dir: &Path, next_id: DownloadId, downloads: &[DownloadRecord]) -> io::Result<()> {
    let body = serde_json::to_vec(&StateOut {
        version: 1,
        next_id,
        downloads,
    })
    .map_err(io::Error::other)?;
    write_atomic(&dir.join(STATE), &body)
}

pub fn load_settings(dir: &Path, warnings: &mut Vec<String>) -> Settings {
    let path = dir.join(SETTINGS);
    match fs::read(&path) {
        Ok(t) => match serde_json::from_slice(&t) {
            Ok(s) => s,
            Err(e) => {
                let aside = set_aside(&path);
                warnings.push(format!(
                    "{} was damaged ({e}): using defaults; kept as {}",
                    path.display(),
                    aside.display()
                ));
                Settings::default()
            }
        },
        Err(_) => Settings::default(),
    }
}

pub fn save_settings(dir: &Path, settings: &Settings) -> io::Result<()> {
    let body = serde_json::to_vec_pretty(settings).map_err(io::Error::other)?;
    write_atomic(&dir.join(SETTINGS), &body)
}

/// What was loaded from `history.jsonl`.
#[derive(Debug, Default)]
pub struct LoadedHistory {
    /// The newest [`MAX_HISTORY`] items, oldest first.
    pub items: Vec<HistoryItem>,
    /// How many lines the file now holds: the writer rotates it when they reach `MAX_HISTORY + HISTORY_SLACK`.
    pub lines: usize,
}

/// Load history. Damaged lines are dropped from the live file after the whole file is set aside; a file that has
/// grown to [`MAX_HISTORY`] + [`HISTORY_SLACK`] lines is rotated.
pub fn load_history(dir: &Path, warnings: &mut Vec<String>) -> LoadedHistory {
    let path = dir.join(HISTORY);
    let Ok(text) = fs::read(&path) else {
        return LoadedHistory::default();
    };
    let mut items = Vec::new();
    let mut bad = 0usize;
    for line in text
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
    {
        match serde_json::from_slice::<HistoryItem>(line) {
            Ok(item) => items.push(item),
            Err(_) => bad += 1,
        }
    }
    let lines = items.len() + bad;
    items.drain(..items.len().saturating_sub(MAX_HISTORY));
    if bad > 0 {
        let aside = set_aside(&path);
        let mut body = Vec::new();
        for item in &items {
            if let Ok(line) = serde_json::to_vec(item) {
                body.extend_from_slice(&line);
                body.push(b'\n');
            }
        }
        if let Err(e) = write_atomic(&path, &body) {
            warnings.push(format!("cannot rewrite {}: {e}", path.display()));
        }
        warnings.push(format!(
            "{} had {bad} damaged lines: kept {} items; the damaged file is kept as {}",
            path.display(),
            items.len(),
            aside.display()
        ));
        let lines = items.len();
        return LoadedHistory { items, lines };
    }
    if lines >= MAX_HISTORY + HISTORY_SLACK {
        match rotate_history(dir, MAX_HISTORY) {
            Ok(lines) => return LoadedHistory { items, lines },
            Err(e) => warnings.push(format!("cannot rotate {}: {e}", path.display())),
        }
    }
    LoadedHistory { items, lines }
}

/// Rewrite `history.jsonl` with only its newest `keep` lines; returns how many it holds.
pub fn rotate_history(dir: &Path, keep: usize) -> io::Result<usize> {
    let path = dir.join(HISTORY);
    let text = fs::read(&path)?;
    let lines: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    let kept = &lines[lines.len().saturating_sub(keep)..];
    let mut body = Vec::with_capacity(text.len());
    for line in kept {
        body.extend_from_slice(line);
        body.push(b'\n');
    }
    write_atomic(&path, &body)?;
    Ok(kept.len())
}

/// Append `item` to `history.jsonl`; `sync`: and make it durable before returning (a completion is told of once its
/// line is on disk, see [`completed_since_saved`]).
pub fn append_history(dir: &Path, item: &HistoryItem, sync: bool) -> io::Result<()> {
    let mut line = serde_json::to_vec(item).map_err(io::Error::other)?;
    line.push(b'\n');
    let mut f = private_file()
        .create(true)
        .append(true)
        .open(dir.join(HISTORY))?;
    f.write_all(&line)?;
    if sync {
        f.sync_data()?;
    }
    Ok(())
}

/// Mark completed every download of `downloads` that `history` says completed while the state file still shows it
/// otherwise (running, or failed before a resume). The engine tells of a completion once its history line is on
/// disk, and `state.json` follows at the next write: a crash between the two must not undo a completion already
/// told (the download would start again, with its file already at the final path). A completed download never
/// changes status again, and ids are never reused, so such a line is the last word on its download.
pub fn completed_since_saved(downloads: &mut [DownloadRecord], history: &[HistoryItem]) {
    let not_completed: std::collections::HashMap<DownloadId, usize> = downloads
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status != Status::Completed)
        .map(|(i, r)| (r.id, i))
        .collect();
    if not_completed.is_empty() {
        return;
    }
    for item in history.iter().filter(|h| h.status == Status::Completed) {
        let Some(&i) = not_completed.get(&item.id) else {
            continue;
        };
        let rec = &mut downloads[i];
        let planned = rec.plan.take().map(|p| p.path);
        rec.path = rec
            .path
            .take()
            .or(planned)
            .or_else(|| Some(PathBuf::from(&item.path)));
        rec.status = Status::Completed;
        rec.size = Some(item.downloaded);
        rec.finished_at = Some(item.finished_at);
        rec.error = None;
    }
}

pub fn clear_history(dir: &Path) -> io::Result<()> {
    write_atomic(&dir.join(HISTORY), b"")
}

/// Write to a temp file, fsync it, rename it over `path`, fsync the folder: after a crash, `path` is the old or
/// the new content, never a mix.
pub fn write_atomic(path: &Path, body: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        // A temp file left by a crash, or anything put there, goes: the new one is created where nothing is.
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = private_file().write(true).create_new(true).open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Rename a damaged file out of the way and return its new name.
fn set_aside(path: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".damaged-{secs}"));
    let aside = PathBuf::from(name);
    match fs::rename(path, &aside) {
        Ok(()) => aside,
        Err(_) => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: DownloadId) -> DownloadRecord {
        DownloadRecord {
            id,
            url: format!("http://127.0.0.1/{id}"),
            headers: vec![],
            filename: format!("{id}"),
            dest: Dest::Dir {
                dir: "/tmp".into(),
                name: None,
            },
            status: Status::Queued,
            threads: 8,
            retries: 5,
            bandwidth_limit: 0,
            error: None,
            created_at: 0,
            finished_at: None,
            plan: None,
            path: None,
            size: None,
            client_key: None,
            joined_keys: Vec::new(),
            rank: None,
        }
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        save_state(dir.path(), 3, &[record(1), record(2)]).unwrap();
        let mut w = vec![];
        let s = load_state(dir.path(), &mut w);
        assert!(w.is_empty());
        assert_eq!(s.next_id, 3);
        assert_eq!(s.downloads, vec![record(1), record(2)]);
    }

    /// `set` (a record with an optional field set) and a record without it round-trip; the field is left out of the
    /// file when unset, so files older than the field still load.
    fn an_optional_field_round_trips(set: DownloadRecord, field: &str, written: serde_json::Value) {
        let dir = tempfile::tempdir().unwrap();
        let plain = record(set.id + 1);
        save_state(dir.path(), 9, &[set.clone(), plain.clone()]).unwrap();
        let text: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join(STATE)).unwrap()).unwrap();
        assert_eq!(text["downloads"][0][field], written);
        assert!(text["downloads"][1].get(field).is_none());
        let mut w = vec![];
        assert_eq!(load_state(dir.path(), &mut w).downloads, vec![set, plain]);
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn client_keys_are_kept_and_older_records_without_one_still_load() {
        let keyed = DownloadRecord {
            client_key: Some("capture-7".into()),
            ..record(7)
        };
        an_optional_field_round_trips(keyed, "client_key", "capture-7".into());
    }

    #[test]
    fn queue_ranks_are_kept_and_older_records_without_one_still_load() {
        let ranked = DownloadRecord {
            rank: Some(0),
            ..record(4)
        };
        an_optional_field_round_trips(ranked, "rank", 0.into());
    }

    #[test]
    fn garbage_state_is_set_aside_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STATE), b"\0\0garbage").unwrap();
        let mut w = vec![];
        let s = load_state(dir.path(), &mut w);
        assert!(s.downloads.is_empty());
        assert_eq!(w.len(), 1, "{w:?}");
        let kept = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("state.json.damaged-")
            });
        assert!(kept);
    }

    #[test]
    fn one_bad_download_does_not_lose_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let good = serde_json::to_value(record(4)).unwrap();
        let text =
            serde_json::json!({"version": 1, "next_id": 2, "downloads": [good, {"id": "nope"}]});
        fs::write(dir.path().join(STATE), text.to_string()).unwrap();
        let mut w = vec![];
        let s = load_state(dir.path(), &mut w);
        assert_eq!(s.downloads, vec![record(4)]);
        assert_eq!(s.next_id, 5, "ids never go back");
        assert!(w[0].contains("could not read 1"), "{w:?}");
    }

    #[test]
    fn a_truncated_state_file_keeps_the_records_before_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        save_state(dir.path(), 4, &[record(1), record(2), record(3)]).unwrap();
        let text = fs::read(dir.path().join(STATE)).unwrap();
        let cut = text.len() - 40;
        fs::write(dir.path().join(STATE), &text[..cut]).unwrap();
        let mut w = vec![];
        let s = load_state(dir.path(), &mut w);
        assert_eq!(s.downloads, vec![record(1), record(2)]);
        assert_eq!(
            s.next_id, 4,
            "the cut record's id and the saved next id still count"
        );
        assert!(w[0].contains("kept 2 downloads"), "{w:?}");
    }

    #[test]
    fn truncated_history_keeps_good_lines() {
        let dir = tempfile::tempdir().unwrap();
        let item = item(1);
        append_history(dir.path(), &item, false).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(HISTORY))
            .unwrap();
        f.write_all(b"{\"id\":2,\"url\":").unwrap();
        let mut w = vec![];
        assert_eq!(load_history(dir.path(), &mut w).items, vec![item.clone()]);
        assert_eq!(w.len(), 1);
        let mut w = vec![];
        assert_eq!(
            load_history(dir.path(), &mut w).items,
            vec![item],
            "the rewritten file is clean"
        );
        assert!(w.is_empty());
    }

    fn set_aside_names(dir: &Path, prefix: &str) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.starts_with(prefix))
            .collect()
    }

    #[test]
    fn reserved_ids_are_read_and_a_missing_file_reserves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = vec![];
        let none = load_reserved_ids(dir.path(), &mut w);
        assert_eq!(
            none,
            ReservedIds {
                until: 1,
                damaged: false
            }
        );
        save_reserved_ids(dir.path(), 2001).unwrap();
        assert_eq!(load_reserved_ids(dir.path(), &mut w).until, 2001);
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn a_damaged_ids_file_is_set_aside_with_what_it_still_says() {
        for (text, until) in [
            (&b"{\"reserved_until\":30"[..], 30),
            (b"\0\0garbage", 1),
            (b"{\"reserved_until\":\"x\"}", 1),
            (b"[]", 1),
            (b"{\"reserved_until\":99999999999999999999}", 1),
        ] {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join(IDS), text).unwrap();
            let mut w = vec![];
            let read = load_reserved_ids(dir.path(), &mut w);
            assert_eq!(
                read,
                ReservedIds {
                    until,
                    damaged: true
                },
                "{text:?}"
            );
            assert_eq!(w.len(), 1, "{w:?}");
            assert!(w[0].contains("ids.json was damaged"), "{w:?}");
            assert_eq!(set_aside_names(dir.path(), "ids.json.damaged-").len(), 1);
            assert!(!dir.path().join(IDS).exists());
        }
    }

    #[test]
    fn largest_number_reads_ids_from_damaged_text() {
        let text = br#"{"next_id":12,"downloads":[{"id":3,"x":[40]},{"id":11,"url":"h"#;
        assert_eq!(largest_number(text, br#""id":"#), Some(11));
        assert_eq!(largest_number(text, br#""next_id":"#), Some(12));
        assert_eq!(largest_number(text, b""), Some(40));
        assert_eq!(largest_number(b"no digits", b""), None);
        assert_eq!(largest_number(b"\"id\":9007199254740992", b"\"id\":"), None);
    }

    #[test]
    fn a_damaged_state_file_keeps_the_ids_of_records_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        save_state(dir.path(), 3, &[record(1), record(2)]).unwrap();
        let mut text = fs::read(dir.path().join(STATE)).unwrap();
        // A third record, cut short: it cannot be kept, but its id is seen.
        text.truncate(text.len() - 2);
        text.extend_from_slice(br#",{"id":40,"url":"#);
        fs::write(dir.path().join(STATE), &text).unwrap();
        let mut w = vec![];
        let s = load_state(dir.path(), &mut w);
        assert_eq!(s.downloads, vec![record(1), record(2)]);
        assert!(s.damaged);
        assert_eq!(s.next_id, 41);
    }

    #[test]
    fn only_downloads_that_may_still_send_keep_their_headers() {
        for (status, keeps) in [
            (Status::Queued, true),
            (Status::Downloading, true),
            (Status::Paused, true),
            (Status::Failed, true),
            (Status::Completed, false),
            (Status::Cancelled, false),
        ] {
            let rec = DownloadRecord {
                status,
                ..record(1)
            };
            assert_eq!(rec.keeps_headers(), keeps, "{status:?}");
        }
    }

    fn item(id: DownloadId) -> HistoryItem {
        HistoryItem {
            id,
            url: format!("http://127.0.0.1/{id}"),
            filename: "f".into(),
            path: "/p".into(),
            status: Status::Completed,
            total: Some(1),
            downloaded: 1,
            error: None,
            created_at: 0,
            finished_at: id,
        }
    }

    #[test]
    fn a_completion_in_history_that_state_json_does_not_hold_yet_is_read_as_completed() {
        let dir = tempfile::tempdir().unwrap();
        let mut running = record(1);
        running.status = Status::Downloading;
        running.path = Some("/tmp/1.bin".into());
        let mut failed = record(2);
        failed.status = Status::Failed;
        let queued = record(3);
        save_state(dir.path(), 4, &[running, failed, queued.clone()]).unwrap();
        // Download 1 completed (its line is on disk), then the service died before the next state write; download
        // 2 failed before, and was resumed and completed since.
        let mut failed_before = item(2);
        failed_before.status = Status::Failed;
        for line in [item(1), failed_before, item(2)] {
            append_history(dir.path(), &line, true).unwrap();
        }
        let mut w = vec![];
        let mut state = load_state(dir.path(), &mut w);
        let history = load_history(dir.path(), &mut w);
        completed_since_saved(&mut state.downloads, &history.items);
        assert!(w.is_empty(), "{w:?}");
        let by_id = |id| state.downloads.iter().find(|r| r.id == id).unwrap();
        assert_eq!(by_id(1).status, Status::Completed);
        assert_eq!(by_id(1).path.as_deref(), Some(Path::new("/tmp/1.bin")));
        assert_eq!(by_id(1).size, Some(1));
        assert_eq!(by_id(1).plan, None);
        assert_eq!(by_id(2).status, Status::Completed);
        assert_eq!(by_id(2).path.as_deref(), Some(Path::new("/p")));
        assert_eq!(*by_id(3), queued, "nothing in history: as saved");
    }

    fn write_history(dir: &Path, ids: std::ops::RangeInclusive<DownloadId>) {
        let mut body = Vec::new();
        for id in ids {
            body.extend_from_slice(&serde_json::to_vec(&item(id)).unwrap());
            body.push(b'\n');
        }
        fs::write(dir.join(HISTORY), body).unwrap();
    }

    fn history_ids(dir: &Path) -> Vec<DownloadId> {
        fs::read_to_string(dir.join(HISTORY))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<HistoryItem>(l).unwrap().id)
            .collect()
    }

    #[test]
    fn history_keeps_the_newest_items_and_rotates_its_file_past_the_slack() {
        let dir = tempfile::tempdir().unwrap();
        let n = (MAX_HISTORY + HISTORY_SLACK - 1) as DownloadId;
        write_history(dir.path(), 1..=n);
        let mut w = vec![];
        let h = load_history(dir.path(), &mut w);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(h.items.len(), MAX_HISTORY, "memory holds the newest only");
        assert_eq!(h.items[0].id, n - MAX_HISTORY as DownloadId + 1);
        assert_eq!(h.items.last().unwrap().id, n);
        assert_eq!(
            h.lines, n as usize,
            "below the slack the file is left alone"
        );

        write_history(dir.path(), 1..=n + 1);
        let h = load_history(dir.path(), &mut w);
        assert_eq!(h.lines, MAX_HISTORY);
        let ids = history_ids(dir.path());
        assert_eq!(ids.len(), MAX_HISTORY);
        assert_eq!(ids[0], n + 2 - MAX_HISTORY as DownloadId);
        assert_eq!(*ids.last().unwrap(), n + 1);
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn rotation_keeps_the_newest_lines() {
        let dir = tempfile::tempdir().unwrap();
        write_history(dir.path(), 1..=5);
        assert_eq!(rotate_history(dir.path(), 2).unwrap(), 2);
        assert_eq!(history_ids(dir.path()), [4, 5]);
        assert_eq!(rotate_history(dir.path(), 10).unwrap(), 2);
        assert_eq!(history_ids(dir.path()), [4, 5]);
    }

    #[cfg(unix)]
    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        ensure_dir(&data).unwrap();
        save_settings(&data, &Settings::default()).unwrap();
        assert_eq!(
            fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            fs::metadata(data.join(SETTINGS))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
}
