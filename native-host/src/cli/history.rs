//! `sdm history`: finished downloads, a page at a time, or `--clear` to forget them.

use anyhow::Result;
use clap::Args;
use protocol::{Command, HistoryResult, PageRequest};
use sdm::client::Client;

use super::print::{self, out};
use super::service_error;

#[derive(Args)]
pub struct HistoryArgs {
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
}

pub async fn run(client: &mut Client, args: HistoryArgs) -> Result<()> {
    let HistoryArgs {
        offset,
        limit,
        clear,
        json,
    } = args;
    if clear {
        let _: serde_json::Value = client
            .call(Command::ClearHistory)
            .await
            .map_err(service_error)?;
        return out("history cleared");
    }
    let page: HistoryResult = client
        .call(Command::History(PageRequest { offset, limit }))
        .await
        .map_err(service_error)?;
    if json {
        return out(serde_json::to_string_pretty(&page)?);
    }
    print::history(&page.items)?;
    let shown = offset + page.items.len();
    if shown < page.total {
        // On stderr, so the table on stdout stays a table.
        eprintln!(
            "({} to {shown} of {}: use --offset {shown} for more)",
            offset + 1,
            page.total,
        );
    }
    Ok(())
}
