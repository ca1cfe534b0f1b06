//! `cargo xtask dist`: the release packages in `target/dist/`.
//!
//! - `sdm-<version>-chrome.zip`: the extension for the Chrome Web Store. Without the manifest's `key`: the store
//!   signs with its own key, so the store's id differs from the pinned development id; `sdm install` allows it when
//!   the build knows it (`SDM_STORE_EXTENSION_ID`).
//! - `sdm-<version>-firefox.xpi`: the extension for addons.mozilla.org, with its gecko id. `web-ext lint` must find
//!   no error in it.
//!
//! `extension/manifest.json` serves both browsers unpacked; each package keeps only what its browser reads (Chrome
//! the service worker, Firefox the background scripts and `browser_specific_settings`), and neither the `key`.
//! - `sdm-<version>-<target>.tar.gz`: the release `sdm`, the README and the licence, in `sdm-<version>-<target>/`.
//! - `SHA256SUMS`: `sha256sum -c` reads it.
//!
//! The archives are reproducible: entries in a fixed order with a fixed time, so the same build gives the same sums.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::build;
use crate::tools::{self, Installed};

/// The version of every package: the workspace's, which the extension's manifest must repeat.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The packages written, in `SHA256SUMS` order.
pub struct Dist {
    pub dir: PathBuf,
    pub chrome: PathBuf,
    pub firefox: PathBuf,
    pub binary: PathBuf,
}

/// `cargo xtask dist`: build (release `sdm`, popup, extension), package, lint the Firefox package.
pub fn run() -> Result<()> {
    let mut installed = Installed::default();
    let built = build::build(&mut installed)?;
    let target = host_target()?;
    let dist = package(
        &built.extension,
        &built.sdm,
        &target,
        &build::target_dir().join("dist"),
    )?;
    lint_firefox(&dist.firefox, &mut installed)?;
    for path in [&dist.chrome, &dist.firefox, &dist.binary] {
        println!("xtask: wrote {}", path.display());
    }
    println!(
        "xtask: checksums in {}",
        dist.dir.join("SHA256SUMS").display()
    );
    if !installed.0.is_empty() {
        println!("xtask: installed: {}", installed.0.join("; "));
    }
    Ok(())
}

/// The Rust target `sdm` was built for (the host's: `cargo build --release` without `--target`).
fn host_target() -> Result<String> {
    let info = tools::output(Command::new("rustc").arg("-vV")).context("cannot run `rustc -vV`")?;
    info.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("`rustc -vV` names no host target")
}

/// Write the packages for the unpacked extension in `extension` and the binary `sdm` into `out` (emptied first).
pub fn package(extension: &Path, sdm: &Path, target: &str, out: &Path) -> Result<Dist> {
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    std::fs::create_dir_all(out)?;
    let (chrome, firefox) = extension_packages(extension, out)?;
    let binary = out.join(format!("sdm-{VERSION}-{target}.tar.gz"));
    write_tarball(&binary, &format!("sdm-{VERSION}-{target}"), sdm)?;

    let mut sums = String::new();
    for path in [&chrome, &firefox, &binary] {
        let digest = Sha256::digest(std::fs::read(path)?);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        sums.push_str(&format!("{hex}  {name}\n"));
    }
    std::fs::write(out.join("SHA256SUMS"), sums)?;
    Ok(Dist {
        dir: out.to_path_buf(),
        chrome,
        firefox,
        binary,
    })
}

/// Write the two extension packages (the Chrome zip, the Firefox xpi) into the folder `out`, which must exist; returns
/// their paths. `cargo xtask test` loads these in the browser tests.
pub fn extension_packages(extension: &Path, out: &Path) -> Result<(PathBuf, PathBuf)> {
    let manifest_path = extension.join("manifest.json");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&manifest_path)
            .with_context(|| format!("cannot read {}", manifest_path.display()))?,
    )
    .context("the extension's manifest.json is not JSON")?;
    if manifest["version"] != VERSION {
        bail!(
            "extension/manifest.json says version {} but the workspace is {VERSION}: make them the same",
            manifest["version"]
        );
    }
    let files = extension_files(extension)?;

    let chrome = out.join(format!("sdm-{VERSION}-chrome.zip"));
    write_zip(
        &chrome,
        extension,
        &files,
        &for_store(&manifest, Store::Chrome)?,
    )?;
    let firefox = out.join(format!("sdm-{VERSION}-firefox.xpi"));
    write_zip(
        &firefox,
        extension,
        &files,
        &for_store(&manifest, Store::Firefox)?,
    )?;
    Ok((chrome, firefox))
}

#[derive(Clone, Copy)]
enum Store {
    Chrome,
    Firefox,
}

/// The manifest as a store takes it: without the development `key`, and without what the other browser reads.
fn for_store(manifest: &serde_json::Value, store: Store) -> Result<Vec<u8>> {
    let mut manifest = manifest.clone();
    let object = manifest
        .as_object_mut()
        .context("the extension's manifest.json is not an object")?;
    object.remove("key");
    let (other_keys, other_background) = match store {
        Store::Chrome => ("browser_specific_settings", "scripts"),
        Store::Firefox => ("minimum_chrome_version", "service_worker"),
    };
    object.remove(other_keys);
    if let Some(background) = object.get_mut("background").and_then(|b| b.as_object_mut()) {
        background.remove(other_background);
    }
    let mut text = serde_json::to_vec_pretty(&manifest)?;
    text.push(b'\n');
    Ok(text)
}

/// Every file under `dir`, relative, with `/` separators, sorted.
fn extension_files(dir: &Path) -> Result<Vec<String>> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(base, &path, out)?;
            } else if let Ok(rel) = path.strip_prefix(base) {
                let parts: Vec<_> = rel.iter().map(|p| p.to_string_lossy()).collect();
                out.push(parts.join("/"));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    Ok(files)
}

/// A zip of the extension's files, `manifest.json` replaced by `manifest`.
fn write_zip(path: &Path, dir: &Path, files: &[String], manifest: &[u8]) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(zip::DateTime::DEFAULT)
        .unix_permissions(0o644);
    for name in files {
        zip.start_file(name.as_str(), options)?;
        if name == "manifest.json" {
            zip.write_all(manifest)?;
        } else {
            zip.write_all(&std::fs::read(dir.join(name))?)?;
        }
    }
    zip.finish()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The binary's tarball: `<top>/sdm`, `<top>/README.md` and the licence files.
fn write_tarball(path: &Path, top: &str, sdm: &Path) -> Result<()> {
    let root = tools::root();
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::best());
    let mut tar = tar::Builder::new(gz);
    let mut add = |name: &str, bytes: &[u8], mode: u32| -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, format!("{top}/{name}"), bytes)?;
        Ok(())
    };
    let binary = std::fs::read(sdm)
        .with_context(|| format!("cannot read {}: build it first", sdm.display()))?;
    add("sdm", &binary, 0o755)?;
    add("README.md", &std::fs::read(root.join("README.md"))?, 0o644)?;
    for (name, text) in licence_files(&root)? {
        add(&name, &text, 0o644)?;
    }
    tar.into_inner()?.finish()?;
    Ok(())
}

/// The repository's `LICENSE*` files (the MIT and Apache-2.0 texts); a tarball without them is refused.
fn licence_files(root: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.starts_with("LICENSE") && path.is_file() {
            files.push((name, std::fs::read(&path)?));
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("{} has no LICENSE* file to ship", root.display());
    }
    Ok(files)
}

/// `web-ext lint` on the xpi's contents: errors fail the task; warnings are printed.
fn lint_firefox(xpi: &Path, installed: &mut Installed) -> Result<()> {
    let web_ext = tools::ensure_web_ext(installed)?;
    let unpacked = xpi.with_extension("lint");
    if unpacked.exists() {
        std::fs::remove_dir_all(&unpacked)?;
    }
    let mut archive = zip::ZipArchive::new(std::fs::File::open(xpi)?)?;
    archive.extract(&unpacked)?;
    let result = tools::run(
        Command::new(web_ext)
            .args(["lint", "--no-input", "--source-dir"])
            .arg(&unpacked),
    );
    std::fs::remove_dir_all(&unpacked)?;
    result.context("web-ext lint found errors in the Firefox package")
}

/// A file of `archive`, as text.
#[cfg(test)]
fn read_entry(archive: &Path, name: &str) -> Result<String> {
    use std::io::Read;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(archive)?)?;
    let mut text = String::new();
    zip.by_name(name)?.read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Package the real `extension/` folder (the popup's wasm is not needed to check the packaging) and a stand-in
    /// binary, then read the packages back.
    #[test]
    fn packages_hold_what_the_stores_and_users_need() {
        let root = tools::root();
        let tmp = tempfile::tempdir().unwrap();
        let sdm = tmp.path().join("sdm");
        std::fs::write(&sdm, b"\x7fELF stand-in").unwrap();
        let out = tmp.path().join("dist");
        let dist = package(
            &root.join("extension"),
            &sdm,
            "x86_64-unknown-linux-gnu",
            &out,
        )
        .unwrap();

        let chrome: serde_json::Value =
            serde_json::from_str(&read_entry(&dist.chrome, "manifest.json").unwrap()).unwrap();
        assert!(
            chrome.get("key").is_none(),
            "the store signs with its own key"
        );
        assert_eq!(chrome["manifest_version"], 3);
        assert_eq!(chrome["version"], VERSION);
        assert_eq!(chrome["background"]["service_worker"], "background.js");
        assert!(chrome["background"].get("scripts").is_none());
        assert!(chrome.get("browser_specific_settings").is_none());
        let firefox: serde_json::Value =
            serde_json::from_str(&read_entry(&dist.firefox, "manifest.json").unwrap()).unwrap();
        assert_eq!(
            firefox["browser_specific_settings"]["gecko"]["id"],
            "sdm@sdm.dev"
        );
        assert!(firefox.get("key").is_none());
        assert_eq!(
            firefox["background"]["scripts"],
            serde_json::json!(["background.js"])
        );
        assert!(firefox["background"].get("service_worker").is_none());
        // Everything else is the same in both.
        assert_eq!(chrome["permissions"], firefox["permissions"]);
        // Every other file is there as it is.
        let background = std::fs::read_to_string(root.join("extension/background.js")).unwrap();
        assert_eq!(
            read_entry(&dist.chrome, "background.js").unwrap(),
            background
        );
        let xpi = zip::ZipArchive::new(std::fs::File::open(&dist.firefox).unwrap()).unwrap();
        assert!(
            xpi.file_names()
                .any(|n| n.is_ok_and(|n| n == "icons/128.png"))
        );

        let name = format!("sdm-{VERSION}-x86_64-unknown-linux-gnu");
        assert_eq!(dist.binary, out.join(format!("{name}.tar.gz")));
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(&dist.binary).unwrap());
        let mut tar = tar::Archive::new(gz);
        let mut entries = Vec::new();
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let mode = entry.header().mode().unwrap();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            entries.push((path, mode, bytes));
        }
        assert_eq!(
            entries[0],
            (format!("{name}/sdm"), 0o755, b"\x7fELF stand-in".to_vec())
        );
        assert!(
            entries
                .iter()
                .any(|(p, ..)| *p == format!("{name}/README.md"))
        );
        assert!(
            entries
                .iter()
                .any(|(p, ..)| p.starts_with(&format!("{name}/LICENSE")))
        );

        let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
        let lines: Vec<&str> = sums.lines().collect();
        assert_eq!(lines.len(), 3);
        let chrome_sum: String = Sha256::digest(std::fs::read(&dist.chrome).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(lines[0], format!("{chrome_sum}  sdm-{VERSION}-chrome.zip"));

        // The same inputs give the same bytes.
        let again = package(
            &root.join("extension"),
            &sdm,
            "x86_64-unknown-linux-gnu",
            &tmp.path().join("again"),
        )
        .unwrap();
        assert_eq!(
            std::fs::read(&again.chrome).unwrap(),
            std::fs::read(&dist.chrome).unwrap()
        );
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("again/SHA256SUMS")).unwrap(),
            sums
        );
    }
}
