//! The service's queue from the command line: `add`, `ls` and `wait` (the one-word commands are in [`super::remote`]).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use protocol::{
    AddRequest, AddResult, Command, DownloadId, DownloadInfo, HistoryItem, HistoryResult,
    ListResult, PageRequest, Status,
};
use sdm::client::Client;

use super::print::{self, out};
use super::{parse, service_error};

#[derive(Args)]
pub struct AddArgs {
    url: String,
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

/// Queue a download and print its id.
pub async fn add(client: &mut Client, args: AddArgs) -> anyhow::Result<()> {
    parse::check_url(&args.url)?;
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
    let added: AddResult = client
        .call(Command::Add(req))
        .await
        .map_err(service_error)?;
    out(added.id)
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

/// Wait for a download to finish: events say when, a poll every second covers missed ones.
pub async fn wait(
    client: &mut Client,
    id: DownloadId,
    timeout: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let _: serde_json::Value = client
        .call(Command::Subscribe)
        .await
        .map_err(service_error)?;
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
