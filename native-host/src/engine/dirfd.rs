//! Files inside one folder that no link planted in the folder can redirect: the folder is opened once, and every name
//! is one component resolved relative to it, never through a symbolic link.
//!
//! This is what keeps a download's `.part` file, its final file, and SDM's own log and lock files where they belong
//! even when someone else can write to the folder (a shared download folder, a dangling link left behind): a file is
//! created only where nothing is (a dangling link counts as something), an existing one is opened only when it is a
//! regular file of the user's own, and a finished file is moved to its name only when that name is free.
//!
//! The API ([`Dir`], [`Access`], [`Open`], [`is_link_refusal`]) is platform-neutral. On Unix names are resolved
//! relative to the open folder (`openat(O_NOFOLLOW)`, `renameat2(RENAME_NOREPLACE)` (`renameatx_np(RENAME_EXCL)` on
//! macOS), `linkat`, `fstatat(AT_SYMLINK_NOFOLLOW)` through rustix). On Windows they are resolved by path under the
//! folder, which stays open: a link is opened as itself (`FILE_FLAG_OPEN_REPARSE_POINT`) and refused, a file is
//! created only where nothing is (`CREATE_NEW`), and a finished file is moved by `MoveFileExW` without
//! `MOVEFILE_REPLACE_EXISTING`; owners are left to the folder's ACL.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::path::{Path, PathBuf};

/// Who may read a file SDM creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Like the user's other files (0666 less the umask): downloads.
    Shared,
    /// The owner only (0600): SDM's own logs and lock.
    Private,
}

/// How [`Dir::open_or_create`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// Read and write at any offset.
    ReadWrite,
    /// Every write goes to the end.
    Append,
}

/// Why a name was not opened: it is a symbolic link, which is never followed.
#[derive(Debug, thiserror::Error)]
#[error("{name:?} is a symbolic link; SDM does not follow links there")]
struct LinkRefused {
    name: String,
}

/// Whether `e` is a [`Dir`] method refusing to go through a symbolic link.
pub fn is_link_refusal(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<LinkRefused>())
}

/// An open folder; names given to its methods are single components inside it, never a path.
#[derive(Debug)]
pub struct Dir {
    file: File,
    path: PathBuf,
}

impl Dir {
    /// The path the folder was opened by (for messages and for paths handed back to callers).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path/name`.
    pub fn join(&self, name: impl AsRef<OsStr>) -> PathBuf {
        self.path.join(name.as_ref())
    }

    /// The folder's own metadata (owner, permissions), read from the open folder, not by path again.
    pub fn metadata(&self) -> io::Result<Metadata> {
        self.file.metadata()
    }

    /// Make the folder's entries durable (after a create, rename or removal).
    #[cfg(unix)]
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    /// Nothing to do on Windows: NTFS journals a folder's entries itself, and a folder cannot be flushed.
    #[cfg(windows)]
    pub fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A name that is one component: not empty, not `.` or `..`, no separator.
fn component(name: &OsStr) -> io::Result<&OsStr> {
    let bytes = name.as_encoded_bytes();
    let separator = bytes
        .iter()
        .any(|&b| b == b'/' || (cfg!(windows) && b == b'\\'));
    if bytes.is_empty() || bytes == b"." || bytes == b".." || separator {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a file name"),
        ));
    }
    Ok(name)
}

#[cfg(unix)]
mod unix {
    use std::ffi::OsStr;
    use std::fs::File;
    use std::io;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
    use rustix::io::Errno;

    use super::{Access, Dir, LinkRefused, Open, component};

    impl Dir {
        /// Open the folder at `path` (a link in `path` itself is followed: the user may keep downloads behind one).
        pub fn open(path: &Path) -> io::Result<Dir> {
            let fd = rustix::fs::open(
                path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            Ok(Dir {
                file: File::from(fd),
                path: path.to_path_buf(),
            })
        }

        /// Create `name`, open for reading and writing; `AlreadyExists` when anything is there, a link (dangling or
        /// not) included.
        pub fn create_new(&self, name: &OsStr, access: Access) -> io::Result<File> {
            let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
            self.open_at(name, flags, access)
        }

        /// Open the existing file `name` for reading and writing: `NotFound` when nothing is there, a refusal
        /// ([`super::is_link_refusal`]) for a link, an error for anything but a regular file of the user's own.
        pub fn open_existing(&self, name: &OsStr) -> io::Result<File> {
            self.open_at(name, OFlags::RDWR | OFlags::NOFOLLOW, Access::Private)
        }

        /// Open `name`, creating it when nothing is there; never truncated, a link is refused, and what exists must
        /// be a regular file of the user's own.
        pub fn open_or_create(&self, name: &OsStr, open: Open, access: Access) -> io::Result<File> {
            let mut flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW;
            if open == Open::Append {
                flags |= OFlags::APPEND;
            }
            self.open_at(name, flags, access)
        }

        /// Whether anything is at `name`; a link counts, whether or not it leads anywhere.
        pub fn is_taken(&self, name: &OsStr) -> io::Result<bool> {
            match rustix::fs::statat(&self.file, component(name)?, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(_) => Ok(true),
                Err(Errno::NOENT) => Ok(false),
                Err(e) => Err(e.into()),
            }
        }

        /// Whether `name` is `file` itself (not a link to it, nor another file put in its place).
        pub fn holds(&self, name: &OsStr, file: &File) -> io::Result<bool> {
            let at =
                match rustix::fs::statat(&self.file, component(name)?, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(at) => at,
                    Err(Errno::NOENT) => return Ok(false),
                    Err(e) => return Err(e.into()),
                };
            let open = rustix::fs::fstat(file)?;
            Ok(at.st_dev == open.st_dev && at.st_ino == open.st_ino)
        }

        /// Move `from` to `to` in this folder, failing with `AlreadyExists` rather than replacing anything at `to`.
        /// `renameat2(RENAME_NOREPLACE)`; where the file system refuses that flag, a hard link then the removal of
        /// `from`, which is just as safe. Never a check followed by a plain rename.
        pub fn rename_no_replace(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
            let (from, to) = (component(from)?, component(to)?);
            match rustix::fs::renameat_with(
                &self.file,
                from,
                &self.file,
                to,
                RenameFlags::NOREPLACE,
            ) {
                Ok(()) => Ok(()),
                // The flag is unknown to the file system (EINVAL), the kernel (ENOSYS) or a sandbox's filter.
                Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP | Errno::PERM) => {
                    self.link_then_unlink(from, to)
                }
                Err(e) => Err(e.into()),
            }
        }

        /// The fallback of [`Dir::rename_no_replace`]: a hard link fails on an existing name, like the flag.
        pub(super) fn link_then_unlink(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
            match rustix::fs::linkat(&self.file, from, &self.file, to, AtFlags::empty()) {
                Ok(()) => {}
                Err(Errno::EXIST) => return Err(Errno::EXIST.into()),
                Err(e) => {
                    return Err(io::Error::new(
                        io::Error::from(e).kind(),
                        format!(
                            "the file system of {} refuses both a rename that cannot replace a file and a hard \
                             link ({e})",
                            self.path.display()
                        ),
                    ));
                }
            }
            // The file is at `to` now; a `from` left behind is a second name for it, not a failure to place it.
            if let Err(e) = rustix::fs::unlinkat(&self.file, from, AtFlags::empty()) {
                tracing::warn!(
                    dir = %self.path.display(),
                    name = ?from,
                    cause = %e,
                    "placed by a hard link, but the old name could not be removed"
                );
            }
            Ok(())
        }

        /// Remove `name` (a link is removed, not what it points to).
        pub fn remove(&self, name: &OsStr) -> io::Result<()> {
            rustix::fs::unlinkat(&self.file, component(name)?, AtFlags::empty())?;
            Ok(())
        }

        fn open_at(&self, name: &OsStr, flags: OFlags, access: Access) -> io::Result<File> {
            let mode = match access {
                Access::Shared => Mode::from_raw_mode(0o666),
                Access::Private => Mode::from_raw_mode(0o600),
            };
            // O_RDWR, never O_WRONLY: a FIFO put at the name would block an open for writing only.
            let fd = match rustix::fs::openat(
                &self.file,
                component(name)?,
                flags | OFlags::CLOEXEC,
                mode,
            ) {
                Ok(fd) => fd,
                Err(Errno::LOOP) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        LinkRefused {
                            name: name.to_string_lossy().into_owned(),
                        },
                    ));
                }
                Err(e) => return Err(e.into()),
            };
            let file = File::from(fd);
            let meta = file.metadata()?;
            if !meta.is_file() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name:?} is not a regular file"),
                ));
            }
            let me = crate::paths::effective_uid();
            if meta.uid() != me {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{name:?} belongs to uid {}, not to you (uid {me})",
                        meta.uid()
                    ),
                ));
            }
            Ok(file)
        }
    }
}

#[cfg(windows)]
mod windows {
    use std::ffi::OsStr;
    use std::fs::{File, OpenOptions};
    use std::io;
    use std::os::windows::ffi::OsStrExt;
    use std::os::windows::fs::OpenOptionsExt;
    use std::os::windows::io::AsRawHandle;
    use std::path::Path;

    use windows_sys::Win32::Storage::FileSystem::{
        BY_HANDLE_FILE_INFORMATION, FILE_FLAG_BACKUP_SEMANTICS, FILE_FLAG_OPEN_REPARSE_POINT,
        GetFileInformationByHandle, MOVEFILE_WRITE_THROUGH, MoveFileExW,
    };

    use super::{Access, Dir, LinkRefused, Open, component};

    impl Dir {
        /// Open the folder at `path` (a link in `path` itself is followed: the user may keep downloads behind one).
        pub fn open(path: &Path) -> io::Result<Dir> {
            // A folder opens only with backup semantics.
            let file = OpenOptions::new()
                .read(true)
                .custom_flags(FILE_FLAG_BACKUP_SEMANTICS)
                .open(path)?;
            let dir = Dir {
                file,
                path: path.to_path_buf(),
            };
            if !dir.metadata()?.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is not a folder", dir.path().display()),
                ));
            }
            Ok(dir)
        }

        /// Create `name`, open for reading and writing; `AlreadyExists` when anything is there, a link (dangling or
        /// not) included. Who may read it is the folder's ACL, inherited.
        pub fn create_new(&self, name: &OsStr, _access: Access) -> io::Result<File> {
            self.open_at(
                name,
                OpenOptions::new().read(true).write(true).create_new(true),
            )
        }

        /// Open the existing file `name` for reading and writing: `NotFound` when nothing is there, a refusal
        /// ([`super::is_link_refusal`]) for a link, an error for anything but a regular file.
        pub fn open_existing(&self, name: &OsStr) -> io::Result<File> {
            self.open_at(name, OpenOptions::new().read(true).write(true))
        }

        /// Open `name`, creating it when nothing is there; never truncated, a link is refused, and what exists must
        /// be a regular file.
        pub fn open_or_create(
            &self,
            name: &OsStr,
            open: Open,
            _access: Access,
        ) -> io::Result<File> {
            let mut options = OpenOptions::new();
            options.read(true).create(true);
            match open {
                Open::ReadWrite => options.write(true),
                Open::Append => options.append(true),
            };
            self.open_at(name, &mut options)
        }

        /// Whether anything is at `name`; a link counts, whether or not it leads anywhere.
        pub fn is_taken(&self, name: &OsStr) -> io::Result<bool> {
            match std::fs::symlink_metadata(self.path.join(component(name)?)) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            }
        }

        /// Whether `name` is `file` itself (not a link to it, nor another file put in its place): the same file
        /// index. Both are on this folder's volume (`name` is one component, and a reparse point there is opened as
        /// itself), so the volume serial is not compared: wine reports 0 for some handles.
        pub fn holds(&self, name: &OsStr, file: &File) -> io::Result<bool> {
            let at = match OpenOptions::new()
                .access_mode(0)
                .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT | FILE_FLAG_BACKUP_SEMANTICS)
                .open(self.path.join(component(name)?))
            {
                Ok(at) => at,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e),
            };
            Ok(identity(&at)? == identity(file)?)
        }

        /// Move `from` to `to` in this folder, failing with `AlreadyExists` rather than replacing anything at `to`:
        /// `MoveFileExW` without `MOVEFILE_REPLACE_EXISTING`, which refuses an existing name itself.
        pub fn rename_no_replace(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
            let from = wide(&self.path.join(component(from)?));
            let to = wide(&self.path.join(component(to)?));
            // SAFETY: both are NUL-terminated UTF-16 strings that live across the call; MoveFileExW keeps neither.
            #[allow(unsafe_code)]
            let moved = unsafe { MoveFileExW(from.as_ptr(), to.as_ptr(), MOVEFILE_WRITE_THROUGH) };
            if moved == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }

        /// Remove `name` (a link is removed, not what it points to).
        pub fn remove(&self, name: &OsStr) -> io::Result<()> {
            std::fs::remove_file(self.path.join(component(name)?))
        }

        fn open_at(&self, name: &OsStr, options: &mut OpenOptions) -> io::Result<File> {
            let file = options
                .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
                .open(self.path.join(component(name)?))?;
            let kind = file.metadata()?.file_type();
            if kind.is_symlink() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    LinkRefused {
                        name: name.to_string_lossy().into_owned(),
                    },
                ));
            }
            if !kind.is_file() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name:?} is not a regular file"),
                ));
            }
            Ok(file)
        }
    }

    /// A file's index on its volume: what makes it the same file under any name.
    fn identity(file: &File) -> io::Result<(u32, u32)> {
        let mut info = BY_HANDLE_FILE_INFORMATION::default();
        // SAFETY: the handle is open for as long as `file` is borrowed, and `info` is a valid place for the answer.
        #[allow(unsafe_code)]
        let ok = unsafe { GetFileInformationByHandle(file.as_raw_handle(), &mut info) };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((info.nFileIndexHigh, info.nFileIndexLow))
    }

    /// `path` as a NUL-terminated UTF-16 string.
    fn wide(path: &Path) -> Vec<u16> {
        path.as_os_str().encode_wide().chain(Some(0)).collect()
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn create_new_refuses_anything_there_a_dangling_link_included() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        symlink(tmp.path().join("nowhere"), tmp.path().join("a.part")).unwrap();
        let err = dir.create_new(os("a.part"), Access::Shared).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(!tmp.path().join("nowhere").exists());
        assert!(dir.is_taken(os("a.part")).unwrap());
        assert!(!dir.is_taken(os("b")).unwrap());
        dir.create_new(os("b"), Access::Private).unwrap();
        let mode = std::fs::metadata(tmp.path().join("b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn links_are_never_followed_nor_truncated_through() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        symlink(&victim, tmp.path().join("relay.log")).unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        for result in [
            dir.open_existing(os("relay.log")),
            dir.open_or_create(os("relay.log"), Open::Append, Access::Private),
            dir.open_or_create(os("relay.log"), Open::ReadWrite, Access::Private),
        ] {
            assert!(is_link_refusal(&result.unwrap_err()));
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        assert_eq!(
            dir.open_existing(os("missing")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn names_must_be_one_component() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        for bad in ["", ".", "..", "a/b", "../x", "/etc/passwd"] {
            let err = dir.create_new(os(bad), Access::Shared).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn rename_no_replace_never_replaces_and_its_fallback_neither() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        let mut part = dir.create_new(os("f.part"), Access::Shared).unwrap();
        part.write_all(b"data").unwrap();
        assert!(dir.holds(os("f.part"), &part).unwrap());
        std::fs::write(tmp.path().join("taken"), b"mine").unwrap();
        symlink(tmp.path().join("nowhere"), tmp.path().join("dangling")).unwrap();
        for to in ["taken", "dangling"] {
            let err = dir.rename_no_replace(os("f.part"), os(to)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{to}");
            let err = dir.link_then_unlink(os("f.part"), os(to)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{to}");
        }
        assert_eq!(std::fs::read(tmp.path().join("taken")).unwrap(), b"mine");
        assert!(!tmp.path().join("nowhere").exists());

        dir.link_then_unlink(os("f.part"), os("g")).unwrap();
        dir.rename_no_replace(os("g"), os("f")).unwrap();
        assert!(!dir.is_taken(os("f.part")).unwrap() && !dir.is_taken(os("g")).unwrap());
        assert!(dir.holds(os("f"), &part).unwrap());
        let mut text = String::new();
        File::open(tmp.path().join("f"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "data");
    }

    #[test]
    fn holds_tells_a_file_from_a_link_to_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        let file = dir.create_new(os("real"), Access::Shared).unwrap();
        symlink(tmp.path().join("real"), tmp.path().join("link")).unwrap();
        assert!(dir.holds(os("real"), &file).unwrap());
        assert!(!dir.holds(os("link"), &file).unwrap());
        assert!(!dir.holds(os("missing"), &file).unwrap());
    }
}

/// The Windows implementation, run under wine by `cargo xtask check --wine` (links need privileges Windows does not
/// give by default, so these cover files, names and identity).
#[cfg(all(test, windows))]
mod windows_tests {
    use std::io::Write;

    use super::*;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn create_new_refuses_an_existing_name_and_rename_never_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        let mut part = dir.create_new(os("f.part"), Access::Shared).unwrap();
        part.write_all(b"data").unwrap();
        let err = dir.create_new(os("f.part"), Access::Shared).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(dir.is_taken(os("f.part")).unwrap());
        assert!(!dir.is_taken(os("f")).unwrap());
        assert!(dir.holds(os("f.part"), &part).unwrap());

        std::fs::write(tmp.path().join("taken"), b"mine").unwrap();
        let err = dir
            .rename_no_replace(os("f.part"), os("taken"))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(tmp.path().join("taken")).unwrap(), b"mine");
        assert!(!dir.holds(os("taken"), &part).unwrap());

        // Moved while still open, as a finished download is.
        dir.rename_no_replace(os("f.part"), os("f")).unwrap();
        assert!(dir.holds(os("f"), &part).unwrap());
        assert!(!dir.is_taken(os("f.part")).unwrap());
        drop(part);
        assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), b"data");
        dir.remove(os("f")).unwrap();
        assert!(!dir.is_taken(os("f")).unwrap());
    }

    #[test]
    fn names_must_be_one_component_and_folders_are_not_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        for bad in ["", ".", "..", "a/b", r"a\b", r"..\x"] {
            let err = dir.create_new(os(bad), Access::Shared).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        assert!(dir.open_existing(os("sub")).is_err());
        assert_eq!(
            dir.open_existing(os("missing")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(Dir::open(&tmp.path().join("missing")).is_err());
    }

    #[test]
    fn open_or_create_never_truncates() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        let mut log = dir
            .open_or_create(os("relay.log"), Open::Append, Access::Private)
            .unwrap();
        log.write_all(b"one ").unwrap();
        drop(log);
        let mut log = dir
            .open_or_create(os("relay.log"), Open::Append, Access::Private)
            .unwrap();
        log.write_all(b"two").unwrap();
        drop(log);
        assert_eq!(
            std::fs::read(tmp.path().join("relay.log")).unwrap(),
            b"one two"
        );
    }
}
