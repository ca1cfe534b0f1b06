//! Installing SDM for this user: the binary copied to a folder of its own, and host manifests naming that copy.
//!
//! A host manifest tells a browser where `sdm` is and which extension may start it. Chromium browsers read
//! `allowed_origins` (`chrome-extension://<id>/`), Firefox-family browsers `allowed_extensions` (the add-on id). The
//! file name must be `com.sdm.host.json`, and `path` must be absolute on Linux and macOS.
//!
//! The browser table and the writing, finding and removing of manifests in it are the `native_messaging` crate's
//! (Linux, macOS, and the Windows registry). Built around it here: the snap browsers' folders, which its table lacks;
//! `$XDG_CONFIG_HOME`, which Chromium browsers follow on Linux and its table spells as `~/.config` (a manifest in such
//! a folder is written here, in the same shape); the binary's copy; and the check that a manifest names our copy.
//!
//! Windows: the crate writes one manifest per browser family (`%LOCALAPPDATA%\NativeMessagingHosts` for the Chromium
//! browsers, `%APPDATA%\Mozilla\NativeMessagingHosts` for Firefox) and points each browser's HKCU key
//! (`Software\Google\Chrome\NativeMessagingHosts\com.sdm.host` and the like) at it; browsers find hosts through
//! those keys only. A browser counts as found when its profile folder exists, since the manifest folders there are
//! shared.
//!
//! **Invariant:** a manifest names the installed copy (`$XDG_BIN_HOME/sdm` or `~/.local/bin/sdm`;
//! `%LOCALAPPDATA%\Programs\sdm\sdm.exe` on Windows), never a build folder, so a `cargo clean` or a moved checkout
//! cannot break a browser's connection. The copy is replaced by a rename, so a relay or service running the old one
//! goes on running it.

use std::io::{self, Write};
#[cfg(unix)]
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use native_messaging::Scope;
use protocol::{EXTENSION_ID, GECKO_ID, HOST_NAME};
use serde_json::json;

use crate::paths::{Env, PathError};

/// The Chrome Web Store's id for SDM, when the build was given one (`SDM_STORE_EXTENSION_ID`): the store signs the
/// extension with its own key, so its id differs from the pinned development id.
pub const STORE_EXTENSION_ID: Option<&str> = option_env!("SDM_STORE_EXTENSION_ID");

// A store id that is not an extension id would make every manifest invalid: refuse it when building.
const _: () = assert!(
    match STORE_EXTENSION_ID {
        Some(id) => is_extension_id(id),
        None => true,
    },
    "SDM_STORE_EXTENSION_ID must be 32 letters a to p"
);

/// A Chromium extension id: 32 letters `a`..=`p`.
const fn is_extension_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    if bytes.len() != 32 {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] < b'a' || bytes[i] > b'p' {
            return false;
        }
        i += 1;
    }
    true
}

/// The `native_messaging` crate's variable naming a browser table to use instead of its own.
const TABLE_OVERRIDE: &str = "NATIVE_MESSAGING_BROWSERS_CONFIG";

/// The binary's name in the install folder.
pub const BIN_NAME: &str = if cfg!(windows) { "sdm.exe" } else { "sdm" };

/// The browsers SDM registers with, per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Browser {
    Chrome,
    Chromium,
    Brave,
    Edge,
    Vivaldi,
    Firefox,
    LibreWolf,
    /// Ubuntu's Chromium, a snap: it reads hosts inside its own folder under `~/snap`.
    SnapChromium,
    /// Ubuntu's Firefox, a snap.
    SnapFirefox,
}

impl Browser {
    pub const ALL: [Browser; 9] = [
        Browser::Chrome,
        Browser::Chromium,
        Browser::Brave,
        Browser::Edge,
        Browser::Vivaldi,
        Browser::Firefox,
        Browser::LibreWolf,
        Browser::SnapChromium,
        Browser::SnapFirefox,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Browser::Chrome => "chrome",
            Browser::Chromium => "chromium",
            Browser::Brave => "brave",
            Browser::Edge => "edge",
            Browser::Vivaldi => "vivaldi",
            Browser::Firefox => "firefox",
            Browser::LibreWolf => "librewolf",
            Browser::SnapChromium => "snap-chromium",
            Browser::SnapFirefox => "snap-firefox",
        }
    }

    pub fn from_name(name: &str) -> Option<Browser> {
        let name = name.to_ascii_lowercase();
        let alias = match name.as_str() {
            "google-chrome" => "chrome",
            "microsoft-edge" => "edge",
            "brave-browser" => "brave",
            other => other,
        };
        Browser::ALL.into_iter().find(|b| b.name() == alias)
    }

    /// The names `--browser` accepts, for messages.
    pub fn names() -> String {
        Browser::ALL.map(Browser::name).join(", ")
    }

    pub fn format(self) -> ManifestFormat {
        match self {
            Browser::Firefox | Browser::LibreWolf | Browser::SnapFirefox => ManifestFormat::Firefox,
            _ => ManifestFormat::Chromium,
        }
    }

    /// The browser's key in the `native_messaging` crate's table, which is our name for it; the snap browsers are not
    /// in the table.
    fn table_key(self) -> Option<&'static str> {
        match self {
            Browser::SnapChromium | Browser::SnapFirefox => None,
            _ => Some(self.name()),
        }
    }

    /// Where this browser reads the manifest, and whether that is the crate's own place for it.
    fn place(self, env: &Env) -> Result<Place, InstallError> {
        let home = env.home.clone().ok_or(PathError::NoHome)?;
        let Some(key) = self.table_key() else {
            let dir = match self {
                Browser::SnapChromium => {
                    home.join("snap/chromium/common/chromium/NativeMessagingHosts")
                }
                _ => home.join("snap/firefox/common/.mozilla/native-messaging-hosts"),
            };
            return Ok(Place { dir, key: None });
        };
        // The crate reads its table from this file instead when it is set, and panics when the file is not a table.
        if std::env::var_os(TABLE_OVERRIDE).is_some() {
            return Err(InstallError::TableOverride);
        }
        let file =
            native_messaging::manifest_path(key, Scope::User, HOST_NAME).map_err(|source| {
                InstallError::Table {
                    browser: self.name(),
                    source,
                }
            })?;
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        // Chromium browsers keep their profile under $XDG_CONFIG_HOME on Linux; the table assumes ~/.config.
        if cfg!(target_os = "linux")
            && self.format() == ManifestFormat::Chromium
            && let Ok(rel) = dir.strip_prefix(home.join(".config"))
        {
            let config = env.config_home()?;
            if config != home.join(".config") {
                return Ok(Place {
                    dir: config.join(rel),
                    key: None,
                });
            }
        }
        Ok(Place {
            dir,
            key: Some(key),
        })
    }

    /// The per-user folder the browser reads host manifests from.
    pub fn manifest_dir(self, env: &Env) -> Result<PathBuf, InstallError> {
        Ok(self.place(env)?.dir)
    }

    /// The browser's own folder, there once it has run: the manifest folder's parent (the profile folder of a
    /// Chromium browser, `~/.mozilla` of Firefox).
    #[cfg(not(windows))]
    fn own_dir(self, env: &Env) -> Option<PathBuf> {
        self.manifest_dir(env).ok()?.parent().map(Path::to_path_buf)
    }

    /// The browser's own folder on Windows: its profile folder (`User Data`, or Firefox's under `%APPDATA%`), since
    /// the manifest folders are shared by every browser of a family.
    #[cfg(windows)]
    fn own_dir(self, env: &Env) -> Option<PathBuf> {
        let local = || env.local_app_data.clone();
        let roaming = || std::env::var_os("APPDATA").map(PathBuf::from);
        let (base, rel) = match self {
            Browser::Chrome => (local()?, r"Google\Chrome\User Data"),
            Browser::Chromium => (local()?, r"Chromium\User Data"),
            Browser::Brave => (local()?, r"BraveSoftware\Brave-Browser\User Data"),
            Browser::Edge => (local()?, r"Microsoft\Edge\User Data"),
            Browser::Vivaldi => (local()?, r"Vivaldi\User Data"),
            Browser::Firefox => (roaming()?, r"Mozilla\Firefox"),
            Browser::LibreWolf => (roaming()?, "librewolf"),
            Browser::SnapChromium | Browser::SnapFirefox => return None,
        };
        Some(base.join(rel))
    }
}

/// A manifest folder, and the crate's key when the crate writes and removes the manifest there.
struct Place {
    dir: PathBuf,
    key: Option<&'static str>,
}

/// Which allow-list key a manifest carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    /// `allowed_origins: ["chrome-extension://<id>/", ...]`.
    Chromium,
    /// `allowed_extensions: ["<gecko id>"]`.
    Firefox,
}

/// The extensions that may start the host: the pinned development id, and the store's when the build knows it.
pub fn allowed_origins() -> Vec<String> {
    std::iter::once(EXTENSION_ID)
        .chain(STORE_EXTENSION_ID)
        .map(|id| format!("chrome-extension://{id}/"))
        .collect()
}

/// The Firefox add-ons that may start the host (one id, the same unpacked and on addons.mozilla.org).
pub fn allowed_extensions() -> Vec<String> {
    vec![GECKO_ID.to_string()]
}

const DESCRIPTION: &str = "SDM download manager";

/// The manifest's content for a host binary at `exe` (which must be absolute).
pub fn manifest(exe: &Path, format: ManifestFormat) -> serde_json::Value {
    let mut value = json!({
        "name": HOST_NAME,
        "description": DESCRIPTION,
        "path": exe.to_string_lossy(),
        "type": "stdio",
    });
    match format {
        ManifestFormat::Chromium => value["allowed_origins"] = json!(allowed_origins()),
        ManifestFormat::Firefox => value["allowed_extensions"] = json!(allowed_extensions()),
    }
    value
}

/// A Chromium extension id given on the command line (`sdm install --dir DIR --extension-id ID`), checked to be
/// one: a developer's or the browser tests' unpacked copy of the store package, whose id Chromium derives from its
/// folder since the package has no `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionId(String);

impl std::str::FromStr for ExtensionId {
    type Err = String;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        if is_extension_id(id) {
            Ok(ExtensionId(id.to_owned()))
        } else {
            Err(format!(
                "`{id}` is not a Chromium extension id (32 letters a to p, as chrome://extensions shows it)"
            ))
        }
    }
}

/// The manifest's file name, which browsers require to be the host name plus `.json`.
pub fn manifest_file_name() -> String {
    format!("{HOST_NAME}.json")
}

/// Where to install, and what to do there.
#[derive(Debug, Clone)]
pub enum Target {
    Browser(Browser),
    /// A folder given on the command line (a Chromium `--user-data-dir/NativeMessagingHosts`, say), and more
    /// extensions allowed there besides SDM's own ids (a Chromium-format manifest only).
    Dir(PathBuf, ManifestFormat, Vec<ExtensionId>),
}

impl Target {
    pub fn label(&self) -> String {
        match self {
            Target::Browser(b) => b.name().to_string(),
            Target::Dir(..) => "dir".to_string(),
        }
    }

    /// The manifest this target should hold for a host binary at `exe`.
    fn manifest(&self, exe: &Path, format: ManifestFormat) -> serde_json::Value {
        let mut value = manifest(exe, format);
        if let (Target::Dir(.., extra), ManifestFormat::Chromium) = (self, format)
            && let Some(origins) = value["allowed_origins"].as_array_mut()
        {
            origins.extend(
                extra
                    .iter()
                    .map(|id| json!(format!("chrome-extension://{}/", id.0))),
            );
        }
        value
    }

    fn place(&self, env: &Env) -> Result<(Place, ManifestFormat), InstallError> {
        match self {
            Target::Browser(b) => Ok((b.place(env)?, b.format())),
            Target::Dir(dir, format, _) => Ok((
                Place {
                    dir: dir.clone(),
                    key: None,
                },
                *format,
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("cannot find the sdm binary's own path: {0}")]
    Exe(io::Error),
    #[error("cannot find {browser}'s manifest folder: {source}")]
    Table {
        browser: &'static str,
        source: io::Error,
    },
    #[error("{TABLE_OVERRIDE} is set: unset it, sdm registers with the browsers it knows")]
    TableOverride,
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot remove {}: {source}", path.display())]
    Remove { path: PathBuf, source: io::Error },
    #[error("cannot copy {} to {}: {source}", from.display(), to.display())]
    Copy {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error(
        "no supported browser found for this user (nothing was changed): start your browser once, or pass --browser NAME ({names}) or --dir DIR",
        names = Browser::names()
    )]
    NoBrowser,
}

/// What install or uninstall did in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub target: String,
    pub path: PathBuf,
    /// False when the manifest was already as wanted (install) or absent (uninstall).
    pub changed: bool,
}

/// The browsers installed for this user: those whose own folder (the manifest folder's parent: the profile folder of
/// a Chromium browser, `~/.mozilla` of Firefox; on Windows the profile folder) exists, which it does once the browser
/// has run.
pub fn detect(env: &Env) -> Vec<Browser> {
    Browser::ALL
        .into_iter()
        .filter(|b| b.own_dir(env).is_some_and(|d| d.is_dir()))
        .collect()
}

/// Flatpak browsers found in `~/.var/app`: SDM does not register them (their sandbox cannot start a program
/// outside it), but says so.
pub fn detect_flatpaks(env: &Env) -> Vec<&'static str> {
    const APPS: [&str; 7] = [
        "org.mozilla.firefox",
        "io.gitlab.librewolf-community",
        "org.chromium.Chromium",
        "com.google.Chrome",
        "com.brave.Browser",
        "com.microsoft.Edge",
        "com.vivaldi.Vivaldi",
    ];
    let Some(home) = &env.home else {
        return Vec::new();
    };
    APPS.into_iter()
        .filter(|app| home.join(".var/app").join(app).is_dir())
        .collect()
}

/// The absolute path of the running binary.
///
/// A binary replaced on disk while it runs (by `sdm install`) reads as `<path> (deleted)`; the path itself then
/// holds its successor, which is what should be started or copied from now on.
pub fn current_exe() -> Result<PathBuf, InstallError> {
    let exe = std::env::current_exe().map_err(InstallError::Exe)?;
    if !exe.exists()
        && let Some(live) = exe
            .to_str()
            .and_then(|s| s.strip_suffix(" (deleted)"))
            .map(PathBuf::from)
            .filter(|p| p.exists())
    {
        return Ok(live);
    }
    // Windows' canonical form is a `\\?\` path, which would end up in the manifests: `current_exe` is absolute there.
    if cfg!(windows) {
        return Ok(exe);
    }
    Ok(exe.canonicalize().unwrap_or(exe))
}

/// The folder the binary is installed to: `$XDG_BIN_HOME` (when absolute), else `~/.local/bin`; on Windows
/// `%LOCALAPPDATA%\Programs\sdm`, where per-user programs go.
pub fn bin_dir(env: &Env, xdg_bin_home: Option<&Path>) -> Result<PathBuf, PathError> {
    if cfg!(windows) {
        let local = match env.local_app_data.as_deref().filter(|p| p.is_absolute()) {
            Some(dir) => dir.to_path_buf(),
            None => env
                .home
                .as_ref()
                .ok_or(PathError::NoHome)?
                .join(r"AppData\Local"),
        };
        return Ok(local.join("Programs").join("sdm"));
    }
    match xdg_bin_home.filter(|p| p.is_absolute()) {
        Some(dir) => Ok(dir.to_path_buf()),
        None => Ok(env
            .home
            .as_ref()
            .ok_or(PathError::NoHome)?
            .join(".local/bin")),
    }
}

/// Copy the binary at `exe` into `dir` as `sdm`, unless the same bytes are there already. Returns the installed
/// path and whether anything changed.
///
/// The copy is written beside, synced, made executable and renamed over the old one: a relay or service running the
/// old file keeps its inode, and a browser starting `sdm` meanwhile finds either the old file or the new, whole.
/// Windows refuses to replace a running program, but lets it be renamed: the old one is moved aside first
/// ([`replace_running`]).
pub fn install_binary(exe: &Path, dir: &Path) -> Result<(PathBuf, bool), InstallError> {
    let dest = dir.join(BIN_NAME);
    let copy_err = |source| InstallError::Copy {
        from: exe.to_path_buf(),
        to: dest.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(copy_err)?;
    #[cfg(windows)]
    remove_set_aside(dir);
    let dest = std::path::absolute(&dest).map_err(copy_err)?;
    let same_file = dest.canonicalize().ok() == exe.canonicalize().ok();
    if same_file || same_content(exe, &dest) {
        return Ok((dest, false));
    }
    let tmp = dir.join(format!(".{BIN_NAME}.{}.tmp", std::process::id()));
    let written = (|| {
        std::fs::copy(exe, &tmp)?;
        #[cfg(unix)]
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        // Opened for writing: Windows flushes only a file opened so.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&tmp)?
            .sync_all()?;
        #[cfg(windows)]
        return replace_running(&tmp, &dest);
        #[cfg(not(windows))]
        {
            std::fs::rename(&tmp, &dest)?;
            // The rename is durable once the folder is synced.
            std::fs::File::open(dir)?.sync_all()
        }
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(copy_err(e));
    }
    Ok((dest, true))
}

/// True when both files exist with the same bytes.
fn same_content(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    ma.len() == mb.len() && matches!((std::fs::read(a), std::fs::read(b)), (Ok(x), Ok(y)) if x == y)
}

/// Remove the installed binary from `dir`; a missing one is not an error. Returns its path and whether it was there.
///
/// On Windows a running copy (the one this command runs from, say) cannot be deleted: it is renamed aside, and the
/// next install removes it.
pub fn uninstall_binary(dir: &Path) -> Result<(PathBuf, bool), InstallError> {
    let path = dir.join(BIN_NAME);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok((path, true)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((path, false)),
        #[cfg(windows)]
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            match std::fs::rename(&path, set_aside_name(dir)) {
                Ok(()) => Ok((path, true)),
                Err(source) => Err(InstallError::Remove { path, source }),
            }
        }
        Err(source) => Err(InstallError::Remove { path, source }),
    }
}

/// Where a running copy is moved so that a new one can take its name (Windows).
#[cfg(windows)]
fn set_aside_name(dir: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    dir.join(format!(".{BIN_NAME}.{}-{nanos}.old", std::process::id()))
}

/// Put `new` in place of `dest`. Windows will not replace a program that runs, but renames it: when the plain
/// replacement is refused, the old copy is moved aside, the new one renamed in, and the old one deleted if it no
/// longer runs (else [`remove_set_aside`] does at the next install). NTFS needs no folder sync for the rename.
#[cfg(windows)]
fn replace_running(new: &Path, dest: &Path) -> io::Result<()> {
    match std::fs::rename(new, dest) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied && dest.exists() => {
            let dir = dest.parent().unwrap_or(Path::new("."));
            let aside = set_aside_name(dir);
            std::fs::rename(dest, &aside)?;
            if let Err(e) = std::fs::rename(new, dest) {
                // Put the old copy back, so browsers still find one.
                let _ = std::fs::rename(&aside, dest);
                return Err(e);
            }
            let _ = std::fs::remove_file(&aside);
            Ok(())
        }
        other => other,
    }
}

/// Delete the copies set aside by earlier installs once they no longer run (a running one stays, silently).
#[cfg(windows)]
fn remove_set_aside(dir: &Path) {
    let prefix = format!(".{BIN_NAME}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".old") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The manifest at `path`, when it exists and is JSON.
fn read_manifest(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Write a manifest naming `exe` into each target's folder. A manifest already as wanted is left alone.
pub fn install(targets: &[Target], exe: &Path, env: &Env) -> Result<Vec<Outcome>, InstallError> {
    let mut done = Vec::new();
    for target in targets {
        let (place, format) = target.place(env)?;
        let path = place.dir.join(manifest_file_name());
        let wanted = target.manifest(exe, format);
        // On Windows the browsers of a family share one file, so each browser's registry key is checked too.
        let changed = read_manifest(&path).as_ref() != Some(&wanted)
            || (cfg!(windows)
                && place
                    .key
                    .is_some_and(|k| registry_target(k) != Some(path.clone())));
        if changed {
            let wrap = |source| InstallError::Write {
                path: path.clone(),
                source,
            };
            match place.key {
                Some(key) => native_messaging::install(
                    HOST_NAME,
                    DESCRIPTION,
                    exe,
                    &allowed_origins(),
                    &allowed_extensions(),
                    &[key],
                    Scope::User,
                )
                .map_err(wrap)?,
                None => write_atomic(&place.dir, &wanted).map_err(wrap)?,
            }
        }
        done.push(Outcome {
            target: target.label(),
            path,
            changed,
        });
    }
    Ok(done)
}

/// The manifest file the browser `key`'s HKCU key names (Windows); `None` when there is no key.
#[cfg(windows)]
fn registry_target(key: &str) -> Option<PathBuf> {
    let reg = native_messaging::paths::winreg_key_path(key, Scope::User, HOST_NAME).ok()?;
    native_messaging::install::winreg::read_manifest_path_from_reg(Scope::User, &reg)
        .ok()
        .flatten()
}

/// Elsewhere the file is all a browser reads: no key to check.
#[cfg(not(windows))]
fn registry_target(_key: &str) -> Option<PathBuf> {
    None
}

/// Write a manifest beside, then rename: a browser never reads half of it.
fn write_atomic(dir: &Path, value: &serde_json::Value) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    text.push('\n');
    let tmp = dir.join(format!(".{}.tmp", manifest_file_name()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(manifest_file_name()))
}

/// Remove the manifest from each target's folder; a missing one is not an error.
pub fn uninstall(targets: &[Target], env: &Env) -> Result<Vec<Outcome>, InstallError> {
    let mut done = Vec::new();
    for target in targets {
        let (place, _) = target.place(env)?;
        let path = place.dir.join(manifest_file_name());
        let changed = path.exists() || place.key.is_some_and(|k| registry_target(k).is_some());
        match place.key {
            // Windows: the file is shared with another browser that stays registered; only this browser's key goes.
            #[cfg(windows)]
            Some(key) if shared_with_others(key, &path, targets) => {
                let reg = native_messaging::paths::winreg_key_path(key, Scope::User, HOST_NAME)
                    .and_then(|reg| {
                        native_messaging::install::winreg::remove_manifest_reg(Scope::User, &reg)
                            .map(|()| reg)
                    })
                    .map_err(|source| InstallError::Remove {
                        path: path.clone(),
                        source,
                    })?;
                done.push(Outcome {
                    target: target.label(),
                    path: PathBuf::from(format!(r"HKCU\{reg}")),
                    changed,
                });
                continue;
            }
            // The crate removes every place its table lists for the browser.
            Some(key) => {
                native_messaging::remove(HOST_NAME, &[key], Scope::User).map_err(|source| {
                    InstallError::Remove {
                        path: path.clone(),
                        source,
                    }
                })?
            }
            None => match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(InstallError::Remove { path, source }),
            },
        }
        done.push(Outcome {
            target: target.label(),
            path,
            changed,
        });
    }
    Ok(done)
}

/// Whether a browser other than `key` and not among `targets` has its registry key naming the manifest at `path`
/// (Windows, where the browsers of a family share one file).
#[cfg(windows)]
fn shared_with_others(key: &str, path: &Path, targets: &[Target]) -> bool {
    Browser::ALL
        .into_iter()
        .filter(|b| {
            !targets
                .iter()
                .any(|t| matches!(t, Target::Browser(x) if x == b))
        })
        .filter_map(Browser::table_key)
        .any(|other| other != key && registry_target(other).as_deref() == Some(path))
}

/// What a browser's manifest says, for `sdm status`: absent, naming `exe`, or naming something else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    Absent,
    /// A valid manifest (the crate's checks for table browsers: name, type, allow-list) naming `exe`.
    Current,
    /// A manifest naming another binary, or not valid.
    Other(String),
}

/// Check the manifest of `browser` against the binary at `exe`.
pub fn registration(browser: Browser, exe: &Path, env: &Env) -> Result<Registration, InstallError> {
    let place = browser.place(env)?;
    let path = place.dir.join(manifest_file_name());
    // On Windows a browser finds the (shared) file through its own registry key only.
    let unregistered = cfg!(windows) && place.key.is_some_and(|k| registry_target(k).is_none());
    if !path.exists() || unregistered {
        return Ok(Registration::Absent);
    }
    let Some(value) = read_manifest(&path) else {
        return Ok(Registration::Other("not JSON".into()));
    };
    if let Some(key) = place.key {
        let valid = native_messaging::verify_installed(HOST_NAME, Some(&[key]), Scope::User)
            .unwrap_or(false);
        if !valid {
            return Ok(Registration::Other("not a valid host manifest".into()));
        }
    }
    if value != manifest(exe, browser.format()) {
        let named = value["path"].as_str().unwrap_or("no path").to_string();
        return Ok(Registration::Other(named));
    }
    Ok(Registration::Current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chromium_and_firefox_manifests_differ_only_in_the_allow_list() {
        let exe = Path::new("/opt/sdm/bin/sdm");
        let c = manifest(exe, ManifestFormat::Chromium);
        assert_eq!(c["name"], "com.sdm.host");
        assert_eq!(c["path"], "/opt/sdm/bin/sdm");
        assert_eq!(c["type"], "stdio");
        assert_eq!(
            c["allowed_origins"][0],
            "chrome-extension://mamfelpfpaooapfmapiecgobfkfnmjnj/"
        );
        assert_eq!(
            c["allowed_origins"].as_array().unwrap().len(),
            1 + usize::from(STORE_EXTENSION_ID.is_some())
        );
        assert!(c.get("allowed_extensions").is_none());
        let f = manifest(exe, ManifestFormat::Firefox);
        assert_eq!(f["allowed_extensions"], json!(["sdm@sdm.dev"]));
        assert!(f.get("allowed_origins").is_none());
    }

    #[test]
    fn extension_ids_are_32_letters_a_to_p() {
        assert!(is_extension_id(EXTENSION_ID));
        assert!(!is_extension_id("mamfelpfpaooapfmapiecgobfkfnmjn"));
        assert!(!is_extension_id("mamfelpfpaooapfmapiecgobfkfnmjnz"));
    }

    #[test]
    fn a_folder_may_allow_more_extension_ids() {
        let root = tempfile::tempdir().unwrap();
        let exe = root.path().join("sdm");
        let extra: ExtensionId = "abcdefghijklmnopabcdefghijklmnop".parse().unwrap();
        let target = Target::Dir(
            root.path().join("hosts"),
            ManifestFormat::Chromium,
            vec![extra],
        );
        let done = install(std::slice::from_ref(&target), &exe, &Env::default()).unwrap();
        assert!(done[0].changed);
        let written = read_manifest(&done[0].path).unwrap();
        let mut origins = allowed_origins();
        origins.push("chrome-extension://abcdefghijklmnopabcdefghijklmnop/".into());
        assert_eq!(written["allowed_origins"], json!(origins));
        assert_eq!(written["path"], json!(exe.to_string_lossy()));
        assert!(!install(&[target], &exe, &Env::default()).unwrap()[0].changed);

        for bad in [
            "ABCDEFGHIJKLMNOPABCDEFGHIJKLMNOP",
            "abcdefghijklmnopabcdefghijklmnoq",
            "abc",
            "",
        ] {
            let err = bad.parse::<ExtensionId>().unwrap_err();
            assert!(err.contains("32 letters a to p"), "{err}");
        }
    }

    #[test]
    fn browser_names_and_aliases() {
        assert_eq!(Browser::from_name("Chrome"), Some(Browser::Chrome));
        assert_eq!(Browser::from_name("google-chrome"), Some(Browser::Chrome));
        assert_eq!(Browser::from_name("firefox"), Some(Browser::Firefox));
        assert_eq!(
            Browser::from_name("snap-firefox"),
            Some(Browser::SnapFirefox)
        );
        assert_eq!(Browser::from_name("netscape"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn snap_browsers_read_manifests_in_their_own_folders() {
        let env = Env {
            home: Some("/home/u".into()),
            xdg_config_home: Some("/cfg".into()),
            ..Env::default()
        };
        let place = |b: Browser| b.place(&env).unwrap();
        assert_eq!(
            place(Browser::SnapChromium).dir,
            PathBuf::from("/home/u/snap/chromium/common/chromium/NativeMessagingHosts")
        );
        assert_eq!(
            place(Browser::SnapFirefox).dir,
            PathBuf::from("/home/u/snap/firefox/common/.mozilla/native-messaging-hosts")
        );
        assert!(place(Browser::SnapFirefox).key.is_none());
    }

    #[cfg(unix)]
    #[test]
    fn the_binary_is_copied_once_and_replaced_by_a_rename() {
        let root = tempfile::tempdir().unwrap();
        let exe = root.path().join("built-sdm");
        std::fs::write(&exe, b"first").unwrap();
        let bin = root.path().join("bin");
        let (dest, changed) = install_binary(&exe, &bin).unwrap();
        assert!(changed);
        assert_eq!(std::fs::read(&dest).unwrap(), b"first");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(
            !install_binary(&exe, &bin).unwrap().1,
            "same bytes: no copy"
        );

        // A process holding the old file open keeps reading the old bytes after the replacement.
        let held = std::fs::File::open(&dest).unwrap();
        std::fs::write(&exe, b"second").unwrap();
        assert!(install_binary(&exe, &bin).unwrap().1);
        assert_eq!(std::fs::read(&dest).unwrap(), b"second");
        let mut old = String::new();
        io::Read::read_to_string(&mut &held, &mut old).unwrap();
        assert_eq!(old, "first");
        // Nothing is left beside it.
        assert_eq!(std::fs::read_dir(&bin).unwrap().count(), 1);

        assert_eq!(uninstall_binary(&bin).unwrap(), (dest.clone(), true));
        assert_eq!(uninstall_binary(&bin).unwrap(), (dest, false));
    }

    #[cfg(unix)]
    #[test]
    fn bin_dir_prefers_an_absolute_xdg_bin_home() {
        let env = Env {
            home: Some("/home/u".into()),
            ..Env::default()
        };
        assert_eq!(
            bin_dir(&env, None).unwrap(),
            PathBuf::from("/home/u/.local/bin")
        );
        assert_eq!(
            bin_dir(&env, Some(Path::new("rel"))).unwrap(),
            PathBuf::from("/home/u/.local/bin")
        );
        assert_eq!(
            bin_dir(&env, Some(Path::new("/opt/bin"))).unwrap(),
            PathBuf::from("/opt/bin")
        );
    }
}
