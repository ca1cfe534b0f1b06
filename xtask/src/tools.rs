//! Finding the tools the tasks need, and installing the missing ones (each install is announced, and listed in
//! [`Installed`] for the final summary).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}

pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Run a command, failing with its command line if it does not exit successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// A command's stdout, or `None` if it cannot run or fails.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// An executable on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// What this run installed, for the summary.
#[derive(Default)]
pub struct Installed(pub Vec<String>);

impl Installed {
    fn note(&mut self, what: String) {
        println!("xtask: installing {what}");
        self.0.push(what);
    }
}

pub fn ensure_wasm_target(installed: &mut Installed) -> Result<()> {
    let list = output(Command::new("rustup").args(["target", "list", "--installed"]));
    match list {
        Some(list) if list.lines().any(|l| l.trim() == WASM_TARGET) => Ok(()),
        Some(_) => {
            installed.note(format!("the {WASM_TARGET} target (rustup target add)"));
            run(Command::new("rustup").args(["target", "add", WASM_TARGET]))
        }
        // Without rustup the toolchain must already have the target; the wasm build says so if not.
        None => Ok(()),
    }
}

/// The `wasm-bindgen` version in Cargo.lock: the CLI must match it exactly.
pub fn locked_wasm_bindgen_version() -> Result<String> {
    let lock =
        std::fs::read_to_string(root().join("Cargo.lock")).context("cannot read Cargo.lock")?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == r#"name = "wasm-bindgen""# {
            let version = lines.next().unwrap_or_default().trim();
            if let Some(v) = version
                .strip_prefix("version = \"")
                .and_then(|v| v.strip_suffix('"'))
            {
                return Ok(v.to_owned());
            }
        }
    }
    bail!("Cargo.lock has no wasm-bindgen package")
}

/// A `wasm-bindgen` CLI of exactly the locked version, installed with `cargo install` if missing or different.
pub fn ensure_wasm_bindgen(installed: &mut Installed) -> Result<PathBuf> {
    let want = locked_wasm_bindgen_version()?;
    let have = output(Command::new("wasm-bindgen").arg("--version"));
    if have.as_deref() == Some(&format!("wasm-bindgen {want}")) {
        return Ok(PathBuf::from("wasm-bindgen"));
    }
    installed.note(format!(
        "wasm-bindgen-cli {want} (found {}); this compiles for several minutes",
        have.as_deref().unwrap_or("none")
    ));
    // Not --locked: the registry mirror here has lagged a dependency of the CLI's lock file.
    run(cargo().args(["install", "wasm-bindgen-cli", "--version", &want]))?;
    Ok(PathBuf::from("wasm-bindgen"))
}

/// Debian's Chromium, or any Chromium-family browser on PATH.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM").map(PathBuf::from)
        && p.is_file()
    {
        return Some(p);
    }
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .find_map(|n| which(n))
}

pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).as_deref() == Some("0")
}

/// Chromium for the browser tests: installed with apt-get when missing and running as root.
pub fn ensure_chromium(installed: &mut Installed) -> Result<PathBuf> {
    if let Some(p) = find_chromium() {
        return Ok(p);
    }
    if !is_root() || which("apt-get").is_none() {
        bail!(
            "no Chromium found: install Debian's `chromium` (apt-get install chromium) or set CHROMIUM=/path/to/it"
        );
    }
    installed.note("Debian's chromium (apt-get install chromium)".into());
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "chromium"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    find_chromium().context("apt-get installed chromium but it is not on PATH")
}

/// Debian's Firefox ESR, or a Firefox on PATH.
pub fn find_firefox() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FIREFOX").map(PathBuf::from)
        && p.is_file()
    {
        return Some(p);
    }
    ["firefox-esr", "firefox"].iter().find_map(|n| which(n))
}

/// Firefox for the browser tests: Debian's `firefox-esr`, installed with apt-get when missing and running as root.
pub fn ensure_firefox(installed: &mut Installed) -> Result<PathBuf> {
    if let Some(p) = find_firefox() {
        return Ok(p);
    }
    if !is_root() || which("apt-get").is_none() {
        bail!(
            "no Firefox found: install Debian's `firefox-esr` (apt-get install firefox-esr) or set FIREFOX=/path/to/it"
        );
    }
    installed.note("Debian's firefox-esr (apt-get install firefox-esr)".into());
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "firefox-esr"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    find_firefox().context("apt-get installed firefox-esr but it is not on PATH")
}

/// The devDependencies of tests/browser/package.json that node_modules lacks.
fn missing_npm_packages(dir: &Path) -> Result<Vec<String>> {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("package.json"))
            .context("cannot read tests/browser/package.json")?,
    )
    .context("tests/browser/package.json is not JSON")?;
    let deps = manifest
        .get("devDependencies")
        .and_then(|d| d.as_object())
        .map(|d| d.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    Ok(deps
        .into_iter()
        .filter(|name| {
            !dir.join("node_modules")
                .join(name)
                .join("package.json")
                .is_file()
        })
        .collect())
}

/// The browser tests' npm packages (playwright-core, puppeteer-core, binaryen), from the committed
/// package-lock.json. Neither driver downloads a browser: the tests use Debian's.
pub fn ensure_npm_packages(installed: &mut Installed) -> Result<()> {
    let dir = root().join("tests/browser");
    let marker = dir.join("node_modules/.package-lock.json");
    let lock = dir.join("package-lock.json");
    let fresh = match (marker.metadata(), lock.metadata()) {
        (Ok(m), Ok(l)) => m.modified().ok() >= l.modified().ok(),
        _ => false,
    };
    let missing = missing_npm_packages(&dir)?;
    if fresh && missing.is_empty() {
        return Ok(());
    }
    if which("npm").is_none() {
        bail!("npm not found: the browser tests need Node.js 18+ and npm");
    }
    installed.note(if missing.is_empty() {
        "npm packages in tests/browser (npm ci: package-lock.json changed)".into()
    } else {
        format!(
            "npm packages in tests/browser (npm ci: {} missing)",
            missing.join(", ")
        )
    });
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        // Belt and braces: neither package may fetch a browser build.
        .env("PUPPETEER_SKIP_DOWNLOAD", "1")
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1"))
}

/// The web-ext version `cargo xtask dist` lints the Firefox package with.
const WEB_EXT_VERSION: &str = "10.7.0";

/// Mozilla's `web-ext` (for `lint`), installed with npm into `target/tools/web-ext` when missing: it is a release
/// tool, so it stays out of the browser tests' packages.
pub fn ensure_web_ext(installed: &mut Installed) -> Result<PathBuf> {
    let dir = crate::build::target_dir().join("tools/web-ext");
    let bin = dir.join("node_modules/.bin/web-ext");
    let have = output(Command::new(&bin).arg("--version"));
    if have.as_deref() == Some(WEB_EXT_VERSION) {
        return Ok(bin);
    }
    if which("npm").is_none() {
        bail!(
            "npm not found: `cargo xtask dist` lints the Firefox package with web-ext, which needs Node.js and npm"
        );
    }
    installed.note(format!(
        "web-ext {WEB_EXT_VERSION} (npm, into {})",
        dir.display()
    ));
    std::fs::create_dir_all(&dir)?;
    run(Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-save",
            "--prefix",
        ])
        .arg(&dir)
        .arg(format!("web-ext@{WEB_EXT_VERSION}")))?;
    Ok(bin)
}
