//! The service's queue from the command line: `add` (one URL, or a list with `-i`), `ls` and `wait` (the one-word
//! commands are in [`super::remote`]).

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use protocol::{
    AddManyResult, AddOutcome, AddRequest, AddResult, Command, DownloadId, DownloadInfo,
    HistoryItem, HistoryResult, ListResult, MAX_ADD_MANY, MAX_OUTGOING_FRAME, PageRequest, Request,
    Status,
};
use sdm::client::Client;

use super::print::{self, out};
use super::{parse, service_error};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["url", "input"])))]
pub struct AddArgs {
    /// The URL to download
    url: Option<String>,
    /// Add every URL in FILE, one a line ('-' for standard input); blank lines and lines starting with # are
    /// skipped, and the other options apply to every line
    #[arg(
        short = 'i',
        long = "input-file",
        value_name = "FILE",
        conflicts_with = "output"
    )]
    input: Option<PathBuf>,
    /// File name to save as (in the download folder)
    #[arg(short, long, value_name = "NAME")]
    output: Option<String>,
    /// Connections [default: the service's setting]
    #[arg(short = 'c', long = "connections", value_name = "N",
          value_parser = clap::value_parser!(u32).range(parse::CONNECTIONS))]
    connections: Option<u32>,
    /// Retries per connection [default: the service's setting]
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(parse::RETRIES))]
    retries: Option<u32>,
    /// Speed cap in bytes per second (K, M, G suffixes); 0 = unlimited
    #[arg(long, value_name = "BYTES_PER_SEC", value_parser = parse::bytes)]
    limit: Option<u64>,
    /// An extra request header, 'Name: value' (repeatable)
    #[arg(long = "header", value_name = "'K: V'", value_parser = parse::header)]
    headers: Vec<(String, String)>,
}

impl AddArgs {
    /// The add request for `url` with these options.
    fn request(&self, url: String) -> AddRequest {
        AddRequest {
            url,
            filename: self.output.clone(),
            threads: self.connections,
            retries: self.retries,
            bandwidth_limit: self.limit,
            headers: self.headers.iter().cloned().collect::<BTreeMap<_, _>>(),
            referrer: None,
            client_key: None,
            expect: None,
        }
    }
}

/// Queue a download and print its id; with `-i`, queue every URL of a list and print their ids, one a line.
pub async fn add(client: &mut Client, args: AddArgs) -> anyhow::Result<()> {
    if let Some(file) = &args.input {
        return add_list(client, file, &args).await;
    }
    let url = args.url.clone().unwrap_or_default();
    parse::check_url(&url)?;
    let added: AddResult = client
        .call(Command::Add(args.request(url)))
        .await
        .map_err(service_error)?;
    out(added.id)
}

/// A line of a list that holds a URL, numbered from 1 as an editor numbers it.
#[derive(Debug, PartialEq)]
struct Line {
    number: usize,
    url: String,
}

/// Read a list of URLs: its URL lines, and the lines refused here with why (`line 7: ...`).
fn read_list(text: &[u8]) -> (Vec<Line>, Vec<String>) {
    let mut lines = Vec::new();
    let mut refused = Vec::new();
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let number = i + 1;
        let Ok(line) = std::str::from_utf8(raw) else {
            refused.push(format!("line {number}: not UTF-8 text"));
            continue;
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // aria2c's mirrors (tab-separated URLs) and option lines have no meaning here; the URL parser would
        // otherwise drop a tab and join two URLs into one.
        if line.contains(char::is_whitespace) {
            refused.push(format!(
                "line {number}: one URL a line, without spaces or tabs (encode a space as %20)"
            ));
            continue;
        }
        match parse::check_url(line) {
            Ok(()) => lines.push(Line {
                number,
                url: line.to_string(),
            }),
            Err(e) => refused.push(format!("line {number}: {e:#}")),
        }
    }
    (lines, refused)
}

/// Split requests into batches of at most [`MAX_ADD_MANY`] whose `add_many` frame fits in [`MAX_OUTGOING_FRAME`].
/// A request too large for a frame of its own (impossible within the protocol's limits) is refused by its line.
fn batches(items: Vec<(usize, AddRequest)>) -> (Vec<Vec<(usize, AddRequest)>>, Vec<String>) {
    // The frame around the items: `{"id":<u64>,"cmd":"add_many","items":[...]}`.
    let envelope = to_frame_len(&Command::AddMany { items: Vec::new() });
    let budget = MAX_OUTGOING_FRAME.saturating_sub(envelope);
    let mut out: Vec<Vec<(usize, AddRequest)>> = Vec::new();
    let mut refused = Vec::new();
    let mut used = 0;
    for (number, item) in items {
        // Its JSON and the comma before it.
        let len = serde_json::to_vec(&item).map_or(usize::MAX, |v| v.len()) + 1;
        if len > budget {
            refused.push(format!(
                "line {number}: the request is too large to send ({len} bytes)"
            ));
            continue;
        }
        match out.last_mut() {
            Some(batch) if batch.len() < MAX_ADD_MANY && used + len <= budget => {
                used += len;
                batch.push((number, item));
            }
            _ => {
                used = len;
                out.push(vec![(number, item)]);
            }
        }
    }
    (out, refused)
}

/// The length of a request frame carrying `command` with the largest id.
fn to_frame_len(command: &Command) -> usize {
    serde_json::to_vec(&Request {
        id: u64::MAX,
        command: command.clone(),
    })
    .map_or(0, |v| v.len())
}

/// `sdm add -i`: every URL of the list, sent in as few `add_many` requests as fit in frames. Ids of added lines
/// are printed in the list's order; refused lines are named on stderr, and then the command fails.
async fn add_list(client: &mut Client, file: &Path, args: &AddArgs) -> anyhow::Result<()> {
    let text = if file == Path::new("-") {
        let mut text = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut text)
            .context("cannot read the list from standard input")?;
        text
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let (lines, mut refused) = read_list(&text);
    let total = lines.len() + refused.len();
    let items = lines
        .into_iter()
        .map(|l| (l.number, args.request(l.url)))
        .collect();
    let (batches, too_large) = batches(items);
    refused.extend(too_large);
    let mut failed = refused.len();
    for line in &refused {
        print::warn(line);
    }
    for batch in batches {
        let (numbers, items): (Vec<usize>, Vec<AddRequest>) = batch.into_iter().unzip();
        let answer: AddManyResult = client
            .call(Command::AddMany { items })
            .await
            .map_err(service_error)?;
        if answer.results.len() != numbers.len() {
            bail!(
                "the service answered {} results for {} URLs",
                answer.results.len(),
                numbers.len()
            );
        }
        for (number, outcome) in numbers.into_iter().zip(answer.results) {
            match outcome {
                AddOutcome::Added(added) => out(added.id)?,
                AddOutcome::Failed { error } => {
                    failed += 1;
                    print::warn(format_args!(
                        "line {number}: {} ({})",
                        error.message,
                        super::code_name(error.code)
                    ));
                }
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {total} URLs were not added (see the lines above)");
    }
    Ok(())
}

/// Print every download, as a table or as JSON.
pub async fn ls(client: &mut Client, json: bool) -> anyhow::Result<()> {
    let downloads = all_downloads(client).await?;
    if json {
        out(serde_json::to_string_pretty(&downloads)?)
    } else {
        print::downloads(&downloads)
    }
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
            .map_err(service_error)?;
        let got = page.downloads.len();
        downloads.extend(page.downloads);
        if got == 0 || downloads.len() >= page.total {
            return Ok(downloads);
        }
    }
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
            .map_err(service_error)?;
        if let Some(h) = page.items.iter().find(|h| h.id == id) {
            return Ok(Found::Finished(h.clone()));
        }
        offset += page.items.len();
        if page.items.is_empty() || offset >= page.total {
            return Ok(Found::Missing);
        }
    }
}

/// `sdm wait`: one download, or with no id every queued and downloading one.
pub async fn wait(
    client: &mut Client,
    id: Option<DownloadId>,
    timeout: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let _: serde_json::Value = client
        .call(Command::Subscribe)
        .await
        .map_err(service_error)?;
    let deadline = timeout.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    match id {
        Some(id) => wait_one(client, id, deadline, timeout).await,
        None => wait_all(client, deadline, timeout).await,
    }
}

/// Wait for a download to finish: events say when, a poll every second covers missed ones.
async fn wait_one(
    client: &mut Client,
    id: DownloadId,
    deadline: Option<tokio::time::Instant>,
    timeout: Option<u64>,
) -> anyhow::Result<ExitCode> {
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

/// A download that `sdm wait` waits for: one that will go on by itself. Paused ones wait for a person.
fn runs(status: Status) -> bool {
    matches!(status, Status::Queued | Status::Downloading)
}

/// Wait until no download is queued or downloading, then judge the list as it is: success only when no download
/// in it failed or was cancelled. The whole list is judged, not only what finished while waiting, so a download
/// that failed between `sdm add -i` and `sdm wait` still counts (`sdm clear` takes old ones off the list).
/// Events say when the last one stops; the list, read again then and at least every second, is what decides.
async fn wait_all(
    client: &mut Client,
    deadline: Option<tokio::time::Instant>,
    timeout: Option<u64>,
) -> anyhow::Result<ExitCode> {
    loop {
        let downloads = all_downloads(client).await?;
        let mut running: HashSet<DownloadId> = downloads
            .iter()
            .filter(|d| runs(d.status))
            .map(|d| d.id)
            .collect();
        if running.is_empty() {
            return judge(&downloads);
        }
        // An event about one of these that says it runs is older than the list (events that came while the list
        // was read are held for us): only the poll may bring a finished download back.
        let finished: HashSet<DownloadId> = downloads
            .iter()
            .filter(|d| d.status.is_finished())
            .map(|d| d.id)
            .collect();
        let tick = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(tick);
        while !running.is_empty() {
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                bail!(
                    "{} downloads are still queued or downloading after {}s",
                    running.len(),
                    timeout.unwrap_or(0)
                );
            }
            tokio::select! {
                _ = &mut tick => break,
                event = client.next_event() => match event? {
                    protocol::Event::State { download }
                        if runs(download.status) && !finished.contains(&download.id) =>
                    {
                        running.insert(download.id);
                    }
                    protocol::Event::State { download } => {
                        running.remove(&download.id);
                    }
                    protocol::Event::Removed { id } => {
                        running.remove(&id);
                    }
                    _ => {}
                },
            }
        }
    }
}

/// The verdict of `sdm wait` with no id on a list where nothing runs: how many completed, or which did not.
fn judge(downloads: &[DownloadInfo]) -> anyhow::Result<ExitCode> {
    let count = |s: Status| downloads.iter().filter(|d| d.status == s).count();
    let (completed, paused) = (count(Status::Completed), count(Status::Paused));
    let bad: Vec<&DownloadInfo> = downloads
        .iter()
        .filter(|d| matches!(d.status, Status::Failed | Status::Cancelled))
        .collect();
    if bad.is_empty() {
        let paused = match paused {
            0 => String::new(),
            n => format!(", {n} paused (not waited for)"),
        };
        out(format_args!("{completed} completed{paused}"))?;
        return Ok(ExitCode::SUCCESS);
    }
    /// Downloads named in the summary; the rest are counted.
    const NAMED: usize = 10;
    let mut named: Vec<String> = bad
        .iter()
        .take(NAMED)
        .map(|d| {
            let why = d
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            format!("{} {} ({}{why})", d.id, d.status.as_str(), d.filename)
        })
        .collect();
    if bad.len() > NAMED {
        named.push(format!("and {} more", bad.len() - NAMED));
    }
    bail!(
        "{} of {} finished downloads did not complete: {}; see `sdm ls`",
        bad.len(),
        completed + bad.len(),
        named.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_skips_blanks_and_comments_and_numbers_its_lines() {
        let text = b"# mirrors\nhttp://a/1\n\n  https://b/2  \r\nftp://c/3\n\t# indented comment\nhttp://a/x http://b/x\n\xff\nhttp://d/4";
        let (lines, refused) = read_list(text);
        let got: Vec<(usize, &str)> = lines.iter().map(|l| (l.number, l.url.as_str())).collect();
        assert_eq!(
            got,
            [(2, "http://a/1"), (4, "https://b/2"), (9, "http://d/4")]
        );
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert!(refused[0].starts_with("line 5: ") && refused[0].contains("ftp"));
        assert!(refused[1].starts_with("line 7: ") && refused[1].contains("one URL a line"));
        assert!(refused[2].starts_with("line 8: ") && refused[2].contains("UTF-8"));
    }

    #[test]
    fn batches_fit_in_a_frame_and_keep_the_order() {
        let long = format!("http://example.com/{}", "a".repeat(3000));
        let items: Vec<(usize, AddRequest)> = (1..=1200)
            .map(|n| {
                let url = format!("{long}{n}");
                (
                    n,
                    AddRequest {
                        url,
                        ..AddRequest::default()
                    },
                )
            })
            .collect();
        let (batches, refused) = batches(items);
        assert!(refused.is_empty());
        assert!(batches.len() >= 4, "{} batches", batches.len());
        let mut next = 1;
        for batch in batches {
            assert!(batch.len() <= MAX_ADD_MANY);
            let (numbers, items): (Vec<usize>, Vec<AddRequest>) = batch.into_iter().unzip();
            for n in numbers {
                assert_eq!(n, next);
                next += 1;
            }
            let request = Request {
                id: u64::MAX,
                command: Command::AddMany { items },
            };
            protocol::to_frame(&request, MAX_OUTGOING_FRAME).expect("the batch fits a frame");
        }
        assert_eq!(next, 1201);
    }

    #[test]
    fn many_short_urls_are_cut_at_the_item_limit() {
        let items: Vec<(usize, AddRequest)> = (1..=MAX_ADD_MANY * 2 + 1)
            .map(|n| {
                let url = format!("http://h/{n}");
                (
                    n,
                    AddRequest {
                        url,
                        ..AddRequest::default()
                    },
                )
            })
            .collect();
        let (batches, _) = batches(items);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [MAX_ADD_MANY, MAX_ADD_MANY, 1]);
    }
}
