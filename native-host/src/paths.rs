//! Where SDM keeps its data, its socket and its downloads.
//!
//! Each lookup has a pure form that takes the environment as an argument (so tests need not touch the process
//! environment) and a convenience form that reads it.
//!
//! - Data directory: `$SDM_HOME` when set, else `$XDG_DATA_HOME/sdm`, else `~/.local/share/sdm`; on macOS
//!   `~/Library/Application Support/sdm`, on Windows `%LOCALAPPDATA%\sdm`. Everything the service owns lives here:
//!   the socket, the lock, the engine's state and the logs.
//! - Downloads: `$XDG_DOWNLOAD_DIR`, else the `XDG_DOWNLOAD_DIR` line of `~/.config/user-dirs.dirs` (Linux and the
//!   BSDs) or the Downloads known folder (Windows), else `~/Downloads` (`%USERPROFILE%\Downloads` on Windows).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
#[cfg(unix)]
use std::{
    fs::DirBuilder,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
};

use crate::engine::dirfd::{Access, Dir, Open};

/// The service's socket, inside the data directory.
pub const SOCKET_FILE: &str = "sdm.sock";
/// Held (with an exclusive file lock) by the one service of a data directory; holds its pid.
pub const LOCK_FILE: &str = "service.lock";
/// The detached service's stderr, when a relay or the CLI started it.
pub const SERVICE_LOG: &str = "service.log";
/// The relay's log: a browser shows nobody the relay's stderr.
pub const RELAY_LOG: &str = "relay.log";

/// A path SDM cannot do without could not be worked out.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("cannot find the home directory: set HOME or SDM_HOME")]
    NoHome,
    #[error("cannot create the data directory {}: {source}", dir.display())]
    CreateDataDir { dir: PathBuf, source: io::Error },
    #[error(
        "refusing {}: it belongs to uid {owner}, not to you (uid {me}); remove it, or set SDM_HOME to a folder of your own",
        path.display()
    )]
    ForeignOwner { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "refusing {}: anyone may write to it (mode {mode:o}); run `chmod o-w` on it, or set SDM_HOME to a folder of your own",
        path.display()
    )]
    OpenToOthers { path: PathBuf, mode: u32 },
}

/// The environment variables the lookups read, captured once.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub sdm_home: Option<PathBuf>,
    pub home: Option<PathBuf>,
    pub xdg_data_home: Option<PathBuf>,
    pub xdg_config_home: Option<PathBuf>,
    pub xdg_download_dir: Option<PathBuf>,
    /// `%LOCALAPPDATA%` (Windows only).
    pub local_app_data: Option<PathBuf>,
    /// The Downloads known folder, wherever the user moved it (Windows only).
    pub known_downloads: Option<PathBuf>,
}

impl Env {
    /// Read the process environment. Empty values count as unset, as the XDG spec says.
    pub fn current() -> Env {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Env {
            sdm_home: var("SDM_HOME"),
            // Windows: the profile folder (`%USERPROFILE%`), not a `HOME` that Git Bash or wine carry over from a
            // Unix world (`/home/u`, which Windows reads as a folder of the current drive).
            home: if cfg!(windows) {
                std::env::home_dir()
            } else {
                var("HOME").or_else(std::env::home_dir)
            },
            xdg_data_home: var("XDG_DATA_HOME"),
            xdg_config_home: var("XDG_CONFIG_HOME"),
            xdg_download_dir: var("XDG_DOWNLOAD_DIR"),
            local_app_data: var("LOCALAPPDATA"),
            known_downloads: known_downloads(),
        }
    }

    fn home(&self) -> Result<&Path, PathError> {
        self.home.as_deref().ok_or(PathError::NoHome)
    }

    /// An XDG base directory variable is only honoured when it is absolute (XDG Base Directory spec).
    fn xdg(value: &Option<PathBuf>) -> Option<&Path> {
        value.as_deref().filter(|p| p.is_absolute())
    }

    /// `$XDG_CONFIG_HOME`, else `~/.config`.
    pub fn config_home(&self) -> Result<PathBuf, PathError> {
        match Env::xdg(&self.xdg_config_home) {
            Some(dir) => Ok(dir.to_path_buf()),
            None => Ok(self.home()?.join(".config")),
        }
    }

    pub fn data_dir(&self) -> Result<PathBuf, PathError> {
        if let Some(dir) = &self.sdm_home {
            return Ok(absolute(dir));
        }
        self.platform_data_dir()
    }

    #[cfg(not(any(target_os = "macos", windows)))]
    fn platform_data_dir(&self) -> Result<PathBuf, PathError> {
        match Env::xdg(&self.xdg_data_home) {
            Some(dir) => Ok(dir.join("sdm")),
            None => Ok(self.home()?.join(".local/share/sdm")),
        }
    }

    #[cfg(target_os = "macos")]
    fn platform_data_dir(&self) -> Result<PathBuf, PathError> {
        Ok(self.home()?.join("Library/Application Support/sdm"))
    }

    #[cfg(windows)]
    fn platform_data_dir(&self) -> Result<PathBuf, PathError> {
        match self.local_app_data.as_deref().filter(|p| p.is_absolute()) {
            Some(dir) => Ok(dir.join("sdm")),
            None => Ok(self.home()?.join("AppData").join("Local").join("sdm")),
        }
    }

    pub fn default_download_dir(&self) -> Result<PathBuf, PathError> {
        if let Some(dir) = Env::xdg(&self.xdg_download_dir) {
            return Ok(dir.to_path_buf());
        }
        if let Some(dir) = self.known_downloads.as_deref().filter(|p| p.is_absolute()) {
            return Ok(dir.to_path_buf());
        }
        let home = self.home()?;
        // xdg-user-dirs is a freedesktop convention: macOS and Windows have no such file.
        let from_file = if cfg!(any(target_os = "macos", windows)) {
            None
        } else {
            self.config_home()
                .ok()
                .and_then(|config| std::fs::read_to_string(config.join("user-dirs.dirs")).ok())
                .and_then(|text| parse_user_dirs(&text, "XDG_DOWNLOAD_DIR", home))
        };
        Ok(from_file.unwrap_or_else(|| home.join("Downloads")))
    }
}

/// The Downloads known folder (`SHGetKnownFolderPath(FOLDERID_Downloads)`): where Explorer's Downloads is, also
/// after the user moved it (its Location tab), which `%USERPROFILE%\Downloads` would miss.
#[cfg(windows)]
fn known_downloads() -> Option<PathBuf> {
    use std::os::windows::ffi::OsStringExt;
    use windows_sys::Win32::System::Com::CoTaskMemFree;
    use windows_sys::Win32::UI::Shell::{
        FOLDERID_Downloads, KF_FLAG_DEFAULT, SHGetKnownFolderPath,
    };
    let mut path: *mut u16 = std::ptr::null_mut();
    // SAFETY: on return `path` is a NUL-terminated CoTaskMemAlloc'd string (also on failure, when it may be null),
    // read here and freed once.
    #[allow(unsafe_code)]
    unsafe {
        let result = SHGetKnownFolderPath(
            &FOLDERID_Downloads,
            KF_FLAG_DEFAULT as u32,
            std::ptr::null_mut(),
            &mut path,
        );
        let found = (result == 0 && !path.is_null()).then(|| {
            let len = (0..).take_while(|&i| *path.add(i) != 0).count();
            PathBuf::from(std::ffi::OsString::from_wide(std::slice::from_raw_parts(
                path, len,
            )))
        });
        CoTaskMemFree(path.cast());
        found
    }
}

/// Only Windows has known folders.
#[cfg(not(windows))]
fn known_downloads() -> Option<PathBuf> {
    None
}

/// Make a relative `$SDM_HOME` absolute, so the service started from another directory finds the same place.
fn absolute(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Read one `KEY="$HOME/..."` line of `user-dirs.dirs` (xdg-user-dirs format: only `$HOME/` or an absolute path).
pub fn parse_user_dirs(text: &str, key: &str, home: &Path) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        let line = line.trim();
        if line.starts_with('#') {
            return None;
        }
        let value = line
            .strip_prefix(key)?
            .trim_start()
            .strip_prefix('=')?
            .trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        let path = if let Some(rest) = value.strip_prefix("$HOME") {
            let rest = rest.trim_start_matches('/');
            // `XDG_DOWNLOAD_DIR="$HOME/"` means the user turned the folder off: the home directory itself.
            if rest.is_empty() {
                home.to_path_buf()
            } else {
                home.join(rest)
            }
        } else {
            PathBuf::from(value)
        };
        path.is_absolute().then_some(path)
    })
}

/// The data directory for the current environment.
pub fn data_dir() -> Result<PathBuf, PathError> {
    Env::current().data_dir()
}

/// The service's socket for the current environment: `<data dir>/sdm.sock`.
pub fn socket_path() -> Result<PathBuf, PathError> {
    Ok(data_dir()?.join(SOCKET_FILE))
}

/// The default download folder for the current environment.
pub fn default_download_dir() -> Result<PathBuf, PathError> {
    Env::current().default_download_dir()
}

/// Create the data directory if needed, readable by its owner only (it holds the socket and cookies in state), then
/// check it: a folder that belongs to another user, or that anyone may write to, is refused
/// ([`PathError::ForeignOwner`], [`PathError::OpenToOthers`]) before anything in it is opened.
///
/// An existing directory of the user's own is otherwise left as it is: `$SDM_HOME` may name a folder the user set up
/// on purpose.
#[cfg(unix)]
pub fn ensure_data_dir(dir: &Path) -> Result<(), PathError> {
    let wrap = |source| PathError::CreateDataDir {
        dir: dir.to_path_buf(),
        source,
    };
    // Created by trying to create it, not after a check that it is missing.
    let created = match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(wrap)?;
            true
        }
        Err(e) => return Err(wrap(e)),
    };
    if created {
        // The umask may have taken bits off 0700 but never adds any; set it exactly anyway.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(wrap)?;
    }
    let opened = Dir::open(dir).map_err(wrap)?;
    check_folder(&opened)
}

/// Create the data directory if needed. Windows: a folder made under `%LOCALAPPDATA%` inherits its ACL, which grants
/// the user (and SYSTEM and Administrators) only; a `%SDM_HOME%` elsewhere is taken as the user set it up.
#[cfg(windows)]
pub fn ensure_data_dir(dir: &Path) -> Result<(), PathError> {
    std::fs::create_dir_all(dir).map_err(|source| PathError::CreateDataDir {
        dir: dir.to_path_buf(),
        source,
    })
}

/// The open folder `dir` is the user's own and not writable by everyone; checked on the folder itself, so a link
/// swapped in after a check by path changes nothing.
#[cfg(unix)]
fn check_folder(dir: &Dir) -> Result<(), PathError> {
    let meta = dir.metadata().map_err(|source| PathError::CreateDataDir {
        dir: dir.path().to_path_buf(),
        source,
    })?;
    let me = effective_uid();
    if meta.uid() != me {
        return Err(PathError::ForeignOwner {
            path: dir.path().to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(PathError::OpenToOthers {
            path: dir.path().to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Open `path`, a file of the data directory, the way SDM opens its own files there: the folder is checked first
/// (owner, not writable by everyone), then the file is opened relative to it, created 0600 if missing, never through
/// a symbolic link, never truncated by the open, and only when it is a regular file of the user's own.
fn open_private(path: &Path, open: Open) -> io::Result<File> {
    let name = path.file_name().unwrap_or(OsStr::new(""));
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = Dir::open(parent)?;
    #[cfg(unix)]
    check_folder(&dir).map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
    dir.open_or_create(name, open, Access::Private)
}

/// Open the log file at `path` (`relay.log`, `service.log`) for appending, as [`open_private`] opens it; once it has
/// grown past `max_bytes`, it starts afresh (the file just opened is emptied, never a file a link leads to).
pub fn open_log(path: &Path, max_bytes: u64) -> io::Result<File> {
    let file = open_private(path, Open::Append)?;
    if file.metadata()?.len() > max_bytes {
        file.set_len(0)?;
    }
    Ok(file)
}

/// Open the service's lock file in `dir` for reading and writing, as [`open_private`] opens it (so truncating it
/// afterwards truncates that file and nothing else).
pub fn open_lock(dir: &Path) -> io::Result<File> {
    open_private(&dir.join(LOCK_FILE), Open::ReadWrite)
}

/// The effective user id of this process.
#[cfg(unix)]
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory of ours and cannot fail (POSIX: "shall always be
    // successful").
    #[allow(unsafe_code)]
    unsafe {
        libc::geteuid()
    }
}

/// Refuse a path owned by another user. Whoever owns the socket or the data directory could read every request
/// (cookies included) or answer in the service's name, so a client talks only to a service of its own user.
///
/// A path that does not exist is fine: it is created, and so owned, by us.
#[cfg(unix)]
pub fn check_owner(path: &Path) -> Result<(), PathError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let me = effective_uid();
    if meta.uid() == me {
        return Ok(());
    }
    Err(PathError::ForeignOwner {
        path: path.to_path_buf(),
        owner: meta.uid(),
        me,
    })
}

/// Refuse a path owned by another user: a no-op on Windows, where the data directory's inherited ACL and the named
/// pipe's DACL (its creator's user only; [`crate::ipc`]) keep other users out.
#[cfg(windows)]
pub fn check_owner(_path: &Path) -> Result<(), PathError> {
    Ok(())
}

/// Windows' own folders, where downloads may not go (see `protocol::validate::download_dir`): the system folder and
/// the program folders as this machine's variables name them (`%SystemRoot%`, `%ProgramFiles%`,
/// `%ProgramFiles(x86)%`, `%ProgramW6432%`, `%ProgramData%`), and their usual places on `C:` besides, in case a
/// variable was changed or unset. Worked out once; the strings live as long as the process.
#[cfg(windows)]
pub fn windows_system_folders() -> protocol::validate::SystemFolders {
    const DEFAULTS: [&str; 4] = [
        r"C:\Windows",
        r"C:\Program Files",
        r"C:\Program Files (x86)",
        r"C:\ProgramData",
    ];
    const VARIABLES: [&str; 5] = [
        "SystemRoot",
        "ProgramFiles",
        "ProgramFiles(x86)",
        "ProgramW6432",
        "ProgramData",
    ];
    let mut refused: Vec<&'static str> = DEFAULTS.to_vec();
    for name in VARIABLES {
        let Some(value) = std::env::var_os(name).and_then(|v| v.into_string().ok()) else {
            continue;
        };
        let value = value.trim_end_matches('\\');
        // Only an absolute folder below a drive's root: a variable set to `C:\` must not refuse the whole drive here
        // (the root itself is refused anyway).
        let path = Path::new(value);
        if path.is_absolute()
            && path.parent().is_some()
            && !refused.iter().any(|r| r.eq_ignore_ascii_case(value))
        {
            refused.push(Box::leak(value.to_owned().into_boxed_str()));
        }
    }
    protocol::validate::SystemFolders {
        refused: Box::leak(refused.into_boxed_slice()),
        allowed: &[],
        ignore_case: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn env() -> Env {
        Env {
            home: Some("/home/u".into()),
            ..Env::default()
        }
    }

    #[cfg(not(any(target_os = "macos", windows)))]
    #[test]
    fn data_dir_prefers_sdm_home_then_xdg_then_home() {
        let mut e = env();
        assert_eq!(
            e.data_dir().unwrap(),
            PathBuf::from("/home/u/.local/share/sdm")
        );
        e.xdg_data_home = Some("relative/data".into());
        assert_eq!(
            e.data_dir().unwrap(),
            PathBuf::from("/home/u/.local/share/sdm")
        );
        e.xdg_data_home = Some("/xdg/data".into());
        assert_eq!(e.data_dir().unwrap(), PathBuf::from("/xdg/data/sdm"));
        e.sdm_home = Some("/srv/sdm".into());
        assert_eq!(e.data_dir().unwrap(), PathBuf::from("/srv/sdm"));
    }

    #[cfg(target_os = "macos")]
    #[test]
    fn data_dir_is_in_application_support_unless_sdm_home_is_set() {
        let mut e = env();
        e.xdg_data_home = Some("/xdg/data".into());
        assert_eq!(
            e.data_dir().unwrap(),
            PathBuf::from("/home/u/Library/Application Support/sdm")
        );
        e.sdm_home = Some("/srv/sdm".into());
        assert_eq!(e.data_dir().unwrap(), PathBuf::from("/srv/sdm"));
    }

    #[cfg(windows)]
    #[test]
    fn data_dir_is_in_local_app_data_unless_sdm_home_is_set() {
        let mut e = Env {
            home: Some(r"C:\Users\u".into()),
            ..Env::default()
        };
        assert_eq!(
            e.data_dir().unwrap(),
            PathBuf::from(r"C:\Users\u\AppData\Local\sdm")
        );
        e.local_app_data = Some(r"D:\Local".into());
        assert_eq!(e.data_dir().unwrap(), PathBuf::from(r"D:\Local\sdm"));
        e.sdm_home = Some(r"E:\sdm".into());
        assert_eq!(e.data_dir().unwrap(), PathBuf::from(r"E:\sdm"));
        // The download folder is the profile's, and no xdg-user-dirs file is read.
        assert_eq!(
            e.default_download_dir().unwrap(),
            PathBuf::from(r"C:\Users\u\Downloads")
        );
        // A Downloads folder the user moved (the known folder) wins.
        e.known_downloads = Some(r"D:\Moved".into());
        assert_eq!(
            e.default_download_dir().unwrap(),
            PathBuf::from(r"D:\Moved")
        );
    }

    #[cfg(windows)]
    #[test]
    fn windows_system_folders_refuse_the_system_and_program_folders() {
        let folders = windows_system_folders();
        for dir in [
            r"C:\Windows",
            r"C:\Windows\System32\drivers",
            r"C:\Program Files\App",
            r"C:\Program Files (x86)",
            r"C:\ProgramData\x",
        ] {
            let err =
                protocol::validate::download_dir(dir, Some(Path::new(r"C:\Users\u")), &folders)
                    .unwrap_err();
            assert!(err.0.contains("system folder"), "{dir}: {err}");
        }
        for dir in [r"C:\Users\u\Downloads", r"D:\Downloads", r"C:\Data"] {
            assert!(
                protocol::validate::download_dir(dir, Some(Path::new(r"C:\Users\u")), &folders)
                    .is_ok(),
                "{dir}"
            );
        }
    }

    #[test]
    fn no_home_is_a_clear_error() {
        let err = Env::default().data_dir().unwrap_err();
        assert!(err.to_string().contains("set HOME or SDM_HOME"));
    }

    #[cfg(unix)]
    #[test]
    fn user_dirs_lines_are_read_like_xdg_user_dirs_writes_them() {
        let home = Path::new("/home/u");
        let text = "# comment\nXDG_DESKTOP_DIR=\"$HOME/Desktop\"\nXDG_DOWNLOAD_DIR=\"$HOME/Téléchargements\"\n";
        assert_eq!(
            parse_user_dirs(text, "XDG_DOWNLOAD_DIR", home),
            Some(PathBuf::from("/home/u/Téléchargements"))
        );
        assert_eq!(
            parse_user_dirs("XDG_DOWNLOAD_DIR=\"/data/dl\"", "XDG_DOWNLOAD_DIR", home),
            Some(PathBuf::from("/data/dl"))
        );
        assert_eq!(
            parse_user_dirs("XDG_DOWNLOAD_DIR=\"$HOME/\"", "XDG_DOWNLOAD_DIR", home),
            Some(PathBuf::from("/home/u"))
        );
        assert_eq!(
            parse_user_dirs("XDG_DOWNLOAD_DIR=\"dl\"", "XDG_DOWNLOAD_DIR", home),
            None
        );
        assert_eq!(
            parse_user_dirs("XDG_DOWNLOAD_DIRX=\"/x\"", "XDG_DOWNLOAD_DIR", home),
            None
        );
    }

    #[cfg(not(any(target_os = "macos", windows)))]
    #[test]
    fn download_dir_falls_back_to_home_downloads() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Env {
            home: Some(dir.path().to_path_buf()),
            ..Env::default()
        };
        assert_eq!(
            e.default_download_dir().unwrap(),
            dir.path().join("Downloads")
        );
        std::fs::create_dir(dir.path().join(".config")).unwrap();
        std::fs::write(
            dir.path().join(".config/user-dirs.dirs"),
            "XDG_DOWNLOAD_DIR=\"$HOME/dl\"\n",
        )
        .unwrap();
        assert_eq!(e.default_download_dir().unwrap(), dir.path().join("dl"));
        e.xdg_download_dir = Some("/explicit".into());
        assert_eq!(
            e.default_download_dir().unwrap(),
            PathBuf::from("/explicit")
        );
    }

    #[test]
    fn our_own_files_pass_the_owner_check() {
        let dir = tempfile::tempdir().unwrap();
        check_owner(dir.path()).unwrap();
        check_owner(&dir.path().join("missing")).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_path_owned_by_another_user_is_refused() {
        // The message says what to do; `/` belongs to root, so it is foreign to anyone else (the real-socket case,
        // which needs root to chown, is in tests/tests/fault_access.rs).
        let err = PathError::ForeignOwner {
            path: "/x/sdm.sock".into(),
            owner: 65534,
            me: 1000,
        };
        assert_eq!(
            err.to_string(),
            "refusing /x/sdm.sock: it belongs to uid 65534, not to you (uid 1000); remove it, or set SDM_HOME to a folder of your own"
        );
        if effective_uid() != 0 {
            assert!(check_owner(Path::new("/")).is_err());
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_data_dir_anyone_may_write_to_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("sdm");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure_data_dir(&data).unwrap_err();
        assert!(matches!(err, PathError::OpenToOthers { .. }), "{err}");
        assert!(err.to_string().contains("chmod o-w"), "{err}");
        let err = open_lock(&data).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(!data.join(LOCK_FILE).exists());
    }

    #[cfg(unix)]
    #[test]
    fn log_and_lock_files_are_not_opened_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "x".repeat(100)).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(RELAY_LOG)).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(LOCK_FILE)).unwrap();
        assert!(open_log(&dir.path().join(RELAY_LOG), 10).is_err());
        assert!(open_lock(dir.path()).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), "x".repeat(100).as_bytes());

        // A log of our own is appended to, and emptied once too big.
        let log = dir.path().join(SERVICE_LOG);
        std::fs::write(&log, "y".repeat(100)).unwrap();
        drop(open_log(&log, 1000).unwrap());
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 100);
        drop(open_log(&log, 10).unwrap());
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        let fresh = dir.path().join("fresh.log");
        drop(open_log(&fresh, 10).unwrap());
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn a_new_data_dir_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b/sdm");
        ensure_data_dir(&data).unwrap();
        let mode = std::fs::metadata(&data).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
