//! Commands on downloads already in the queue: `set-url`, `limit`, `move`, `pause --all`, `resume --all` and
//! `clear`.

use clap::ValueEnum;
use protocol::{Command, CountResult, DownloadId, MoveTo};
use sdm::client::Client;

use super::print::out;
use super::service_error;

/// Where `sdm move` puts a download in the queue.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Place {
    Top,
    Bottom,
    Up,
    Down,
}

impl From<Place> for MoveTo {
    fn from(p: Place) -> MoveTo {
        match p {
            Place::Top => MoveTo::Top,
            Place::Bottom => MoveTo::Bottom,
            Place::Up => MoveTo::Up,
            Place::Down => MoveTo::Down,
        }
    }
}

/// Send `command`, whose answer is only "done".
async fn call(client: &mut Client, command: Command) -> anyhow::Result<()> {
    let _: serde_json::Value = client.call(command).await.map_err(service_error)?;
    Ok(())
}

/// `sdm set-url ID URL [--restart]`: a new address; the bytes already down are kept when it serves the same file.
pub async fn set_url(
    client: &mut Client,
    id: DownloadId,
    url: String,
    restart: bool,
) -> anyhow::Result<()> {
    super::parse::check_url(&url)?;
    let command = Command::SetUrl {
        download_id: id,
        url,
        restart,
        headers: None,
        referrer: None,
    };
    // Another file is refused with `conflict`, whose message says to ask for a restart.
    call(client, command).await?;
    if restart {
        out(format_args!("new address for {id}, starting over"))
    } else {
        out(format_args!("new address for {id}"))
    }
}

/// `sdm limit ID RATE`: the download's speed cap, applied at once (0 lifts it).
pub async fn limit(client: &mut Client, id: DownloadId, rate: u64) -> anyhow::Result<()> {
    let command = Command::Update {
        download_id: id,
        bandwidth_limit: Some(rate),
        threads: None,
    };
    call(client, command).await?;
    if rate == 0 {
        out(format_args!("no speed cap for {id}"))
    } else {
        out(format_args!(
            "speed cap of {id}: {}/s",
            indicatif::HumanBytes(rate)
        ))
    }
}

/// `sdm move ID top|bottom|up|down`: the download's place in the queue's order.
pub async fn move_to(client: &mut Client, id: DownloadId, to: Place) -> anyhow::Result<()> {
    let command = Command::Move {
        download_id: id,
        to: to.into(),
    };
    call(client, command).await?;
    out(format_args!("moved {id}"))
}

/// `pause --all`, `resume --all`, `clear`: one command on the whole queue; `done` words how many it changed.
pub async fn bulk(client: &mut Client, command: Command, done: &str) -> anyhow::Result<()> {
    let result: CountResult = client.call(command).await.map_err(service_error)?;
    out(format_args!("{done} {}", result.count))
}
