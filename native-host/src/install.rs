//! Host manifests: the JSON file that tells a browser where `sdm` is and which extension may start it.
//!
//! Chromium browsers read `allowed_origins` (`chrome-extension://<id>/`), Firefox reads `allowed_extensions` (the
//! add-on id). The file name must be `com.sdm.host.json`, and `path` must be absolute on Linux and macOS.

use std::io;
use std::path::{Path, PathBuf};

use protocol::{EXTENSION_ID, GECKO_ID, HOST_NAME};
use serde_json::json;

use crate::paths::{Env, PathError};

/// The browsers SDM registers with, per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Browser {
    Chrome,
    Chromium,
    Brave,
    Edge,
    Vivaldi,
    Firefox,
}

impl Browser {
    pub const ALL: [Browser; 6] = [
        Browser::Chrome,
        Browser::Chromium,
        Browser::Brave,
        Browser::Edge,
        Browser::Vivaldi,
        Browser::Firefox,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Browser::Chrome => "chrome",
            Browser::Chromium => "chromium",
            Browser::Brave => "brave",
            Browser::Edge => "edge",
            Browser::Vivaldi => "vivaldi",
            Browser::Firefox => "firefox",
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

    pub fn format(self) -> ManifestFormat {
        match self {
            Browser::Firefox => ManifestFormat::Firefox,
            _ => ManifestFormat::Chromium,
        }
    }

    /// The browser's own folder: when it exists, the browser has run for this user.
    fn profile_dir(self, env: &Env) -> Result<PathBuf, PathError> {
        let home = env.home.clone().ok_or(PathError::NoHome)?;
        if cfg!(target_os = "macos") {
            let support = home.join("Library/Application Support");
            return Ok(support.join(match self {
                Browser::Chrome => "Google/Chrome",
                Browser::Chromium => "Chromium",
                Browser::Brave => "BraveSoftware/Brave-Browser",
                Browser::Edge => "Microsoft Edge",
                Browser::Vivaldi => "Vivaldi",
                Browser::Firefox => "Mozilla",
            }));
        }
        // Chromium browsers follow XDG_CONFIG_HOME on Linux; Firefox keeps its own dot folder.
        let config = env.config_home()?;
        Ok(match self {
            Browser::Chrome => config.join("google-chrome"),
            Browser::Chromium => config.join("chromium"),
            Browser::Brave => config.join("BraveSoftware/Brave-Browser"),
            Browser::Edge => config.join("microsoft-edge"),
            Browser::Vivaldi => config.join("vivaldi"),
            Browser::Firefox => home.join(".mozilla"),
        })
    }

    /// The per-user folder the browser reads host manifests from.
    pub fn manifest_dir(self, env: &Env) -> Result<PathBuf, PathError> {
        let profile = self.profile_dir(env)?;
        Ok(match self {
            Browser::Firefox if cfg!(target_os = "macos") => profile.join("NativeMessagingHosts"),
            Browser::Firefox => profile.join("native-messaging-hosts"),
            _ => profile.join("NativeMessagingHosts"),
        })
    }
}

/// Which allow-list key a manifest carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    /// `allowed_origins: ["chrome-extension://<id>/"]`.
    Chromium,
    /// `allowed_extensions: ["<gecko id>"]`.
    Firefox,
}

/// The manifest's text for a host binary at `exe` (which must be absolute).
pub fn manifest(exe: &Path, format: ManifestFormat) -> serde_json::Value {
    let mut value = json!({
        "name": HOST_NAME,
        "description": "SDM download manager",
        "path": exe.to_string_lossy(),
        "type": "stdio",
    });
    match format {
        ManifestFormat::Chromium => {
            value["allowed_origins"] = json!([format!("chrome-extension://{EXTENSION_ID}/")]);
        }
        ManifestFormat::Firefox => value["allowed_extensions"] = json!([GECKO_ID]),
    }
    value
}

/// The manifest's file name, which browsers require to be the host name plus `.json`.
pub fn manifest_file_name() -> String {
    format!("{HOST_NAME}.json")
}

/// Where to install, and what to do there.
#[derive(Debug, Clone)]
pub enum Target {
    Browser(Browser),
    /// A folder given on the command line (a Chromium `--user-data-dir/NativeMessagingHosts`, say).
    Dir(PathBuf, ManifestFormat),
}

impl Target {
    pub fn label(&self) -> String {
        match self {
            Target::Browser(b) => b.name().to_string(),
            Target::Dir(..) => "dir".to_string(),
        }
    }

    fn dir_and_format(&self, env: &Env) -> Result<(PathBuf, ManifestFormat), InstallError> {
        match self {
            Target::Browser(b) => Ok((b.manifest_dir(env)?, b.format())),
            Target::Dir(dir, format) => Ok((dir.clone(), *format)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("cannot find the sdm binary's own path: {0}")]
    Exe(io::Error),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot remove {}: {source}", path.display())]
    Remove { path: PathBuf, source: io::Error },
    #[error(
        "no supported browser found for this user: pass --browser NAME (chrome, chromium, brave, edge, vivaldi, firefox) or --dir DIR"
    )]
    NoBrowser,
}

/// What install or uninstall did in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub target: String,
    pub path: PathBuf,
    /// False when uninstalling found nothing to remove.
    pub changed: bool,
}

/// The browsers that have a profile folder for this user.
pub fn detect(env: &Env) -> Vec<Browser> {
    Browser::ALL
        .into_iter()
        .filter(|b| b.profile_dir(env).is_ok_and(|d| d.is_dir()))
        .collect()
}

/// The absolute path of the running binary, as a manifest must name it.
pub fn current_exe() -> Result<PathBuf, InstallError> {
    let exe = std::env::current_exe().map_err(InstallError::Exe)?;
    Ok(exe.canonicalize().unwrap_or(exe))
}

/// Write a manifest naming `exe` into each target's folder.
pub fn install(targets: &[Target], exe: &Path, env: &Env) -> Result<Vec<Outcome>, InstallError> {
    let mut done = Vec::new();
    for target in targets {
        let (dir, format) = target.dir_and_format(env)?;
        let path = dir.join(manifest_file_name());
        let wrap = |source| InstallError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(wrap)?;
        let mut text = serde_json::to_string_pretty(&manifest(exe, format))
            .expect("a json! value always serializes");
        text.push('\n');
        // Write beside, then rename: a browser never reads half a manifest.
        let tmp = dir.join(format!(".{}.tmp", manifest_file_name()));
        std::fs::write(&tmp, text).map_err(wrap)?;
        std::fs::rename(&tmp, &path).map_err(wrap)?;
        done.push(Outcome {
            target: target.label(),
            path,
            changed: true,
        });
    }
    Ok(done)
}

/// Remove the manifest from each target's folder; a missing one is not an error.
pub fn uninstall(targets: &[Target], env: &Env) -> Result<Vec<Outcome>, InstallError> {
    let mut done = Vec::new();
    for target in targets {
        let (dir, _) = target.dir_and_format(env)?;
        let path = dir.join(manifest_file_name());
        let changed = match std::fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(source) => return Err(InstallError::Remove { path, source }),
        };
        done.push(Outcome {
            target: target.label(),
            path,
            changed,
        });
    }
    Ok(done)
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
            c["allowed_origins"],
            json!(["chrome-extension://mamfelpfpaooapfmapiecgobfkfnmjnj/"])
        );
        assert!(c.get("allowed_extensions").is_none());
        let f = manifest(exe, ManifestFormat::Firefox);
        assert_eq!(f["allowed_extensions"], json!(["sdm@sdm.dev"]));
        assert!(f.get("allowed_origins").is_none());
    }

    #[test]
    fn browser_names_and_aliases() {
        assert_eq!(Browser::from_name("Chrome"), Some(Browser::Chrome));
        assert_eq!(Browser::from_name("google-chrome"), Some(Browser::Chrome));
        assert_eq!(Browser::from_name("firefox"), Some(Browser::Firefox));
        assert_eq!(Browser::from_name("netscape"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn linux_manifest_dirs_follow_the_browsers_conventions() {
        let env = Env {
            home: Some("/home/u".into()),
            xdg_config_home: Some("/cfg".into()),
            ..Env::default()
        };
        let dir = |b: Browser| b.manifest_dir(&env).unwrap();
        assert_eq!(
            dir(Browser::Chrome),
            PathBuf::from("/cfg/google-chrome/NativeMessagingHosts")
        );
        assert_eq!(
            dir(Browser::Brave),
            PathBuf::from("/cfg/BraveSoftware/Brave-Browser/NativeMessagingHosts")
        );
        assert_eq!(
            dir(Browser::Firefox),
            PathBuf::from("/home/u/.mozilla/native-messaging-hosts")
        );
    }

    #[test]
    fn install_then_uninstall_in_a_home() {
        let home = tempfile::tempdir().unwrap();
        let env = Env {
            home: Some(home.path().to_path_buf()),
            ..Env::default()
        };
        assert!(detect(&env).is_empty());
        let targets = [
            Target::Browser(Browser::Chromium),
            Target::Browser(Browser::Firefox),
        ];
        let done = install(&targets, Path::new("/x/sdm"), &env).unwrap();
        assert_eq!(done.len(), 2);
        let text = std::fs::read_to_string(&done[1].path).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["allowed_extensions"], json!(["sdm@sdm.dev"]));
        assert_eq!(detect(&env), vec![Browser::Chromium, Browser::Firefox]);
        let gone = uninstall(&targets, &env).unwrap();
        assert!(gone.iter().all(|o| o.changed && !o.path.exists()));
        let again = uninstall(&targets, &env).unwrap();
        assert!(again.iter().all(|o| !o.changed));
    }
}
