//! `sdm status`, `sdm stop` and `sdm uninstall`: the service's life, and SDM's removal. None of them starts a
//! service.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use indicatif::HumanBytes;
use protocol::{Command, StatusResult};
use sdm::client::{self, Client};
use sdm::install::{Browser, Registration};
use sdm::{install, paths};

use super::install::{all_browsers, print_removed};
use super::print::out;

/// `sdm status` when no service runs: scripts tell "not running" from a failure by it.
pub const NOT_RUNNING: u8 = 3;

/// Commands on the service's life and SDM's installation; none starts the service.
#[derive(Subcommand)]
pub enum Lifecycle {
    /// Show whether the service runs: its version, pid, data folder and downloads (exit 3 when it does not run)
    Status,
    /// Stop the service: every download is checkpointed and goes on at the next start
    Stop,
    /// Stop the service, remove every browser's host manifest and the installed binary
    Uninstall {
        /// Also delete the data folder (queue, history, settings, logs; not the downloaded files)
        #[arg(long)]
        purge: bool,
    },
}

pub async fn run(command: Lifecycle) -> anyhow::Result<ExitCode> {
    let data_dir = paths::data_dir()?;
    match command {
        Lifecycle::Status => status(&data_dir).await,
        Lifecycle::Stop => {
            stop(&data_dir).await?;
            Ok(ExitCode::SUCCESS)
        }
        Lifecycle::Uninstall { purge } => uninstall(&data_dir, purge).await,
    }
}

async fn status(data_dir: &Path) -> anyhow::Result<ExitCode> {
    let Some(stream) = client::connect_running(data_dir).await? else {
        out(format_args!(
            "the sdm service is not running (data folder {})",
            data_dir.display()
        ))?;
        registrations()?;
        return Ok(ExitCode::from(NOT_RUNNING));
    };
    // Asked without the version handshake: status shows what runs, it replaces nothing.
    let status: StatusResult = Client::new(stream)
        .call(Command::Status)
        .await
        .map_err(super::service_error)?;
    let ours = client::version();
    let note = if status.version == ours {
        String::new()
    } else {
        format!(" (this sdm is {ours})")
    };
    out(format_args!(
        "sdm service {}{note} running, pid {}",
        status.version, status.pid
    ))?;
    out(format_args!("data folder: {}", status.data_dir))?;
    let c = status.counts;
    out(format_args!(
        "downloads: {} in all: {} downloading, {} queued, {} paused, {} completed, {} failed, {} cancelled",
        c.total(),
        c.downloading,
        c.queued,
        c.paused,
        c.completed,
        c.failed,
        c.cancelled
    ))?;
    registrations()?;
    Ok(ExitCode::SUCCESS)
}

/// Which browsers have the installed copy registered, and which name another binary.
fn registrations() -> anyhow::Result<()> {
    let env = paths::Env::current();
    let xdg_bin_home = std::env::var_os("XDG_BIN_HOME").map(PathBuf::from);
    let installed = install::bin_dir(&env, xdg_bin_home.as_deref())?.join(install::BIN_NAME);
    let mut current = Vec::new();
    for browser in Browser::ALL {
        match install::registration(browser, &installed, &env)? {
            Registration::Absent => {}
            Registration::Current => current.push(browser.name()),
            Registration::Other(what) => out(format_args!(
                "{}: the host manifest names {what}, not {}: `sdm install` fixes it",
                browser.name(),
                installed.display()
            ))?,
        }
    }
    if current.is_empty() {
        out(format_args!(
            "no browser has {} registered: `sdm install` does it",
            installed.display()
        ))
    } else {
        out(format_args!(
            "registered with: {} ({})",
            current.join(", "),
            installed.display()
        ))
    }
}

async fn stop(data_dir: &Path) -> anyhow::Result<()> {
    match client::stop_service(data_dir).await? {
        Some(pid) => out(format_args!(
            "stopped the sdm service (pid {pid}); its downloads go on at the next start"
        )),
        None => out("the sdm service is not running"),
    }
}

async fn uninstall(data_dir: &Path, purge: bool) -> anyhow::Result<ExitCode> {
    stop(data_dir).await?;
    let env = paths::Env::current();
    let removed = print_removed(&install::uninstall(&all_browsers(), &env)?)?;
    if removed == 0 {
        out("no browser had an sdm host manifest")?;
    }
    let xdg_bin_home = std::env::var_os("XDG_BIN_HOME").map(PathBuf::from);
    let bin = install::bin_dir(&env, xdg_bin_home.as_deref())?;
    match install::uninstall_binary(&bin)? {
        (path, true) => out(format_args!("removed {}", path.display()))?,
        (path, false) => out(format_args!("{} was not installed", path.display()))?,
    }
    if purge {
        purge_data(data_dir, &env)?;
    } else if data_dir.exists() {
        out(format_args!(
            "kept the data folder {} (queue, history, settings, logs): `sdm uninstall --purge` deletes it",
            data_dir.display()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Say what the data folder holds, then delete it.
fn purge_data(data_dir: &Path, env: &paths::Env) -> anyhow::Result<()> {
    if !data_dir.exists() {
        return out(format_args!("no data folder at {}", data_dir.display()));
    }
    // A data folder set by hand ($SDM_HOME) could be a folder that holds more than SDM's files.
    if data_dir.parent().is_none() || env.home.as_deref() == Some(data_dir) {
        anyhow::bail!(
            "refusing to delete {}: it is not a folder of SDM's own; remove SDM's files by hand",
            data_dir.display()
        );
    }
    out(format_args!(
        "deleting the data folder {}, which holds:",
        data_dir.display()
    ))?;
    let mut entries: Vec<_> = std::fs::read_dir(data_dir)?
        .filter_map(Result::ok)
        .map(|e| (e.file_name(), e.metadata().map(|m| m.len()).unwrap_or(0)))
        .collect();
    entries.sort();
    for (name, len) in entries {
        out(format_args!(
            "  {:<24} {}",
            name.to_string_lossy(),
            HumanBytes(len)
        ))?;
    }
    std::fs::remove_dir_all(data_dir)?;
    out("deleted; downloaded files are where they were saved, untouched")
}
