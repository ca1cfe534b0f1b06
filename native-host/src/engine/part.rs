//! The `.part` file beside a download's final path: reserved, opened and sized before the first byte, then synced,
//! checked and placed at the final path once the last byte is written.
//!
//! Nothing is ever at a final path unless it is complete and exact: data goes into the part file with positional
//! writes, and the finished file is moved to its final name by a rename that fails rather than replaces an existing
//! file.
//!
//! No link planted in the download folder redirects a byte: every step opens the folder once and works on names
//! inside it ([`dirfd::Dir`]): a part file is created only where nothing is (`O_EXCL`), reopened only when it is a
//! regular file (`O_NOFOLLOW`), and moved only when the name still holds the very file that was written. A name is
//! chosen by trying to create it, never by checking first.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tracing::warn;

use super::dirfd::{self, Access, Dir};
use super::error::TransferError;
use super::filename::{self, PART_SUFFIX};

/// Write all of `buf` at offset `at` of `file`, without a shared cursor: several connections write one part file.
#[cfg(unix)]
pub fn write_at(file: &File, buf: &[u8], at: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, at)
}

/// Write all of `buf` at offset `at` of `file`. Windows' positional write also moves the file's cursor, which no
/// writer of a part file uses.
#[cfg(windows)]
pub fn write_at(file: &File, mut buf: &[u8], mut at: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_write(buf, at) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                at += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The folder of `path`, opened, and the last component of `path`.
pub(super) fn open_parent(path: &Path) -> Result<(Dir, OsString), TransferError> {
    let name = path.file_name().ok_or_else(|| {
        TransferError::io(
            path,
            io::Error::new(ErrorKind::InvalidInput, "not a file path"),
        )
    })?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = Dir::open(parent).map_err(|e| TransferError::io(parent, e))?;
    Ok((dir, name.to_owned()))
}

/// `name.part`.
fn part_name(name: &OsStr) -> OsString {
    let mut part = name.to_owned();
    part.push(PART_SUFFIX);
    part
}

/// A new, empty part file at `part`: the one [`reserve`] made, or one written before (truncated), or a fresh one
/// when nothing is there. A link at `part` is removed, never followed.
pub fn create(part: &Path) -> Result<File, TransferError> {
    let (dir, name) = open_parent(part)?;
    let io_err = |e| TransferError::io(part, e);
    match dir.open_existing(&name) {
        Ok(file) => {
            file.set_len(0).map_err(io_err)?;
            Ok(file)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            dir.create_new(&name, Access::Shared).map_err(io_err)
        }
        Err(e) if dirfd::is_link_refusal(&e) => {
            warn!(path = %part.display(), "a link took the part file's place; removing it, not following it");
            dir.remove(&name).map_err(io_err)?;
            dir.create_new(&name, Access::Shared).map_err(io_err)
        }
        Err(e) => Err(io_err(e)),
    }
}

/// The part file a saved plan wrote into; `None` when it is gone, or when a link took its place (the link is not
/// followed: the download starts over, and [`create`] removes it).
pub fn reopen(part: &Path) -> Result<Option<File>, TransferError> {
    let (dir, name) = open_parent(part)?;
    match dir.open_existing(&name) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) if dirfd::is_link_refusal(&e) => {
            warn!(path = %part.display(), "the part file was replaced by a link; not following it");
            Ok(None)
        }
        Err(e) => Err(TransferError::io(part, e)),
    }
}

/// Give the part file the whole file's size, when it is known, so every connection writes inside it.
pub fn set_size(file: &File, part: &Path, total: Option<u64>) -> Result<(), TransferError> {
    let Some(total) = total else {
        return Ok(());
    };
    let len = file
        .metadata()
        .map_err(|e| TransferError::io(part, e))?
        .len();
    if len != total {
        file.set_len(total)
            .map_err(|e| TransferError::io(part, e))?;
    }
    Ok(())
}

/// A final path for `name` (sanitized here, whoever gave it) in `dir` that is not taken, with its part file created
/// at once so that no other download takes it meanwhile. Each candidate ([`filename::candidate`]) is tried by
/// creating its part file with `O_EXCL`: anything at that name, a dangling link included, means the next one.
pub fn reserve(dir: &Path, name: &str) -> Result<PathBuf, TransferError> {
    std::fs::create_dir_all(dir).map_err(|e| TransferError::io(dir, e))?;
    let folder = Dir::open(dir).map_err(|e| TransferError::io(dir, e))?;
    let name = filename::sanitize(name);
    for n in 0..filename::MAX_CANDIDATES {
        let candidate = OsString::from(filename::candidate(&name, n));
        let taken = folder
            .is_taken(&candidate)
            .map_err(|e| TransferError::io(&folder.join(&candidate), e))?;
        if taken {
            continue;
        }
        let part = part_name(&candidate);
        match folder.create_new(&part, Access::Shared) {
            Ok(_) => return Ok(folder.join(&candidate)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(TransferError::io(&folder.join(&part), e)),
        }
    }
    Err(TransferError::io(&folder.join(&name), no_free_name(&name)))
}

/// Every candidate for `name` is taken.
fn no_free_name(name: &str) -> io::Error {
    io::Error::new(
        ErrorKind::AlreadyExists,
        format!(
            "no free name: {name:?} and the next {} numbered names are taken (or are links)",
            filename::MAX_CANDIDATES - 1
        ),
    )
}

/// Sync `file` (the part file of `path`, `total` bytes long when known), check it against `sha256`, and move it to
/// `path` without overwriting anything; returns where it went. A file that fails its check is removed. Blocking.
pub fn finish(
    file: &File,
    path: &Path,
    total: Option<u64>,
    sha256: Option<String>,
) -> Result<PathBuf, TransferError> {
    let part = filename::part_path(path);
    let (dir, name) = open_parent(path)?;
    let part_name = part_name(&name);
    let io_err = |e| TransferError::io(&part, e);
    if let Some(t) = total {
        file.set_len(t).map_err(io_err)?;
    }
    file.sync_data().map_err(io_err)?;
    if let Some(expected) = sha256 {
        let actual = sha256_of(file).map_err(io_err)?;
        if !actual.eq_ignore_ascii_case(&expected) {
            if dir.holds(&part_name, file).unwrap_or(false) {
                let _ = dir.remove(&part_name);
            }
            return Err(TransferError::Checksum { expected, actual });
        }
    }
    // Only the file written is moved: a link or another file put at the part file's name stays where it is.
    if !dir.holds(&part_name, file).map_err(io_err)? {
        return Err(io_err(io::Error::new(
            ErrorKind::InvalidData,
            "the part file was replaced while it was being written; nothing was moved",
        )));
    }
    let placed = place(&dir, &part_name, &name)?;
    // The rename is on disk only once the folder is synced; a failure here loses nothing written.
    let _ = dir.sync();
    Ok(placed)
}

/// Move `part` to `name`, or to its next free candidate if something appeared at `name` meanwhile, never replacing
/// anything. A candidate whose part file exists belongs to another download and is skipped.
fn place(dir: &Dir, part: &OsStr, name: &OsStr) -> Result<PathBuf, TransferError> {
    let base = name.to_string_lossy().into_owned();
    for n in 0..filename::MAX_CANDIDATES {
        let target = match n {
            0 => name.to_owned(),
            _ => OsString::from(filename::candidate(&base, n)),
        };
        let target_path = dir.join(&target);
        if n > 0 {
            let reserved = dir
                .is_taken(&part_name(&target))
                .map_err(|e| TransferError::io(&target_path, e))?;
            if reserved {
                continue;
            }
        }
        match dir.rename_no_replace(part, &target) {
            Ok(()) => return Ok(target_path),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(TransferError::io(&target_path, e)),
        }
    }
    Err(TransferError::io(&dir.join(name), no_free_name(&base)))
}

/// Hex sha256 of an open file, read from its start through the open file (the path is not opened again). Moving
/// the shared offset is harmless: every write into a part file names its own offset.
fn sha256_of(file: &File) -> io::Result<String> {
    let mut reader = file;
    reader.seek(SeekFrom::Start(0))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod write_at_tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn positional_writes_land_at_their_offsets_in_any_order() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f.part");
        let mut file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        file.set_len(10).unwrap();
        write_at(&file, b"6789", 6).unwrap();
        write_at(&file, b"012345", 0).unwrap();
        write_at(&file, b"AB", 10).unwrap();
        let mut all = Vec::new();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"0123456789AB");
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn reserve_skips_links_and_gives_up_after_its_bound_with_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let nowhere = dir.join("nowhere");
        symlink(&nowhere, dir.join("f.bin.part")).unwrap();
        symlink(&nowhere, dir.join("f (1).bin")).unwrap();
        assert_eq!(reserve(dir, "f.bin").unwrap(), dir.join("f (2).bin"));
        assert!(dir.join("f (2).bin.part").is_file());

        for n in 0..filename::MAX_CANDIDATES {
            let part = format!("{}.part", filename::candidate("g.bin", n));
            symlink(&nowhere, dir.join(part)).unwrap();
        }
        let err = reserve(dir, "g.bin").unwrap_err().to_string();
        assert!(err.contains("no free name"), "{err}");
        assert!(!nowhere.exists());
    }

    #[test]
    fn a_link_at_the_part_name_is_replaced_by_a_file_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let dl = tmp.path().join("dl");
        std::fs::create_dir(&dl).unwrap();
        let part = dl.join("a.part");
        symlink(&victim, &part).unwrap();
        assert!(reopen(&part).unwrap().is_none());
        let mut file = create(&part).unwrap();
        file.write_all(b"new").unwrap();
        assert!(std::fs::symlink_metadata(&part).unwrap().is_file());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }

    #[test]
    fn finish_takes_the_next_name_and_refuses_a_swapped_part_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = reserve(dir, "a.txt").unwrap();
        let mut file = create(&filename::part_path(&path)).unwrap();
        file.write_all(b"data").unwrap();
        symlink(dir.join("elsewhere"), &path).unwrap();
        let placed = finish(&file, &path, Some(4), None).unwrap();
        assert_eq!(placed, dir.join("a (1).txt"));
        assert_eq!(std::fs::read(&placed).unwrap(), b"data");
        assert!(std::fs::symlink_metadata(&path).unwrap().is_symlink());

        let path = reserve(dir, "b.txt").unwrap();
        let part = filename::part_path(&path);
        let file = create(&part).unwrap();
        std::fs::remove_file(&part).unwrap();
        symlink(dir.join("a (1).txt"), &part).unwrap();
        let err = finish(&file, &path, None, None).unwrap_err().to_string();
        assert!(err.contains("replaced"), "{err}");
        assert!(std::fs::symlink_metadata(&path).is_err());
    }
}
