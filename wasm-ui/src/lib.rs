//! SDM's popup, written in Rust and compiled to WebAssembly; `popup.js` only loads it.
//!
//! # Layout
//! - [`format`]: sizes, speeds, times left and percentages as text (pure, unit-tested).
//! - [`model`]: the popup's mirror of the host's download list, updated by events; the text of each row (pure).
//! - [`forms`]: the add and settings forms read into protocol requests (pure), checked by `protocol::validate`.
//! - [`view_state`]: small view text from numbers (pure).
//! - [`host`]: the popup's own native messaging port to the host.
//! - [`prefs`]: this browser's own preferences in extension storage (notifications on or off).
//! - [`offers`]: the service worker's offers of a browser download's address for a failed download, and answers.
//! - [`dom`]: a few web-sys helpers.
//! - [`app`]: the state, the `Message` enum and the one `update` match that drives the page; its `rows` module builds
//!   and updates the downloads list, its `panels` module reads and fills the add form, history and settings.
//!
//! **Invariant:** the popup shows what the host says. It keeps no download state of its own beyond a mirror that a
//! `list` reply rebuilds, and it reads and writes frames only through the `protocol` types.

pub mod app;
pub mod dom;
pub mod format;
pub mod forms;
pub mod host;
pub mod model;
pub mod offers;
pub mod prefs;
pub mod view_state;

use wasm_bindgen::prelude::*;

#[wasm_bindgen(start)]
pub fn main() {
    console_error_panic_hook::set_once();
    app::start();
}
