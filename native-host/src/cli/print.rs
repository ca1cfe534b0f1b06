//! What the command line writes to stdout: one line at a time, and the `ls` and `history` tables.

use std::io::Write;

use anyhow::Context;
use indicatif::HumanBytes;
use protocol::{DownloadInfo, HistoryItem, Status};

/// Write a line to stdout (the CLI's output; never used in relay mode).
pub fn out(line: impl std::fmt::Display) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").context("cannot write to stdout")
}

/// The `ls` table: one download a line, its error beside its name.
pub fn downloads(downloads: &[DownloadInfo]) -> anyhow::Result<()> {
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

/// The `history` table: a finished download's path, or its name and error.
pub fn history(items: &[HistoryItem]) -> anyhow::Result<()> {
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
