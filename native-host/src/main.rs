//! `sdm`: the one binary with every face.
//!
//! - Started by a browser (argv[1] is `chrome-extension://<id>/`, or a manifest path and an add-on id for Firefox):
//!   the [`relay`](sdm::relay), native messaging on stdin/stdout. Nothing else may write to stdout then.
//! - `sdm serve`: the engine [`service`](sdm::service) in the foreground.
//! - `sdm get`: one download, here and now, without the service.
//! - `sdm add|ls|pause|resume|cancel|rm|open|history|settings|wait`: commands sent to the service.
//! - `sdm install`: register the host with the browsers.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use protocol::{
    AddRequest, AddResult, Command, DEFAULT_THREADS, DownloadId, DownloadInfo, ErrorCode,
    HistoryItem, HistoryResult, ListResult, PageRequest, Settings, SettingsPatch, SettingsResult,
    Status,
};
use sdm::client::{Client, ClientError};
use sdm::engine::transfer::{self, GetSpec, Snapshot};
use sdm::install::{self, Browser, ManifestFormat, Target};
use sdm::{paths, relay, service};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "sdm",
    after_help = "Environment:\n  SDM_HOME  data directory: state, socket, logs [default: $XDG_DATA_HOME/sdm or ~/.local/share/sdm]\n  SDM_LOG   log filter, e.g. debug or sdm=trace [default: info for serve, warn otherwise]\n  XDG_DOWNLOAD_DIR  where downloads go when the settings name no folder [default: ~/Downloads]",
    version,
    about = "SDM download manager: segmented downloads from the command line or the browser"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the engine service in the foreground (one per data directory)
    Serve,
    /// Relay native messaging on stdin/stdout to the service (what a browser starts)
    #[command(hide = true)]
    Relay,
    /// Download one URL now, with a progress bar, without the service
    Get(GetArgs),
    /// Queue a download in the service
    Add(AddArgs),
    /// List the service's downloads
    Ls {
        /// Print the downloads as JSON
        #[arg(long)]
        json: bool,
    },
    /// Pause a download
    Pause { id: DownloadId },
    /// Resume a paused or failed download
    Resume { id: DownloadId },
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
    History {
        #[arg(long, default_value_t = 0)]
        offset: usize,
        #[arg(long)]
        limit: Option<usize>,
        /// Forget every finished download
        #[arg(long)]
        clear: bool,
        /// Print the page as JSON
        #[arg(long)]
        json: bool,
    },
    /// Show the settings, or change some with --set key=value
    Settings {
        /// A setting to change, e.g. max_concurrent=4 or capture_exclude=example.com,example.org
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Wait until a download is finished; succeed only if it completed
    Wait {
        id: DownloadId,
        /// Give up after this many seconds
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// Register the native messaging host with browsers (for this user)
    Install(InstallArgs),
}

#[derive(Args)]
struct GetArgs {
    url: String,
    /// Output file, or an existing folder to put the server's file name in [default: the current folder]
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// Connections
    #[arg(short = 'c', long = "connections", value_name = "N", default_value_t = DEFAULT_THREADS,
          value_parser = clap::value_parser!(u32).range(1..=32))]
    connections: u32,
    /// Speed cap in bytes per second (K, M, G suffixes are powers of 1024); 0 = unlimited
    #[arg(long, value_name = "BYTES_PER_SEC", default_value = "0", value_parser = parse_bytes)]
    limit: u64,
    /// Retries per connection
    #[arg(long, value_name = "N", default_value_t = Settings::default().default_retries,
          value_parser = clap::value_parser!(u32).range(0..=protocol::MAX_RETRIES as i64))]
    retries: u32,
    /// An extra request header, 'Name: value' (repeatable)
    #[arg(long = "header", value_name = "'K: V'", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Fail unless the file's sha256 is this (64 hex digits)
    #[arg(long, value_name = "HEX", value_parser = parse_sha256)]
    sha256: Option<String>,
    /// Read every body through memory, not with splice(2) (for comparison, or a file system that mishandles it)
    #[arg(long)]
    no_splice: bool,
    /// Drop and retry a connection that sends nothing for this long
    #[arg(long, value_name = "SECS", default_value_t = Settings::default().stall_timeout_secs,
          value_parser = clap::value_parser!(u64).range(1..))]
    stall_timeout: u64,
}

#[derive(Args)]
struct AddArgs {
    url: String,
    /// File name to save as (in the download folder)
    #[arg(short, long, value_name = "NAME")]
    output: Option<String>,
    /// Connections [default: the service's setting]
    #[arg(short = 'c', long = "connections", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=32))]
    connections: Option<u32>,
    /// Retries per connection [default: the service's setting]
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(0..=protocol::MAX_RETRIES as i64))]
    retries: Option<u32>,
    /// Speed cap in bytes per second (K, M, G suffixes); 0 = unlimited
    #[arg(long, value_name = "BYTES_PER_SEC", value_parser = parse_bytes)]
    limit: Option<u64>,
    /// An extra request header, 'Name: value' (repeatable)
    #[arg(long = "header", value_name = "'K: V'", value_parser = parse_header)]
    headers: Vec<(String, String)>,
}

#[derive(Args)]
struct InstallArgs {
    /// A browser to register with: chrome, chromium, brave, edge, vivaldi, firefox [default: every one found]
    #[arg(long = "browser", value_name = "NAME", value_parser = parse_browser)]
    browsers: Vec<Browser>,
    /// Write a Chromium-format manifest into this folder instead (e.g. <user-data-dir>/NativeMessagingHosts)
    #[arg(long, value_name = "DIR", conflicts_with = "browsers")]
    dir: Option<PathBuf>,
    /// Remove the manifests instead
    #[arg(long)]
    uninstall: bool,
}

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
            init_logging(None, "info");
            block_on_multi(serve())
        }
        Cmd::Relay => return run_relay(&args),
        Cmd::Get(get_args) => {
            init_logging(None, "warn");
            runtime(false).and_then(|rt| rt.block_on(get(get_args)))
        }
        Cmd::Install(install_args) => {
            init_logging(None, "warn");
            run_install(install_args)
        }
        command => {
            init_logging(None, "warn");
            runtime(false).and_then(|rt| rt.block_on(talk(command)))
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

fn block_on_multi(
    fut: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    runtime(true)?.block_on(fut)
}

/// Log to `file` when given (and writable), else stderr; never stdout. `SDM_LOG` overrides the level.
fn init_logging(file: Option<PathBuf>, default: &str) {
    let filter = EnvFilter::try_from_env("SDM_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let file = file.and_then(|path| sdm::client::open_log(&path).ok());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match file {
        Some(file) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .init(),
        None => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init(),
    }
}

/// Write a line to stdout (the CLI's output; never used in relay mode).
fn out(line: impl std::fmt::Display) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").context("cannot write to stdout")
}

fn run_relay(args: &[String]) -> ExitCode {
    let data_dir = paths::data_dir();
    let log = data_dir.as_ref().ok().and_then(|dir| {
        paths::ensure_data_dir(dir).ok()?;
        Some(dir.join(paths::RELAY_LOG))
    });
    // The relay's log is a file of its own, and its argv is worth having: each browser passes different ones.
    init_logging(log, "info");
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

async fn serve() -> anyhow::Result<ExitCode> {
    let data_dir = paths::data_dir()?;
    let default_download_dir = paths::default_download_dir()?;
    tracing::info!(data_dir = %data_dir.display(), downloads = %default_download_dir.display(), pid = std::process::id(), "sdm service starting");
    service::run(service::ServiceConfig {
        data_dir,
        default_download_dir,
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

async fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    check_url(&args.url)?;
    let output = match args.output {
        Some(path) => path,
        None => std::env::current_dir().context("cannot read the current folder: pass -o PATH")?,
    };
    let spec = GetSpec {
        url: args.url,
        output,
        threads: args.connections,
        retries: args.retries,
        headers: args.headers,
        limit: args.limit,
        stall_timeout: Duration::from_secs(args.stall_timeout),
        sha256: args.sha256,
        splice: !args.no_splice,
    };
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(spinner_style());
    // Until the server names the file, show the URL's last segment.
    let guess = url::Url::parse(&spec.url)
        .ok()
        .and_then(|u| {
            u.path_segments()?
                .rfind(|seg| !seg.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_default();
    bar.set_message(guess);
    let progress = {
        let bar = bar.clone();
        let mut sized = false;
        move |s: &Snapshot| {
            if let (Some(total), false) = (s.total, sized) {
                bar.set_length(total);
                bar.set_style(bar_style());
                sized = true;
            }
            bar.set_position(s.downloaded);
            if !s.filename.is_empty() {
                bar.set_message(s.filename.clone());
            }
            bar.set_prefix(format!("{}/s ×{}", HumanBytes(s.speed), s.connections));
        }
    };
    match transfer::get(spec, progress).await {
        Ok(path) => {
            bar.finish_and_clear();
            out(path.display())?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            bar.abandon();
            Err(e.context("download failed"))
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {wide_msg} {bytes} {prefix} {elapsed}")
        .expect("a valid template")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{wide_msg} [{bar:30}] {bytes}/{total_bytes} {percent:>3}% {prefix} eta {eta}",
    )
    .expect("a valid template")
    .progress_chars("=> ")
}

fn check_url(url: &str) -> anyhow::Result<()> {
    let parsed = url::Url::parse(url).with_context(|| format!("{url:?} is not a valid URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("{url:?} is not an http or https URL: only those can be downloaded");
    }
    Ok(())
}

/// A header as `Name: value`; the name must be an HTTP token.
fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("header {s:?} needs a colon: write it as 'Name: value'"))?;
    let name = name.trim();
    let is_token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(is_token) {
        return Err(format!(
            "header name {name:?} is not valid: use letters, digits and - (as in 'User-Agent: x')"
        ));
    }
    let value = value.trim();
    if value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
        return Err(format!(
            "header {name} has a line break or NUL in its value"
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

fn parse_sha256(s: &str) -> Result<String, String> {
    if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err("a sha256 is 64 hexadecimal digits".to_string())
    }
}

/// A byte count, with an optional K, M or G suffix (powers of 1024), e.g. `500K` or `2M`.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&t[..i], t[i..].to_ascii_lowercase()),
        None => (t, String::new()),
    };
    let factor: u64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => {
            return Err(format!(
                "{s:?} is not a byte count: write e.g. 500000, 500K or 2M"
            ));
        }
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count: write e.g. 500000, 500K or 2M"))?;
    n.checked_mul(factor)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_browser(s: &str) -> Result<Browser, String> {
    Browser::from_name(s).ok_or_else(|| {
        format!("unknown browser {s:?}: use chrome, chromium, brave, edge, vivaldi or firefox")
    })
}

fn run_install(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let env = paths::Env::current();
    let targets: Vec<Target> = if let Some(dir) = args.dir {
        vec![Target::Dir(dir, ManifestFormat::Chromium)]
    } else if !args.browsers.is_empty() {
        args.browsers.into_iter().map(Target::Browser).collect()
    } else if args.uninstall {
        Browser::ALL.into_iter().map(Target::Browser).collect()
    } else {
        let found = install::detect(&env);
        if found.is_empty() {
            return Err(install::InstallError::NoBrowser.into());
        }
        found.into_iter().map(Target::Browser).collect()
    };
    if args.uninstall {
        let done = install::uninstall(&targets, &env)?;
        let mut removed = 0;
        for o in done.iter().filter(|o| o.changed) {
            out(format_args!("removed {} ({})", o.path.display(), o.target))?;
            removed += 1;
        }
        if removed == 0 {
            out("nothing to remove: no sdm host manifest was installed there")?;
        }
    } else {
        let exe = install::current_exe()?;
        for o in install::install(&targets, &exe, &env)? {
            out(format_args!("wrote {} ({})", o.path.display(), o.target))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The commands that talk to the service.
async fn talk(command: Cmd) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect().await?;
    match command {
        Cmd::Add(args) => {
            check_url(&args.url)?;
            let req = AddRequest {
                url: args.url,
                filename: args.output,
                threads: args.connections,
                retries: args.retries,
                bandwidth_limit: args.limit,
                headers: args.headers.into_iter().collect::<BTreeMap<_, _>>(),
                referrer: None,
                client_key: None,
                expect: None,
            };
            let added: AddResult = client.call(Command::Add(req)).await.map_err(remote)?;
            out(added.id)?;
        }
        Cmd::Ls { json } => {
            let downloads = all_downloads(&mut client).await?;
            if json {
                out(serde_json::to_string_pretty(&downloads)?)?;
            } else {
                print_downloads(&downloads)?;
            }
        }
        Cmd::Pause { id } => {
            simple(
                &mut client,
                Command::Pause { download_id: id },
                "paused",
                id,
            )
            .await?
        }
        Cmd::Resume { id } => {
            simple(
                &mut client,
                Command::Resume { download_id: id },
                "resumed",
                id,
            )
            .await?
        }
        Cmd::Cancel { id } => {
            simple(
                &mut client,
                Command::Cancel { download_id: id },
                "cancelled",
                id,
            )
            .await?
        }
        Cmd::Rm { id, delete_file } => {
            let command = Command::Remove {
                download_id: id,
                delete_file,
            };
            simple(&mut client, command, "removed", id).await?
        }
        Cmd::Open { id, folder } => {
            let command = Command::Open {
                download_id: id,
                folder,
            };
            simple(&mut client, command, "opened", id).await?
        }
        Cmd::History {
            offset,
            limit,
            clear,
            json,
        } => {
            if clear {
                let _: serde_json::Value =
                    client.call(Command::ClearHistory).await.map_err(remote)?;
                out("history cleared")?;
            } else {
                let page: HistoryResult = client
                    .call(Command::History(PageRequest { offset, limit }))
                    .await
                    .map_err(remote)?;
                if json {
                    out(serde_json::to_string_pretty(&page)?)?;
                } else {
                    print_history(&page.items)?;
                    if offset + page.items.len() < page.total {
                        eprintln!(
                            "({} to {} of {}: use --offset {} for more)",
                            offset + 1,
                            offset + page.items.len(),
                            page.total,
                            offset + page.items.len()
                        );
                    }
                }
            }
        }
        Cmd::Settings { set } => {
            let command = if set.is_empty() {
                Command::GetSettings
            } else {
                Command::SetSettings {
                    settings: settings_patch(&set)?,
                }
            };
            let result: SettingsResult = client.call(command).await.map_err(remote)?;
            out(serde_json::to_string_pretty(&result.settings)?)?;
        }
        Cmd::Wait { id, timeout } => return wait(&mut client, id, timeout).await,
        Cmd::Serve | Cmd::Relay | Cmd::Get(_) | Cmd::Install(_) => unreachable!("handled in main"),
    }
    Ok(ExitCode::SUCCESS)
}

/// A service error, worded for the command line.
fn remote(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Remote(body) => anyhow::anyhow!("{} ({})", body.message, code_name(body.code)),
        other => other.into(),
    }
}

fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

async fn simple(
    client: &mut Client,
    command: Command,
    done: &str,
    id: DownloadId,
) -> anyhow::Result<()> {
    let _: serde_json::Value = client.call(command).await.map_err(remote)?;
    out(format_args!("{done} {id}"))
}

/// Every download, page by page (a page is capped by the service and by the frame size).
async fn all_downloads(client: &mut Client) -> anyhow::Result<Vec<DownloadInfo>> {
    let mut downloads = Vec::new();
    loop {
        let page: ListResult = client
            .call(Command::List(PageRequest {
                offset: downloads.len(),
                limit: None,
            }))
            .await
            .map_err(remote)?;
        let got = page.downloads.len();
        downloads.extend(page.downloads);
        if got == 0 || downloads.len() >= page.total {
            return Ok(downloads);
        }
    }
}

fn print_downloads(downloads: &[DownloadInfo]) -> anyhow::Result<()> {
    if downloads.is_empty() {
        return out("no downloads");
    }
    out(format_args!(
        "{:>5}  {:<11}  {:>6}  {:>10}  {:>11}  NAME",
        "ID", "STATUS", "%", "SIZE", "SPEED"
    ))?;
    for d in downloads {
        let percent = d
            .percent()
            .map(|p| format!("{p:.1}"))
            .unwrap_or_else(|| "-".into());
        let size = d
            .total
            .map(|t| HumanBytes(t).to_string())
            .unwrap_or_else(|| "?".into());
        let speed = if d.status == Status::Downloading {
            format!("{}/s", HumanBytes(d.speed))
        } else {
            "-".into()
        };
        let name = match &d.error {
            Some(err) => format!("{}  ({err})", d.filename),
            None => d.filename.clone(),
        };
        out(format_args!(
            "{:>5}  {:<11}  {:>6}  {:>10}  {:>11}  {}",
            d.id,
            d.status.as_str(),
            percent,
            size,
            speed,
            name
        ))?;
    }
    Ok(())
}

fn print_history(items: &[HistoryItem]) -> anyhow::Result<()> {
    if items.is_empty() {
        return out("no history");
    }
    out(format_args!(
        "{:>5}  {:<11}  {:>10}  NAME",
        "ID", "STATUS", "SIZE"
    ))?;
    for h in items {
        let size = h
            .total
            .map(|t| HumanBytes(t).to_string())
            .unwrap_or_else(|| HumanBytes(h.downloaded).to_string());
        let name = match &h.error {
            Some(err) => format!("{}  ({err})", h.filename),
            None => h.path.clone(),
        };
        out(format_args!(
            "{:>5}  {:<11}  {:>10}  {}",
            h.id,
            h.status.as_str(),
            size,
            name
        ))?;
    }
    Ok(())
}

/// Turn `key=value` pairs into a settings patch, reading each value as its field's type.
fn settings_patch(pairs: &[String]) -> anyhow::Result<SettingsPatch> {
    let defaults = serde_json::to_value(Settings::default())?;
    let fields = defaults
        .as_object()
        .expect("settings serialize to an object");
    let mut patch = serde_json::Map::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("{pair:?} is not key=value"))?;
        let key = key.trim();
        let Some(example) = fields.get(key) else {
            let known: Vec<&str> = fields.keys().map(String::as_str).collect();
            bail!(
                "unknown setting {key:?}: the settings are {}",
                known.join(", ")
            );
        };
        let value = value.trim();
        let typed = match example {
            serde_json::Value::Bool(_) => {
                serde_json::Value::Bool(match value.to_ascii_lowercase().as_str() {
                    "true" | "yes" | "on" | "1" => true,
                    "false" | "no" | "off" | "0" => false,
                    _ => bail!("{key} is true or false, not {value:?}"),
                })
            }
            serde_json::Value::Number(_) => {
                let n = if key == "bandwidth_limit" || key == "capture_min_size" {
                    parse_bytes(value).map_err(anyhow::Error::msg)?
                } else {
                    value
                        .parse::<u64>()
                        .with_context(|| format!("{key} is a whole number, not {value:?}"))?
                };
                serde_json::Value::from(n)
            }
            serde_json::Value::Array(_) => {
                let items: Vec<serde_json::Value> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| serde_json::Value::String(s.to_string()))
                    .collect();
                serde_json::Value::Array(items)
            }
            _ => serde_json::Value::String(value.to_string()),
        };
        patch.insert(key.to_string(), typed);
    }
    serde_json::from_value(serde_json::Value::Object(patch))
        .context("settings do not fit their types")
}

/// Where a download stands, wherever it is kept now.
enum Found {
    Live(DownloadInfo),
    Finished(HistoryItem),
    Missing,
}

async fn find(client: &mut Client, id: DownloadId) -> anyhow::Result<Found> {
    if let Some(d) = all_downloads(client)
        .await?
        .into_iter()
        .find(|d| d.id == id)
    {
        return Ok(Found::Live(d));
    }
    // A finished download may have moved to history.
    let mut offset = 0;
    loop {
        let page: HistoryResult = client
            .call(Command::History(PageRequest {
                offset,
                limit: None,
            }))
            .await
            .map_err(remote)?;
        if let Some(h) = page.items.iter().find(|h| h.id == id) {
            return Ok(Found::Finished(h.clone()));
        }
        offset += page.items.len();
        if page.items.is_empty() || offset >= page.total {
            return Ok(Found::Missing);
        }
    }
}

/// Wait for a download to finish: events say when, a poll every second covers missed ones.
async fn wait(
    client: &mut Client,
    id: DownloadId,
    timeout: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let _: serde_json::Value = client.call(Command::Subscribe).await.map_err(remote)?;
    let deadline = timeout.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    loop {
        let (status, path, error) = match find(client, id).await? {
            Found::Live(d) => (d.status, d.path, d.error),
            Found::Finished(h) => (h.status, h.path, h.error),
            Found::Missing => bail!("no download {id}: see `sdm ls`"),
        };
        match status {
            Status::Completed => {
                out(path)?;
                return Ok(ExitCode::SUCCESS);
            }
            Status::Failed => bail!(
                "download {id} failed: {}",
                error.unwrap_or_else(|| "no reason given".into())
            ),
            Status::Cancelled => bail!("download {id} was cancelled"),
            Status::Queued | Status::Downloading | Status::Paused => {}
        }
        // Sleep until an event about this download, or a second at most.
        let tick = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(tick);
        loop {
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                bail!(
                    "download {id} is still {} after {}s",
                    status.as_str(),
                    timeout.unwrap_or(0)
                );
            }
            tokio::select! {
                _ = &mut tick => break,
                event = client.next_event() => match event? {
                    protocol::Event::State { download } if download.id == id => break,
                    protocol::Event::Removed { id: gone } if gone == id => bail!("download {id} was removed"),
                    _ => {}
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_need_a_name_and_a_colon() {
        assert_eq!(
            parse_header("User-Agent: x/1").unwrap(),
            ("User-Agent".into(), "x/1".into())
        );
        assert_eq!(
            parse_header("Cookie:a=b; c=d").unwrap(),
            ("Cookie".into(), "a=b; c=d".into())
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header(": value").is_err());
        assert!(parse_header("Bad Name: v").is_err());
        assert!(parse_header("X: a\r\nInjected: b").is_err());
    }

    #[test]
    fn byte_counts_take_binary_suffixes() {
        assert_eq!(parse_bytes("0").unwrap(), 0);
        assert_eq!(parse_bytes("500000").unwrap(), 500_000);
        assert_eq!(parse_bytes("500K").unwrap(), 500 * 1024);
        assert_eq!(parse_bytes("2M").unwrap(), 2 << 20);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert!(parse_bytes("fast").is_err());
        assert!(parse_bytes("-1").is_err());
    }

    #[test]
    fn sha256_is_64_hex_digits() {
        let hex = "AB".repeat(32);
        assert_eq!(parse_sha256(&hex).unwrap(), "ab".repeat(32));
        assert!(parse_sha256("abc").is_err());
    }

    #[test]
    fn settings_pairs_are_read_as_their_field_types() {
        let patch = settings_patch(&[
            "max_concurrent=4".into(),
            "capture_enabled=off".into(),
            "bandwidth_limit=1M".into(),
            "download_dir=/tmp/dl".into(),
            "capture_exclude=a.com, b.org".into(),
        ])
        .unwrap();
        assert_eq!(patch.max_concurrent, Some(4));
        assert_eq!(patch.capture_enabled, Some(false));
        assert_eq!(patch.bandwidth_limit, Some(1 << 20));
        assert_eq!(patch.download_dir.as_deref(), Some("/tmp/dl"));
        assert_eq!(
            patch.capture_exclude,
            Some(vec!["a.com".into(), "b.org".into()])
        );
        assert!(settings_patch(&["colour=blue".into()]).is_err());
        assert!(settings_patch(&["max_concurrent=many".into()]).is_err());
        assert!(settings_patch(&["max_concurrent".into()]).is_err());
    }

    #[test]
    fn urls_must_be_http() {
        assert!(check_url("https://example.com/a").is_ok());
        assert!(check_url("ftp://example.com/a").is_err());
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn progress_templates_are_valid() {
        let _ = (spinner_style(), bar_style());
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
