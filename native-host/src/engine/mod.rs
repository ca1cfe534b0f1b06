//! The download engine.
//!
//! # Layout
//! - [`Engine`] (this file): the queue. Holds every download, runs up to `max_concurrent` of them, applies commands and
//!   settings live, pushes [`protocol::Event`]s, and checkpoints state.
//! - [`transfer`]: one file, start to finish: probe, segmented ranged download into a `.part` file, validation, rename.
//! - [`probe`]: what the server says about a URL (size, ranges, validators, name).
//! - [`segments`]: the ranges still to fetch and how a free connection takes half of the largest.
//! - [`ratelimit`]: token buckets, per download under a global one.
//! - [`filename`]: Content-Disposition parsing and file-name sanitizing.
//! - [`state`]: the JSON files in the data directory, written atomically.

pub mod filename;
pub mod probe;
pub mod ratelimit;
pub mod segments;
pub mod state;
pub mod transfer;

use std::path::PathBuf;

use protocol::{
    AddRequest, DownloadId, DownloadInfo, ErrorBody, ErrorCode, Event, HistoryResult, ListResult,
    PageRequest, Settings, SettingsPatch,
};
use tokio::sync::broadcast;

/// Where the engine keeps its files.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The user data directory: state, history and settings live here.
    pub data_dir: PathBuf,
    /// Where downloads go while the settings name no folder.
    pub default_download_dir: PathBuf,
}

/// A request the engine refused, with a code a program can match on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

impl From<ApiError> for ErrorBody {
    fn from(e: ApiError) -> ErrorBody {
        ErrorBody {
            code: e.code,
            message: e.message,
        }
    }
}

/// The queue of downloads. Cheap to clone; every clone drives the same queue.
#[derive(Clone)]
pub struct Engine {
    inner: std::sync::Arc<()>,
}

impl Engine {
    /// Load state from `config.data_dir` and start: downloads that were running resume by themselves.
    pub async fn start(config: EngineConfig) -> anyhow::Result<Engine> {
        todo!("{config:?}")
    }

    /// What start-up found wrong and set aside (a damaged state file, say), for the service to report.
    pub fn warnings(&self) -> Vec<String> {
        todo!()
    }

    pub fn add(&self, req: AddRequest) -> Result<DownloadId, ApiError> {
        todo!("{req:?}")
    }

    pub fn list(&self, page: PageRequest) -> ListResult {
        todo!("{page:?}")
    }

    pub fn get(&self, id: DownloadId) -> Result<DownloadInfo, ApiError> {
        todo!("{id}")
    }

    pub fn pause(&self, id: DownloadId) -> Result<(), ApiError> {
        todo!("{id}")
    }

    pub fn resume(&self, id: DownloadId) -> Result<(), ApiError> {
        todo!("{id}")
    }

    pub fn cancel(&self, id: DownloadId) -> Result<(), ApiError> {
        todo!("{id}")
    }

    /// Forget a download (cancelling it if it runs); `delete_file` also deletes its file or `.part` file.
    pub fn remove(&self, id: DownloadId, delete_file: bool) -> Result<(), ApiError> {
        todo!("{id}{delete_file}")
    }

    pub fn history(&self, page: PageRequest) -> Result<HistoryResult, ApiError> {
        todo!("{page:?}")
    }

    pub fn clear_history(&self) -> Result<(), ApiError> {
        todo!()
    }

    pub fn settings(&self) -> Settings {
        todo!()
    }

    /// Validate and apply a settings change at once (running downloads see new caps and limits live).
    pub fn set_settings(&self, patch: SettingsPatch) -> Result<Settings, ApiError> {
        todo!("{patch:?}")
    }

    /// Events from now on: `state` on every change of status, `progress` at most 5 times a second.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        todo!()
    }

    /// Stop every transfer and write state; running downloads resume at the next start.
    pub async fn shutdown(&self) {
        todo!()
    }
}
