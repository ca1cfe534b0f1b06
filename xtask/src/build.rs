//! `cargo xtask build`: the release `sdm`, the popup compiled to wasm, and the unpacked extension assembled in
//! `target/extension/` (load that folder in the browser).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::tools::{self, Installed, WASM_TARGET};

/// Files of `extension/` that the browser loads; everything else there (package.json) stays behind.
const EXTENSION_FILES: &[&str] = &[
    "manifest.json",
    "background.js",
    "host.js",
    "capture.js",
    "menu.js",
    "badge.js",
    "api.js",
    "policy.js",
    "popup.html",
    "popup.css",
    "popup.js",
    "icons/16.png",
    "icons/32.png",
    "icons/48.png",
    "icons/128.png",
];

/// What a build produced.
pub struct Built {
    pub sdm: PathBuf,
    pub extension: PathBuf,
    pub wasm_bytes: u64,
}

/// `cargo xtask build [--extension-only]`; the flag skips the release `sdm` (quicker when working on the popup).
pub fn run(args: &[String]) -> Result<Built> {
    let mut installed = Installed::default();
    let built = if args.iter().any(|a| a == "--extension-only") {
        build_extension(&mut installed)?
    } else {
        build(&mut installed)?
    };
    println!(
        "xtask: extension in {} (popup wasm: {} bytes); host: {}",
        built.extension.display(),
        built.wasm_bytes,
        built.sdm.display()
    );
    Ok(built)
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tools::root().join("target"))
}

pub fn build(installed: &mut Installed) -> Result<Built> {
    tools::run(tools::cargo().current_dir(tools::root()).args([
        "build",
        "--release",
        "-p",
        "sdm",
    ]))?;
    build_extension(installed)
}

/// The popup's wasm and the unpacked extension only.
pub fn build_extension(installed: &mut Installed) -> Result<Built> {
    let root = tools::root();
    let target = target_dir();
    let sdm = target.join(format!("release/sdm{}", std::env::consts::EXE_SUFFIX));

    tools::ensure_wasm_target(installed)?;
    tools::run(tools::cargo().current_dir(&root).args([
        "build",
        "-p",
        "sdm-popup",
        "--lib",
        "--target",
        WASM_TARGET,
        "--profile",
        "wasm-release",
    ]))?;
    let wasm = target.join(WASM_TARGET).join("wasm-release/sdm_popup.wasm");
    let bindgen = tools::ensure_wasm_bindgen(installed)?;

    let extension = target.join("extension");
    if extension.exists() {
        std::fs::remove_dir_all(&extension)
            .with_context(|| format!("cannot clear {}", extension.display()))?;
    }
    let pkg = extension.join("pkg");
    tools::run(
        Command::new(bindgen)
            .arg(&wasm)
            .args(["--target", "web", "--no-typescript", "--out-dir"])
            .arg(&pkg),
    )?;
    let out_wasm = pkg.join("sdm_popup_bg.wasm");
    optimize(&out_wasm);
    for file in EXTENSION_FILES {
        let from = root.join("extension").join(file);
        let to = extension.join(file);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(&from, &to).with_context(|| format!("cannot copy {}", from.display()))?;
    }
    let wasm_bytes = std::fs::metadata(&out_wasm)?.len();
    Ok(Built {
        sdm,
        extension,
        wasm_bytes,
    })
}

/// Shrink the wasm with `wasm-opt` when there is one (it also drops the name section). Optional: an old or failing wasm-opt leaves the file as it is.
fn optimize(wasm: &Path) {
    // npm's binaryen (installed for the browser tests) is new enough for rustc's wasm; Debian's is not always.
    let from_npm = tools::root().join("tests/browser/node_modules/.bin/wasm-opt");
    let Some(wasm_opt) = Some(from_npm)
        .filter(|p| p.is_file())
        .or_else(|| tools::which("wasm-opt"))
    else {
        println!("xtask: no wasm-opt (npm's `binaryen` or on PATH), skipping that size step");
        return;
    };
    let tmp = wasm.with_extension("opt.wasm");
    // No --all-features: wasm-opt takes the features from the module's target_features section, and enabling all of
    // them lets it emit encodings (compact imports) that Chromium 156 refuses to compile.
    let ok = Command::new(wasm_opt)
        .args(["-Oz", "-o"])
        .arg(&tmp)
        .arg(wasm)
        .status()
        .is_ok_and(|s| s.success());
    if ok && std::fs::rename(&tmp, wasm).is_ok() {
        println!("xtask: optimized the popup with wasm-opt");
    } else {
        let _ = std::fs::remove_file(&tmp);
        println!("xtask: wasm-opt failed; keeping the unoptimized popup");
    }
}
