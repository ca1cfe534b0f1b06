//! `cargo xtask run`: build, register the host, start the service if it is not running, and open Chromium with the
//! extension loaded in a profile of its own (`target/chromium-profile`).

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::build;
use crate::tools::{self, Installed};

pub fn run() -> Result<()> {
    let mut installed = Installed::default();
    let built = build::build(&mut installed)?;
    let target = build::target_dir();
    let profile = target.join("chromium-profile");

    // The private profile first: Chromium with --user-data-dir reads hosts from <user-data-dir>/NativeMessagingHosts/
    // only. Then every browser the user has, which may be none (then `sdm install` says so and this goes on).
    tools::run(
        Command::new(&built.sdm)
            .args(["install", "--dir"])
            .arg(profile.join("NativeMessagingHosts")),
    )?;
    if let Err(e) = tools::run(Command::new(&built.sdm).arg("install")) {
        println!(
            "xtask: not registered with the user's own browsers ({e:#}); the profile below has it anyway"
        );
    }

    start_service(&built.sdm, &target)?;

    let Some(chromium) = tools::find_chromium() else {
        println!(
            "\nxtask: no Chromium found (looked for chromium, chromium-browser, google-chrome; or set CHROMIUM).\n\
             Install one (Debian: `apt-get install chromium`) or load the extension by hand:\n  \
             open chrome://extensions, turn on Developer mode, press \"Load unpacked\" and choose\n  {}\n\
             The host is registered for every browser profile, so the popup connects once it is loaded.",
            built.extension.display()
        );
        return Ok(());
    };
    println!(
        "xtask: opening {} with the extension from {}",
        chromium.display(),
        built.extension.display()
    );
    let mut cmd = Command::new(chromium);
    cmd.arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--load-extension={}", built.extension.display()))
        .args(["--no-first-run", "--no-default-browser-check"]);
    if tools::is_root() {
        // Chromium refuses to run as root with its sandbox on.
        cmd.arg("--no-sandbox");
    }
    if std::env::var_os("DISPLAY").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
        println!(
            "xtask: no DISPLAY or WAYLAND_DISPLAY: Chromium needs a desktop session to show a window"
        );
    }
    let status = cmd.status().context("cannot start Chromium")?;
    if !status.success() {
        println!(
            "xtask: Chromium exited with {status}; to load the extension by hand: chrome://extensions, Developer mode, \
             \"Load unpacked\", {}",
            built.extension.display()
        );
    }
    Ok(())
}

/// The service's socket, found the way `sdm` finds it: `$SDM_HOME`, else `$XDG_DATA_HOME/sdm`, else
/// `~/.local/share/sdm`.
fn socket_path() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = var("SDM_HOME")
        .or_else(|| var("XDG_DATA_HOME").map(|d| d.join("sdm")))
        .or_else(|| var("HOME").map(|h| h.join(".local/share/sdm")))?;
    Some(dir.join("sdm.sock"))
}

/// Start `sdm serve` in the background unless a service already answers on its socket. It runs in its own process
/// group, so it outlives this task and the browser; its log goes to `target/sdm-serve.log`.
fn start_service(sdm: &Path, target: &Path) -> Result<()> {
    if let Some(socket) = socket_path()
        && UnixStream::connect(&socket).is_ok()
    {
        println!(
            "xtask: the sdm service already answers on {}",
            socket.display()
        );
        return Ok(());
    }
    let log_path = target.join("sdm-serve.log");
    let log =
        File::create(&log_path).with_context(|| format!("cannot write {}", log_path.display()))?;
    let child = Command::new(sdm)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start `sdm serve`")?;
    println!(
        "xtask: started `sdm serve` in the background (pid {}), log in {}",
        child.id(),
        log_path.display()
    );
    Ok(())
}
