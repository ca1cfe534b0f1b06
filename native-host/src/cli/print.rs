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

/// Write a line to stderr as `sdm: <line>`, for a problem that does not end the command (one line of a list).
pub fn warn(line: impl std::fmt::Display) {
    let mut stderr = std::io::stderr().lock();
    // Nothing better can be done when stderr is gone.
    let _ = writeln!(stderr, "sdm: {line}");
}

/// The `ls` table: one download a line, its error beside its name.
pub fn downloads(downloads: &[DownloadInfo]) -> anyhow::Result<()> {
    if downloads.is_empty() {
        return out("no downloads");
    }
    out(format_args!(
        "{:>5}  {:<11}  {:>6}  {:>10}  {:>11}  {:>6}  NAME",
        "ID", "STATUS", "%", "SIZE", "SPEED", "ETA"
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
        let (speed, eta) = if d.status == Status::Downloading {
            (format!("{}/s", HumanBytes(d.speed)), time_left(d.eta))
        } else {
            ("-".into(), "-".into())
        };
        let name = match &d.error {
            Some(err) => format!("{}  ({err})", d.filename),
            None => d.filename.clone(),
        };
        out(format_args!(
            "{:>5}  {:<11}  {:>6}  {:>10}  {:>11}  {:>6}  {}",
            d.id,
            d.status.as_str(),
            percent,
            size,
            speed,
            eta,
            name
        ))?;
    }
    Ok(())
}

/// Time left, short enough for a column: `42s`, `3m05s`, `2h03m`, `5d02h`; `?` when it cannot be known.
fn time_left(eta: Option<u64>) -> String {
    let Some(s) = eta else {
        return "?".into();
    };
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
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

#[cfg(test)]
mod tests {
    use super::time_left;

    #[test]
    fn time_left_fits_a_column() {
        assert_eq!(time_left(None), "?");
        assert_eq!(time_left(Some(42)), "42s");
        assert_eq!(time_left(Some(185)), "3m05s");
        assert_eq!(time_left(Some(2 * 3600 + 3 * 60 + 9)), "2h03m");
        assert_eq!(time_left(Some(5 * 86400 + 2 * 3600)), "5d02h");
    }
}
