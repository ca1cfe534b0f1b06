//! What a `sdm get` that did not finish keeps for the next run of the same command: its plan, in a control file
//! beside the part file (`NAME.sdm` beside `NAME.part`, aria2's `.aria2` in spirit), found again by the URL.
//!
//! A control file is data from disk, so nothing in it can lead a write elsewhere: the file it resumes is the one it
//! sits beside (its stored path is ignored), in the folder the command names, under a name the command would have
//! chosen; its segments must lie inside the file. A run claims one by deleting it before it resumes, so two runs of
//! the same command at once never write into one part file (the second finds none and starts afresh under a new
//! name). Every file goes through [`Dir`], so a link planted at a control file's name is neither read nor followed.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::debug;

use super::dirfd::{Access, Dir};
use super::error::TransferError;
use super::filename;
use super::part;
use super::plan::{Dest, Plan};
use super::segments::Segment;

/// What a control file's name ends with, after its download's final name.
pub const CONTROL_SUFFIX: &str = ".sdm";

/// The largest control file read; a real one is a few hundred bytes per segment.
const MAX_CONTROL: u64 = 1 << 20;

/// The format's version, first in the file.
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Control {
    sdm_get: u32,
    /// The URL as the command gave it: what the next run is matched by.
    url: String,
    plan: Plan,
}

/// The control file's path for a download whose final path is `path`.
pub fn control_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(CONTROL_SUFFIX);
    PathBuf::from(s)
}

/// Whether a plan can be resumed by a later run: ranges over a file of known size, with something left to fetch.
pub fn resumable(plan: &Plan) -> bool {
    plan.ranges && plan.total.is_some() && !plan.segments.is_empty()
}

/// Write `plan` (of `url`) to its control file, beside its part file; replaces one that is there. Its bytes are
/// synced: the part file's are already (the plan comes from [`super::plan::Live::durable_plan`]).
pub fn keep(url: &str, plan: &Plan) -> Result<PathBuf, TransferError> {
    let control = control_path(&plan.path);
    let (dir, name) = part::open_parent(&control)?;
    write(&dir, &name, url, plan).map_err(|e| TransferError::io(&control, e))?;
    Ok(control)
}

fn write(dir: &Dir, name: &OsStr, url: &str, plan: &Plan) -> io::Result<()> {
    let text = serde_json::to_vec(&Control {
        sdm_get: VERSION,
        url: url.to_owned(),
        plan: plan.clone(),
    })
    .map_err(io::Error::other)?;
    match dir.remove(name) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // Private: a URL may carry a token.
    let mut file = dir.create_new(name, Access::Private)?;
    file.write_all(&text)?;
    file.sync_all()
}

/// The plan an earlier `sdm get` of `url` into `dest` kept, claimed for this run (its control file is deleted), with
/// its path set to the file it sits beside. `None` when there is none that fits.
pub fn claim(url: &str, dest: &Dest) -> Option<Plan> {
    let (dir, wanted) = dest.folder_and_name();
    let wanted = wanted.as_deref().map(filename::sanitize);
    let folder = Dir::open(dir).ok()?;
    let entries = std::fs::read_dir(dir).ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(stem) = name
            .to_str()
            .and_then(|n| n.strip_suffix(CONTROL_SUFFIX))
            .filter(|s| !s.is_empty())
        else {
            continue;
        };
        if wanted.as_deref().is_some_and(|w| {
            !(0..filename::MAX_CANDIDATES).any(|n| filename::candidate(w, n) == stem)
        }) {
            continue;
        }
        // Without its part file a control file holds nothing to go on from (and `NAME.sdm` may be another program's).
        let part = format!("{stem}{}", filename::PART_SUFFIX);
        if !folder.is_taken(OsStr::new(&part)).unwrap_or(false) {
            continue;
        }
        let Some(mut plan) = read(&folder, &name, url) else {
            continue;
        };
        plan.path = dir.join(stem);
        if !fits(&plan, &folder, stem) {
            debug!(control = %folder.join(&name).display(), "a control file that does not fit; left alone");
            continue;
        }
        // Claimed by whoever deletes it first.
        if folder.remove(&name).is_ok() {
            return Some(plan);
        }
    }
    None
}

/// The plan in control file `name`, when it is one of ours for `url`.
fn read(folder: &Dir, name: &OsStr, url: &str) -> Option<Plan> {
    let file = folder.open_existing(name).ok()?;
    let mut text = Vec::new();
    file.take(MAX_CONTROL + 1).read_to_end(&mut text).ok()?;
    if text.len() as u64 > MAX_CONTROL {
        return None;
    }
    match serde_json::from_slice::<Control>(&text) {
        Ok(c) if c.sdm_get == VERSION && c.url == url => Some(c.plan),
        Ok(_) => None,
        Err(e) => {
            debug!(control = %folder.join(name).display(), cause = %e, "not a control file of ours; left alone");
            None
        }
    }
}

/// Whether `plan` can go on in `folder` under `stem`: its final name is free, its segments lie inside the file, and
/// the name is one a download could have (the name sanitizing leaves as it is).
fn fits(plan: &Plan, folder: &Dir, stem: &str) -> bool {
    let Some(total) = plan.total.filter(|_| resumable(plan)) else {
        return false;
    };
    let inside = |s: &Segment| s.start <= s.pos && s.pos <= s.end && s.end <= total;
    filename::sanitize(stem) == stem
        && plan.segments.iter().all(inside)
        && folder
            .is_taken(&OsString::from(stem))
            .is_ok_and(|taken| !taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:9/f.bin";

    fn plan(path: &Path, segments: Vec<Segment>) -> Plan {
        Plan {
            final_url: URL.into(),
            total: Some(100),
            ranges: true,
            etag: None,
            last_modified: None,
            path: path.to_path_buf(),
            segments,
            restarts: 0,
        }
    }

    /// Keep `plan` as an interrupted run would: its part file, then its control file.
    fn kept(plan: &Plan) {
        std::fs::write(filename::part_path(&plan.path), b"").unwrap();
        keep(URL, plan).unwrap();
    }

    fn half() -> Vec<Segment> {
        let mut s = Segment::new(0, 100);
        s.pos = 50;
        vec![s]
    }

    #[test]
    fn a_kept_plan_is_claimed_once_by_the_same_url_and_name() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dest::Dir {
            dir: tmp.path().to_path_buf(),
            name: None,
        };
        kept(&plan(&tmp.path().join("f.bin"), half()));
        assert_eq!(claim("http://127.0.0.1:9/other.bin", &dir), None);
        assert_eq!(claim(URL, &Dest::File(tmp.path().join("g.bin"))), None);
        let got = claim(URL, &Dest::File(tmp.path().join("f.bin"))).expect("claimed");
        assert_eq!(got.path, tmp.path().join("f.bin"));
        assert_eq!(got.downloaded(), 50);
        assert_eq!(claim(URL, &dir), None, "claimed twice");
        assert!(!control_path(&got.path).exists());

        // "f (1).bin" is a name `-o f.bin` may have got.
        kept(&plan(&tmp.path().join("f (1).bin"), half()));
        assert!(claim(URL, &Dest::File(tmp.path().join("f.bin"))).is_some());
    }

    #[test]
    fn a_plan_that_does_not_fit_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dest::Dir {
            dir: tmp.path().to_path_buf(),
            name: None,
        };
        let mut outside = Segment::new(0, 200);
        outside.pos = 10;
        for (name, segments) in [("a.bin", vec![outside]), ("b.bin", vec![])] {
            kept(&plan(&tmp.path().join(name), segments));
        }
        // The final name is taken: a finished file is there.
        kept(&plan(&tmp.path().join("c.bin"), half()));
        std::fs::write(tmp.path().join("c.bin"), b"done").unwrap();
        // A name sanitizing would change.
        kept(&plan(&tmp.path().join(".hidden"), half()));
        // No part file: nothing to go on from.
        keep(URL, &plan(&tmp.path().join("d.bin"), half())).unwrap();
        assert_eq!(claim(URL, &dir), None);
        for name in [
            "a.bin.sdm",
            "b.bin.sdm",
            "c.bin.sdm",
            ".hidden.sdm",
            "d.bin.sdm",
        ] {
            assert!(tmp.path().join(name).exists(), "{name} was taken");
        }
    }
}
