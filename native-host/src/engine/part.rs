//! The `.part` file beside a download's final path: reserved, opened and sized before the first byte, then synced,
//! checked and placed at the final path once the last byte is written.
//!
//! Nothing is ever at a final path unless it is complete and exact: data goes into the part file with positional
//! writes, and the finished file is hard-linked to its final name, which fails rather than replaces an existing file.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::TransferError;
use super::filename;

/// A new, empty part file at `part`, replacing any there.
pub fn create(part: &Path) -> Result<File, TransferError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(part)
        .map_err(|e| TransferError::io(part, e))
}

/// The part file a saved plan wrote into; `None` when it is gone.
pub fn reopen(part: &Path) -> Result<Option<File>, TransferError> {
    match OpenOptions::new().read(true).write(true).open(part) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
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

/// A final path for `name` in `dir` that is not taken, with its part file created at once so that no other download
/// takes it meanwhile.
pub fn reserve(dir: &Path, name: &str) -> Result<PathBuf, TransferError> {
    std::fs::create_dir_all(dir).map_err(|e| TransferError::io(dir, e))?;
    loop {
        let path = filename::unique_path(dir, name);
        let part = filename::part_path(&path);
        match OpenOptions::new().write(true).create_new(true).open(&part) {
            Ok(_) => return Ok(path),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(TransferError::io(&part, e)),
        }
    }
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
    if let Some(t) = total {
        file.set_len(t).map_err(|e| TransferError::io(&part, e))?;
    }
    file.sync_data().map_err(|e| TransferError::io(&part, e))?;
    if let Some(expected) = sha256 {
        let actual = sha256_file(&part).map_err(|e| TransferError::io(&part, e))?;
        if !actual.eq_ignore_ascii_case(&expected) {
            let _ = std::fs::remove_file(&part);
            return Err(TransferError::Checksum { expected, actual });
        }
    }
    place(&part, path)
}

/// Move `part` to `path`, or to the next free name if something appeared there meanwhile. A hard link refuses to
/// replace an existing file, which a rename would do silently.
fn place(part: &Path, path: &Path) -> Result<PathBuf, TransferError> {
    let mut target = path.to_path_buf();
    loop {
        match std::fs::hard_link(part, &target) {
            Ok(()) => {
                std::fs::remove_file(part).map_err(|e| TransferError::io(part, e))?;
                break;
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let dir = target.parent().unwrap_or(Path::new(".")).to_path_buf();
                let name = target
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                target = filename::unique_path(&dir, &name);
            }
            Err(_) if !target.exists() => {
                // File systems without hard links: a rename, checked just before.
                std::fs::rename(part, &target).map_err(|e| TransferError::io(&target, e))?;
                break;
            }
            Err(e) => return Err(TransferError::io(&target, e)),
        }
    }
    if let Some(dir) = target.parent().and_then(|d| File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(target)
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
