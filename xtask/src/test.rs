//! `cargo xtask test`: install what is missing (and say so), build, run `cargo test --workspace` and the browser
//! tests, then print one summary. Exits non-zero if anything failed.
//!
//! After the Linux tests, the other systems (issue 17): the Windows build's library tests and `sdm.exe` end to end
//! under wine, and the macOS type-check and clippy (`cargo xtask check --wine` and `--macos`, as their own steps).
//! `--windows` runs only the Windows steps.
//!
//! The browser tests load the extension as it ships: the store zip and the xpi of `cargo xtask dist` (the same
//! bytes, written by the same code, without the binary's tarball they do not need), in `target/test-packages/`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::tools::{self, Installed};
use crate::{build, dist};

struct Step {
    name: String,
    outcome: Result<()>,
    took: Duration,
}

fn step(steps: &mut Vec<Step>, name: &str, f: impl FnOnce() -> Result<()>) {
    println!("\nxtask: === {name} ===");
    let start = Instant::now();
    let outcome = f();
    steps.push(Step {
        name: name.to_owned(),
        outcome,
        took: start.elapsed(),
    });
}

pub fn run(args: &[String]) -> Result<()> {
    // The Windows steps alone (also part of the default run below).
    if args.iter().any(|a| a == "--windows") {
        return crate::check::test_windows();
    }
    let rust = !args.iter().any(|a| a == "--browser-only");
    let browser = !args.iter().any(|a| a == "--rust-only");
    let started = Instant::now();
    let root = tools::root();
    let mut installed = Installed::default();
    let mut steps = Vec::new();

    let mut browsers = None;
    if browser {
        step(&mut steps, "browser test tools", || {
            tools::ensure_npm_packages(&mut installed)?;
            let chromium = tools::ensure_chromium(&mut installed)?;
            let firefox = tools::ensure_firefox(&mut installed)?;
            browsers = Some((chromium, firefox));
            Ok(())
        });
    }
    let mut built = None;
    step(&mut steps, "build (sdm, popup, extension)", || {
        built = Some(build::build(&mut installed)?);
        Ok(())
    });

    if let Some(built) = &built {
        if rust {
            step(&mut steps, "cargo test --workspace", || {
                tools::run(
                    tools::cargo()
                        .current_dir(&root)
                        .args(["test", "--workspace"])
                        .env("SDM_BIN", &built.sdm),
                )
            });
        }
        if rust {
            // The benchmark itself is `cargo xtask bench`; CI runs only its smoke test, which fails only if sdm's
            // output is wrong.
            step(
                &mut steps,
                "benchmark smoke (cargo xtask bench --smoke)",
                || crate::bench::run(&["--smoke".to_owned(), "--no-build".to_owned()]),
            );
            step(
                &mut steps,
                "windows: library tests under wine (x86_64-pc-windows-gnu)",
                crate::check::test_windows_libs,
            );
            step(
                &mut steps,
                "windows: sdm.exe end to end under wine (service, relay, install)",
                crate::check::test_windows_e2e,
            );
            step(
                &mut steps,
                "macos: type-check and clippy (aarch64-apple-darwin)",
                crate::check::check_macos,
            );
        }
        let mut packages = None;
        if browser {
            step(
                &mut steps,
                "extension packages (as cargo xtask dist)",
                || {
                    let out = build::target_dir().join("test-packages");
                    if out.exists() {
                        std::fs::remove_dir_all(&out)?;
                    }
                    std::fs::create_dir_all(&out)?;
                    packages = Some(dist::extension_packages(&built.extension, &out)?);
                    Ok(())
                },
            );
        }
        if let (Some((chromium, firefox)), Some((chrome_zip, firefox_xpi))) = (&browsers, &packages)
        {
            let results = build::target_dir().join("browser-test-results.txt");
            let _ = std::fs::remove_file(&results);
            step(&mut steps, "browser tests (tests/browser)", || {
                let mut files: Vec<_> = std::fs::read_dir(root.join("tests/browser"))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.to_string_lossy().ends_with(".test.mjs"))
                    .collect();
                files.sort();
                tools::run(
                    Command::new("node")
                        // The runner's default concurrency (cores - 1 files at a time); the capture suite
                        // shares one browser per kind across its triggers.
                        .args(["--test", "--test-reporter=spec"])
                        .args(&files)
                        .current_dir(&root)
                        .env("SDM_BIN", &built.sdm)
                        .env("SDM_EXTENSION_DIR", &built.extension)
                        .env("SDM_CHROME_ZIP", chrome_zip)
                        .env("SDM_FIREFOX_XPI", firefox_xpi)
                        .env("CHROMIUM", chromium)
                        .env("FIREFOX", firefox)
                        .env("SDM_RESULTS", &results),
                )
            });
            if let Ok(text) = std::fs::read_to_string(&results) {
                println!(
                    "\nxtask: measurements from the browser tests:\n{}",
                    text.trim_end()
                );
            }
            println!("xtask: popup wasm: {} bytes", built.wasm_bytes);
        }
    }

    println!("\nxtask: ===== summary ({:.0?}) =====", started.elapsed());
    if installed.0.is_empty() {
        println!("installed: nothing (every tool was already there)");
    } else {
        println!("installed: {}", installed.0.join("; "));
    }
    let mut failed = 0;
    for s in &steps {
        match &s.outcome {
            Ok(()) => println!("  ok    {} ({:.1?})", s.name, s.took),
            Err(e) => {
                failed += 1;
                println!("  FAIL  {} ({:.1?}): {e:#}", s.name, s.took);
            }
        }
    }
    if failed > 0 {
        bail!("{failed} step(s) failed");
    }
    println!("all passed");
    Ok(())
}
