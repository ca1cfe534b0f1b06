//! `sdm`: the one binary with every face.
//!
//! - Started by a browser (argv[1] is `chrome-extension://<id>/`, or a manifest path and an add-on id for Firefox):
//!   the [`relay`](sdm::relay), native messaging on stdin/stdout. Nothing else may write to stdout then.
//! - `sdm serve`: the engine [`service`](sdm::service) in the foreground.
//! - `sdm get`: one download, here and now, without the service.
//! - `sdm add|ls|pause|resume|cancel|rm|open|history|settings|wait`: commands sent to the service.
//! - `sdm install`, `status`, `stop`, `uninstall`: install for this user, and the service's life.
//!
//! This file picks the face, sets up logging and the runtime, and hands over to [`cli`], where each command lives.

mod cli;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use sdm::{paths, relay};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use cli::{Cli, Cmd};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if relay::is_browser_launch(&args) {
        return run_relay(&args);
    }
    let cli = Cli::parse();
    let code = match cli.command {
        Cmd::Serve => {
            init_logging(None, LevelFilter::INFO);
            runtime(true).and_then(|rt| rt.block_on(cli::serve::run()))
        }
        Cmd::Relay => return run_relay(&args),
        Cmd::Get(get_args) => {
            init_logging(None, LevelFilter::WARN);
            runtime(false).and_then(|rt| rt.block_on(cli::get::run(get_args)))
        }
        Cmd::Install(install_args) => {
            init_logging(None, LevelFilter::WARN);
            cli::install::run(install_args)
        }
        Cmd::Lifecycle(command) => {
            init_logging(None, LevelFilter::WARN);
            runtime(false).and_then(|rt| rt.block_on(cli::lifecycle::run(command)))
        }
        Cmd::Remote(command) => {
            init_logging(None, LevelFilter::WARN);
            runtime(false).and_then(|rt| rt.block_on(cli::remote(command)))
        }
    };
    match code {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sdm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The service runs many downloads, so it gets a worker per core; every other face waits on one thing at a time.
fn runtime(multi: bool) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if multi {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Log to `file` when given (and writable), else stderr; never stdout. `SDM_LOG` overrides the level: `debug`, or per
/// target, `sdm=trace,reqwest=debug` (`Targets`, not `EnvFilter`: that one's regex engine was a twentieth of the
/// binary's code, and every process mapped it).
fn init_logging(file: Option<PathBuf>, default: LevelFilter) {
    let filter = std::env::var("SDM_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(default));
    let file = file.and_then(|path| sdm::client::open_log(&path).ok());
    // The builder's own filter stays open (its default is INFO); `filter` decides.
    let builder = tracing_subscriber::fmt().with_max_level(LevelFilter::TRACE);
    match file {
        Some(file) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .finish()
            .with(filter)
            .init(),
        None => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .finish()
            .with(filter)
            .init(),
    }
}

fn run_relay(args: &[String]) -> ExitCode {
    let data_dir = paths::data_dir();
    let log = data_dir.as_ref().ok().and_then(|dir| {
        paths::ensure_data_dir(dir).ok()?;
        Some(dir.join(paths::RELAY_LOG))
    });
    // The relay's log is a file of its own, and its argv is worth having: each browser passes different ones.
    init_logging(log, LevelFilter::INFO);
    tracing::info!(argv = ?args, caller = %relay::caller(args), pid = std::process::id(), "relay started");
    let data_dir = match data_dir {
        Ok(dir) => dir,
        Err(e) => {
            // Without a data directory there is no service to reach; say why on stderr (the browser's log).
            tracing::error!(cause = %e, "no data directory");
            eprintln!("sdm: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match runtime(false) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sdm: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(relay::run(data_dir)) {
        Ok(relay::Exit::StdinClosed) => {
            tracing::info!("stdin closed: relay exiting");
            ExitCode::SUCCESS
        }
        Ok(relay::Exit::Oversize) => ExitCode::FAILURE,
        Err(e) => {
            tracing::error!(cause = %e, "relay failed");
            ExitCode::FAILURE
        }
    }
}
