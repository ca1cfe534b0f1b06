//! The command line: clap types, and the commands that talk to the service.
//!
//! # Layout
//! - This file: [`Cli`] and its two kinds of commands, local ones ([`Cmd`]: `serve`, `get`, `install`, and the hidden
//!   `relay`) and [`Remote`] ones sent to the service; [`remote`] runs the latter.
//! - [`serve`]: `sdm serve`, the engine service in the foreground.
//! - [`get`]: `sdm get`, one download here and now, with a progress bar.
//! - [`queue`]: `add`, `ls`, `pause`, `resume`, `cancel`, `rm`, `open` and `wait` on the service's queue.
//! - [`history`], [`settings`]: the service's history and settings.
//! - [`ops`]: `set-url`, `limit`, `move`, `pause --all`, `resume --all` and `clear` on downloads in the queue.
//! - [`install`]: the installed binary and the host manifests for the browsers.
//! - [`lifecycle`]: `status`, `stop` and `uninstall`, which never start the service.
//! - [`parse`]: value parsers for flags; [`print`]: stdout and the tables.
//!
//! Errors here are `anyhow`, printed once by `main` as `sdm: <chain>`; a service error carries its code.

pub mod get;
pub mod history;
pub mod install;
pub mod lifecycle;
pub mod ops;
pub mod parse;
pub mod print;
pub mod queue;
pub mod serve;
pub mod settings;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use protocol::{Command, DownloadId, ErrorCode};
use sdm::client::{Client, ClientError};

use print::out;

#[derive(Parser)]
#[command(
    name = "sdm",
    after_help = "Environment:\n  SDM_HOME  data directory: state, socket, logs [default: $XDG_DATA_HOME/sdm or ~/.local/share/sdm]\n  SDM_LOG   log filter, e.g. debug or sdm=trace [default: info for serve, warn otherwise]\n  XDG_DOWNLOAD_DIR  where downloads go when the settings name no folder [default: ~/Downloads]\n  XDG_BIN_HOME  where `sdm install` puts sdm [default: ~/.local/bin]",
    version,
    about = "SDM download manager: segmented downloads from the command line or the browser"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

/// The commands, local ones first; the service's are one variant, so they run on one connection. The order of the
/// variants (flattened ones included) is the order of `sdm --help`.
#[derive(Subcommand)]
pub enum Cmd {
    /// Run the engine service in the foreground (one per data directory)
    Serve,
    /// Relay native messaging on stdin/stdout to the service (what a browser starts)
    #[command(hide = true)]
    Relay,
    /// Download one URL now, with a progress bar, without the service; stopped (Ctrl-C) or failed on the network, it keeps its bytes, and the same command goes on from them
    Get(get::GetArgs),
    #[command(flatten)]
    Remote(Remote),
    /// Install sdm for this user and register it with every browser found
    Install(install::InstallArgs),
    #[command(flatten)]
    Lifecycle(lifecycle::Lifecycle),
}

/// The commands sent to the service (started when none answers).
#[derive(Subcommand)]
pub enum Remote {
    /// Queue a download in the service, or every URL of a list with -i
    Add(queue::AddArgs),
    /// List the service's downloads
    Ls {
        /// Print the downloads as JSON
        #[arg(long)]
        json: bool,
    },
    /// Pause a download, or every queued and running one with --all
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
    Pause {
        id: Option<DownloadId>,
        /// Pause every queued and running download
        #[arg(long)]
        all: bool,
    },
    /// Resume a paused or failed download, or every one with --all
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
    Resume {
        id: Option<DownloadId>,
        /// Resume every paused and failed download
        #[arg(long)]
        all: bool,
    },
    /// Cancel a download
    Cancel { id: DownloadId },
    /// Remove a download from the list
    Rm {
        id: DownloadId,
        /// Also delete its file (or its .part file)
        #[arg(long)]
        delete_file: bool,
    },
    /// Open a completed download's file, or its folder
    Open {
        id: DownloadId,
        #[arg(long)]
        folder: bool,
    },
    /// Show finished downloads, newest first
    History(history::HistoryArgs),
    /// Show the settings, or change some with --set key=value
    Settings {
        /// A setting to change, e.g. max_concurrent=4 or capture_exclude=example.com,example.org
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Give a download a new address (its link expired); the bytes already down are kept if it is the same file
    SetUrl {
        id: DownloadId,
        url: String,
        /// Start over from the first byte if the new address serves another file
        #[arg(long)]
        restart: bool,
    },
    /// Change a download's speed cap now, in bytes per second (K, M, G suffixes); 0 = unlimited
    Limit {
        id: DownloadId,
        #[arg(value_name = "BYTES_PER_SEC", value_parser = parse::bytes)]
        rate: u64,
    },
    /// Move a download in the queue: queued downloads start from the top
    Move {
        id: DownloadId,
        #[arg(value_enum)]
        to: ops::Place,
    },
    /// Take completed, failed and cancelled downloads off the list (history keeps them)
    Clear,
    /// Wait until a download is finished, or with no id until nothing is queued or downloading; succeed only if it
    /// completed (with no id: if no listed download failed or was cancelled; paused ones are not waited for)
    Wait {
        /// The download to wait for [default: every queued and downloading one]
        id: Option<DownloadId>,
        /// Give up after this many seconds
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
}

/// Run a command on the service.
pub async fn remote(command: Remote) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect().await?;
    match command {
        Remote::Add(args) => queue::add(&mut client, args).await?,
        Remote::Ls { json } => queue::ls(&mut client, json).await?,
        Remote::Pause { id: None, .. } => {
            ops::bulk(&mut client, Command::PauseAll, "paused").await?
        }
        Remote::Pause { id: Some(id), .. } => {
            let command = Command::Pause { download_id: id };
            simple(&mut client, command, "paused", id).await?
        }
        Remote::Resume { id: None, .. } => {
            ops::bulk(&mut client, Command::ResumeAll, "resumed").await?
        }
        Remote::Resume { id: Some(id), .. } => {
            let command = Command::Resume { download_id: id };
            simple(&mut client, command, "resumed", id).await?
        }
        Remote::Cancel { id } => {
            let command = Command::Cancel { download_id: id };
            simple(&mut client, command, "cancelled", id).await?
        }
        Remote::Rm { id, delete_file } => {
            let command = Command::Remove {
                download_id: id,
                delete_file,
            };
            simple(&mut client, command, "removed", id).await?
        }
        Remote::Open { id, folder } => {
            let command = Command::Open {
                download_id: id,
                folder,
            };
            simple(&mut client, command, "opened", id).await?
        }
        Remote::History(args) => history::run(&mut client, args).await?,
        Remote::Settings { set } => settings::run(&mut client, &set).await?,
        Remote::SetUrl { id, url, restart } => ops::set_url(&mut client, id, url, restart).await?,
        Remote::Limit { id, rate } => ops::limit(&mut client, id, rate).await?,
        Remote::Move { id, to } => ops::move_to(&mut client, id, to).await?,
        Remote::Clear => ops::bulk(&mut client, Command::ClearFinished, "cleared").await?,
        Remote::Wait { id, timeout } => return queue::wait(&mut client, id, timeout).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// A command whose answer is only "done": say so with the download's id.
async fn simple(
    client: &mut Client,
    command: Command,
    done: &str,
    id: DownloadId,
) -> anyhow::Result<()> {
    let _: serde_json::Value = client.call(command).await.map_err(service_error)?;
    out(format_args!("{done} {id}"))
}

/// A service error, worded for the command line: its message, then its code.
pub(crate) fn service_error(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Remote(body) => anyhow::anyhow!("{} ({})", body.message, code_name(body.code)),
        other => other.into(),
    }
}

/// The code as it is spelled on the wire (`not_found`), which is what scripts match.
fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn error_codes_are_named_as_on_the_wire() {
        assert_eq!(code_name(ErrorCode::NotFound), "not_found");
        assert_eq!(code_name(ErrorCode::InvalidArgument), "invalid_argument");
    }
}
