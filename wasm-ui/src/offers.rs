//! Offers from the service worker (`extension/capture.js`): the browser started the file a failed download was
//! fetching (the same name and size), and the worker holds that browser download until it is answered. An offer lives
//! in the worker's capture record in extension storage (a `capture/<key>` entry with an `offer` field); the popup
//! reads those, follows their changes, and sends its answer to the worker, which acts on it (it holds the browser's
//! headers and the browser's download) and replies once done.

use js_sys::{Array, Function, Object, Promise, Reflect};
use protocol::DownloadId;
use wasm_bindgen::prelude::*;
use wasm_bindgen::{JsCast, JsValue};

/// The prefix of the worker's capture records in extension storage.
const RECORD_PREFIX: &str = "capture/";

/// One offer: the worker's key for it and the failed download it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub key: String,
    pub download_id: DownloadId,
}

/// What the popup answers to an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The failed download takes the browser's address and headers, keeping its bytes when it is the same file.
    Use,
    /// The same, starting over at the browser's address (after a `conflict`: it serves another file).
    Restart,
    /// The browser's download goes to SDM as a download of its own.
    Separate,
}

impl Answer {
    /// From a button's `data-offer`.
    pub fn parse(s: &str) -> Option<Answer> {
        Some(match s {
            "use" => Answer::Use,
            "restart" => Answer::Restart,
            "separate" => Answer::Separate,
            _ => return None,
        })
    }

    /// As the worker reads it.
    fn as_str(self) -> &'static str {
        match self {
            Answer::Use => "use",
            Answer::Restart => "restart",
            Answer::Separate => "separate",
        }
    }
}

/// Why the worker could not do what was answered: the host's error code (`conflict`, ...) and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: String,
    pub message: String,
}

/// The extension API root: Firefox's promise-based `browser`, else `chrome`.
fn ext() -> JsValue {
    let global = js_sys::global();
    Reflect::get(&global, &"browser".into())
        .ok()
        .filter(|b| b.is_object())
        .or_else(|| Reflect::get(&global, &"chrome".into()).ok())
        .unwrap_or(JsValue::UNDEFINED)
}

/// `ext().a.b...` for a path of property names.
fn at(path: &[&str]) -> Option<JsValue> {
    path.iter().try_fold(ext(), |obj, key| {
        Reflect::get(&obj, &(*key).into())
            .ok()
            .filter(|v| !v.is_undefined() && !v.is_null())
    })
}

/// Call method `name` of the object at `path` with `args`; its promise, when it returned one.
fn call(path: &[&str], name: &str, args: &[JsValue]) -> Option<Promise> {
    let this = at(path)?;
    let f: Function = Reflect::get(&this, &name.into()).ok()?.dyn_into().ok()?;
    let args: Array = args.iter().collect();
    f.apply(&this, &args).ok()?.dyn_into().ok()
}

/// The offers in a `storage.local.get(null)` result.
fn offers_in(items: &JsValue) -> Vec<Offer> {
    let Some(items) = items.dyn_ref::<Object>() else {
        return Vec::new();
    };
    let field = |obj: &JsValue, key: &str| Reflect::get(obj, &key.into()).ok();
    Object::entries(items)
        .iter()
        .filter_map(|entry| {
            let entry: Array = entry.dyn_into().ok()?;
            let name = entry.get(0).as_string()?;
            if !name.starts_with(RECORD_PREFIX) {
                return None;
            }
            let record = entry.get(1);
            let offer = field(&record, "offer").filter(|o| o.is_object())?;
            let download_id = field(&offer, "failedId")?.as_f64()?;
            Some(Offer {
                key: field(&record, "key")?.as_string()?,
                download_id: download_id as DownloadId,
            })
        })
        .collect()
}

/// Read the offers standing now and hand them to `done` (none when storage cannot be read).
pub fn load(done: impl FnOnce(Vec<Offer>) + 'static) {
    let Some(promise) = call(&["storage", "local"], "get", &[JsValue::NULL]) else {
        return done(Vec::new());
    };
    let done = std::rc::Rc::new(std::cell::Cell::new(Some(done)));
    let (ok, err) = (done.clone(), done);
    let read = Closure::once(move |items: JsValue| {
        if let Some(f) = ok.take() {
            f(offers_in(&items));
        }
    });
    let failed = Closure::once(move |_: JsValue| {
        if let Some(f) = err.take() {
            f(Vec::new());
        }
    });
    let _ = promise.then2(&read, &failed);
    // Each runs at most once, when the promise settles; the page outlives it.
    read.forget();
    failed.forget();
}

/// Call `changed` whenever a capture record changes (an offer made, answered or expired), for the life of the page.
pub fn watch(changed: impl Fn() + 'static) {
    let Some(event) = at(&["storage", "onChanged"]) else {
        return;
    };
    let listener = Closure::<dyn Fn(JsValue)>::new(move |changes: JsValue| {
        let ours = changes.dyn_ref::<Object>().is_some_and(|c| {
            Object::keys(c)
                .iter()
                .any(|k| k.as_string().is_some_and(|k| k.starts_with(RECORD_PREFIX)))
        });
        if ours {
            changed();
        }
    });
    if let Some(add) = Reflect::get(&event, &"addListener".into())
        .ok()
        .and_then(|f| f.dyn_into::<Function>().ok())
    {
        let _ = add.call1(&event, listener.as_ref());
    }
    listener.forget();
}

/// Send `answer` for the offer `key` to the worker; `done` gets its outcome once the worker has acted.
pub fn answer(key: &str, answer: Answer, done: impl FnOnce(Result<(), Refused>) + 'static) {
    let message = Object::new();
    let _ = Reflect::set(&message, &"type".into(), &"sdm-offer".into());
    let _ = Reflect::set(&message, &"key".into(), &key.into());
    let _ = Reflect::set(&message, &"answer".into(), &answer.as_str().into());
    let refused = |message: String| Refused {
        code: "internal".into(),
        message,
    };
    let Some(promise) = call(&["runtime"], "sendMessage", &[message.into()]) else {
        return done(Err(refused("cannot reach SDM's service worker".into())));
    };
    let done = std::rc::Rc::new(std::cell::Cell::new(Some(done)));
    let (ok, err) = (done.clone(), done);
    let replied = Closure::once(move |reply: JsValue| {
        let field = |key: &str| Reflect::get(&reply, &key.into()).ok();
        let outcome = if field("ok").and_then(|v| v.as_bool()) == Some(true) {
            Ok(())
        } else {
            Err(Refused {
                code: field("code")
                    .and_then(|v| v.as_string())
                    .unwrap_or_else(|| "internal".into()),
                message: field("message")
                    .and_then(|v| v.as_string())
                    .unwrap_or_else(|| "the service worker did not answer".into()),
            })
        };
        if let Some(f) = ok.take() {
            f(outcome);
        }
    });
    let failed = Closure::once(move |e: JsValue| {
        let message = Reflect::get(&e, &"message".into())
            .ok()
            .and_then(|m| m.as_string())
            .unwrap_or_else(|| format!("{e:?}"));
        if let Some(f) = err.take() {
            f(Err(refused(message)));
        }
    });
    let _ = promise.then2(&replied, &failed);
    replied.forget();
    failed.forget();
}
