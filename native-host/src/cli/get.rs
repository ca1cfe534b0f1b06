//! `sdm get`: one download here and now, without the service, with a progress bar on stderr when it is a terminal.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use protocol::{DEFAULT_THREADS, Settings};
use sdm::engine::oneshot::{self, GetSpec, Kept, Snapshot};
use sdm::signals::Signals;
use tokio_util::sync::CancellationToken;

use super::parse;
use super::print::{out, warn};

#[derive(Args)]
pub struct GetArgs {
    url: String,
    /// Output file, or an existing folder to put the server's file name in [default: the current folder]
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// Connections
    #[arg(short = 'c', long = "connections", value_name = "N", default_value_t = DEFAULT_THREADS,
          value_parser = clap::value_parser!(u32).range(parse::CONNECTIONS))]
    connections: u32,
    /// Speed cap in bytes per second (K, M, G suffixes are powers of 1024); 0 = unlimited
    #[arg(long, value_name = "BYTES_PER_SEC", default_value = "0", value_parser = parse::bytes)]
    limit: u64,
    /// Retries per connection
    #[arg(long, value_name = "N", default_value_t = Settings::default().default_retries,
          value_parser = clap::value_parser!(u32).range(parse::RETRIES))]
    retries: u32,
    /// An extra request header, 'Name: value' (repeatable)
    #[arg(long = "header", value_name = "'K: V'", value_parser = parse::header)]
    headers: Vec<(String, String)>,
    /// Fail unless the file's sha256 is this (64 hex digits)
    #[arg(long, value_name = "HEX", value_parser = parse::sha256)]
    sha256: Option<String>,
    /// Send every body through reqwest, not over SDM's own socket (splice(2) for http, its own TLS reads for https)
    #[arg(long)]
    no_splice: bool,
    /// Drop and retry a connection that sends nothing for this long
    #[arg(long, value_name = "SECS", default_value_t = Settings::default().stall_timeout_secs,
          value_parser = clap::value_parser!(u64).range(1..))]
    stall_timeout: u64,
}

pub async fn run(args: GetArgs) -> anyhow::Result<ExitCode> {
    parse::check_url(&args.url)?;
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
        own_tls_min: sdm::engine::transfer::OWN_TLS_MIN,
    };
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(spinner_style());
    bar.set_message(name_guess(&spec.url));
    // Watch for signals before the first byte: one that came before the handlers would kill us, part file and all.
    let mut signals = Signals::new().context("cannot watch for signals")?;
    let stop = CancellationToken::new();
    let mut get = std::pin::pin!(oneshot::get_until(
        spec,
        stop.clone(),
        progress(bar.clone())
    ));
    let (result, stopped) = tokio::select! {
        r = &mut get => (r, None),
        signal = signals.recv() => {
            stop.cancel();
            (get.await, Some(signal))
        }
    };
    match result {
        Ok(path) => {
            bar.finish_and_clear();
            out(path.display())?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            bar.abandon();
            if let Some(kept) = &e.kept {
                warn(kept_line(kept));
            }
            match stopped {
                Some(signal) => {
                    warn(format_args!("stopped by {}", signal.name));
                    Ok(ExitCode::from(signal.exit_code))
                }
                None => Err(anyhow::Error::from(e.error).context("download failed")),
            }
        }
    }
}

/// What a run that did not complete tells of the bytes it kept.
fn kept_line(kept: &Kept) -> String {
    let of = kept
        .total
        .map(|t| format!(" of {}", HumanBytes(t)))
        .unwrap_or_default();
    format!(
        "{}{of} kept in {} (and {}): run the same command again to go on from there",
        HumanBytes(kept.downloaded),
        kept.part.display(),
        kept.control.display()
    )
}

/// The URL's last path segment: what the bar shows until the server names the file.
fn name_guess(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.path_segments()?
                .rfind(|seg| !seg.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// Move `bar` with each snapshot; it becomes a bar with a length once the size is known.
fn progress(bar: ProgressBar) -> impl FnMut(&Snapshot) + Send {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_templates_are_valid() {
        let _ = (spinner_style(), bar_style());
    }

    #[test]
    fn the_bar_guesses_the_name_from_the_url() {
        assert_eq!(name_guess("http://h/a/b.iso?x=1"), "b.iso");
        assert_eq!(name_guess("http://h/a/"), "a");
        assert_eq!(name_guess("http://h"), "");
    }
}
