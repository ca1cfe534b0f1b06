//! The engine's files in the data directory, all JSON, all private to the user (0600 in a 0700 folder):
//! - `state.json`: the queue, each download with its plan (segment progress and validators). Replaced atomically.
//! - `settings.json`: [`protocol::Settings`]. Replaced atomically.
//! - `history.jsonl`: finished downloads, one JSON object a line, appended.
//!
//! A file that cannot be read is never dropped silently: it is renamed `<name>.damaged-<unix time>`, what can be
//! recovered from it is kept, and the loader says what it did.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
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

/// The first id not yet reserved (see [`ID_BLOCK`]); 1 when nothing was.
pub fn load_reserved_ids(dir: &Path) -> DownloadId {
    fs::read(dir.join(IDS))
        .ok()
        .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("reserved_until").and_then(|n| n.as_u64()))
        .unwrap_or(1)
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
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Load the queue. A damaged file is set aside and every download in it that still parses is kept.
pub fn load_state(dir: &Path, warnings: &mut Vec<String>) -> LoadedState {
    let path = dir.join(STATE);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return LoadedState {
                next_id: 1,
                downloads: Vec::new(),
                damaged: false,
            };
        }
        Err(e) => {
            warnings.push(format!(
                "cannot read {}: {e}; starting with an empty queue",
                path.display()
            ));
            return LoadedState {
                next_id: 1,
                downloads: Vec::new(),
                damaged: false,
            };
        }
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

/// Load history, oldest first. Damaged lines are dropped from the live file after the whole file is set aside.
pub fn load_history(dir: &Path, warnings: &mut Vec<String>) -> Vec<HistoryItem> {
    let path = dir.join(HISTORY);
    let Ok(text) = fs::read(&path) else {
        return Vec::new();
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
    }
    items
}

pub fn append_history(dir: &Path, item: &HistoryItem) -> io::Result<()> {
    let mut line = serde_json::to_vec(item).map_err(io::Error::other)?;
    line.push(b'\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(dir.join(HISTORY))?;
    f.write_all(&line)
}

pub fn clear_history(dir: &Path) -> io::Result<()> {
    write_atomic(&dir.join(HISTORY), b"")
}

/// Write to a temp file, fsync it, rename it over `path`, fsync the folder: after a crash, `path` is the old or
/// the new content, never a mix.
pub fn write_atomic(path: &Path, body: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
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

    #[test]
    fn client_keys_are_kept_and_older_records_without_one_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let keyed = DownloadRecord {
            client_key: Some("capture-7".into()),
            ..record(7)
        };
        save_state(dir.path(), 9, &[keyed.clone(), record(8)]).unwrap();
        let text: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join(STATE)).unwrap()).unwrap();
        assert_eq!(text["downloads"][0]["client_key"], "capture-7");
        assert!(text["downloads"][1].get("client_key").is_none());
        let mut w = vec![];
        assert_eq!(
            load_state(dir.path(), &mut w).downloads,
            vec![keyed, record(8)]
        );
        assert!(w.is_empty(), "{w:?}");
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
        assert_eq!(s.next_id, 3);
        assert!(w[0].contains("kept 2 downloads"), "{w:?}");
    }

    #[test]
    fn truncated_history_keeps_good_lines() {
        let dir = tempfile::tempdir().unwrap();
        let item = HistoryItem {
            id: 1,
            url: "u".into(),
            filename: "f".into(),
            path: "/p".into(),
            status: Status::Completed,
            total: Some(1),
            downloaded: 1,
            error: None,
            created_at: 0,
            finished_at: 1,
        };
        append_history(dir.path(), &item).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(HISTORY))
            .unwrap();
        f.write_all(b"{\"id\":2,\"url\":").unwrap();
        let mut w = vec![];
        assert_eq!(load_history(dir.path(), &mut w), vec![item.clone()]);
        assert_eq!(w.len(), 1);
        let mut w = vec![];
        assert_eq!(
            load_history(dir.path(), &mut w),
            vec![item],
            "the rewritten file is clean"
        );
        assert!(w.is_empty());
    }

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
