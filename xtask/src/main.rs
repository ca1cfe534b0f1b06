//! Project tasks, run as `cargo xtask <task>` (the alias is in `.cargo/config.toml`).
//!
//! # Layout
//! - [`tools`]: finding and, when missing, installing what the tasks need (wasm target, wasm-bindgen CLI, npm
//!   packages, Chromium), always saying what was installed.
//! - [`build`]: `cargo xtask build`: the release `sdm`, the popup's wasm and the unpacked extension in
//!   `target/extension/`.
//! - [`test`]: `cargo xtask test`: every Rust test, then the browser tests, with one summary.
//! - [`dist`]: `cargo xtask dist`: the release packages (store zip, Firefox xpi, binary tarball, SHA256SUMS) in
//!   `target/dist/`.
//! - [`run`]: `cargo xtask run`: build, register the host, start the service, open Chromium with the extension.
//! - [`bench`]: `cargo xtask bench`: the download benchmark.
//!
//! xtask is a developer tool that talks to a person, so it prints to stdout.
#![allow(clippy::print_stdout)]

mod bench;
mod build;
mod check;
mod dist;
mod run;
mod test;
mod tools;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <task> [options]

tasks:
  build [--extension-only]
                     release `sdm`, the popup (wasm) and the unpacked extension in target/extension/
                     (--extension-only: the popup and the extension, not `sdm`)
  test [--rust-only | --browser-only | --windows]
                     install what is missing, run `cargo test --workspace` and the browser tests
                     (--windows: the same as `check --wine`)
  check [--macos | --windows | --wine]
                     cross-target checks: clippy for aarch64-apple-darwin, a build for x86_64-pc-windows-gnu
                     (--wine: the library tests for Windows, run under wine)
  run                build, register the host, start `sdm serve`, open Chromium with the extension loaded
  bench [args]       download benchmark
  dist               release packages in target/dist/: the extension for the Chrome Web Store (zip) and
                     addons.mozilla.org (xpi), sdm with README and licence (tar.gz), SHA256SUMS
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("build") => build::run(&args[1..]).map(|_| ()),
        Some("test") => test::run(&args[1..]),
        Some("check") => check::run_check(&args[1..]),
        Some("run") => run::run(),
        Some("bench") => bench::run(&args[1..]),
        Some("dist") => dist::run(),
        // Started by the bench as the delaying link of its latency scenario.
        Some("__wire") => bench::wire::main(&args[1..]),
        Some("help" | "-h" | "--help") | None => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(anyhow::anyhow!("unknown task `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
