//! What this browser's SDM does apart from the host: kept in the extension's storage (`chrome.storage.local`), where
//! the service worker reads it. One preference so far: whether finished downloads raise a notification.

use js_sys::{Object, Promise, Reflect};
use wasm_bindgen::prelude::*;

/// The storage key the service worker reads (`extension/badge.js`); absent means on.
pub const NOTIFY_KEY: &str = "sdm-notify";

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(catch, js_namespace = ["chrome", "storage", "local"], js_name = get)]
    fn storage_get(key: &str) -> Result<Promise, JsValue>;
    #[wasm_bindgen(catch, js_namespace = ["chrome", "storage", "local"], js_name = set)]
    fn storage_set(items: &JsValue) -> Result<Promise, JsValue>;
}

/// Read whether notifications are on, and hand it to `done` (on when it cannot be read).
pub fn load_notify(done: impl FnOnce(bool) + 'static) {
    let Ok(promise) = storage_get(NOTIFY_KEY) else {
        return done(true);
    };
    let done = std::rc::Rc::new(std::cell::Cell::new(Some(done)));
    let (ok, err) = (done.clone(), done);
    let read = Closure::once(move |items: JsValue| {
        let on = Reflect::get(&items, &NOTIFY_KEY.into())
            .ok()
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        if let Some(f) = ok.take() {
            f(on);
        }
    });
    let failed = Closure::once(move |_: JsValue| {
        if let Some(f) = err.take() {
            f(true);
        }
    });
    let _ = promise.then2(&read, &failed);
    // Each runs at most once, when the promise settles; the page outlives it.
    read.forget();
    failed.forget();
}

/// Turn notifications on or off; `done` gets the error text when storage refuses.
pub fn save_notify(on: bool, done: impl FnOnce(Result<(), String>) + 'static) {
    let items = Object::new();
    let _ = Reflect::set(&items, &NOTIFY_KEY.into(), &on.into());
    let promise = match storage_set(&items) {
        Ok(p) => p,
        Err(e) => return done(Err(format!("{e:?}"))),
    };
    let done = std::rc::Rc::new(std::cell::Cell::new(Some(done)));
    let (ok, err) = (done.clone(), done);
    let saved = Closure::once(move |_: JsValue| {
        if let Some(f) = ok.take() {
            f(Ok(()));
        }
    });
    let failed = Closure::once(move |e: JsValue| {
        if let Some(f) = err.take() {
            f(Err(e.as_string().unwrap_or_else(|| format!("{e:?}"))));
        }
    });
    let _ = promise.then2(&saved, &failed);
    saved.forget();
    failed.forget();
}
