//! `sdm serve`: the engine service in the foreground, for this user's data directory.

use std::process::ExitCode;

use sdm::{paths, service};

pub async fn run() -> anyhow::Result<ExitCode> {
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
