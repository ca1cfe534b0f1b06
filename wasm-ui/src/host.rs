//! The popup's native messaging port to the host (`chrome.runtime.connectNative`).
//!
//! The popup opens its own port instead of going through the service worker: each port gets its own relay process,
//! its own request ids and its own event subscription, so the worker stays a small router and a slow popup cannot
//! hold up capture. Frames cross the JS boundary as JSON text and are read with the `protocol` types.

use js_sys::{Function, JSON, Reflect};
use protocol::{Command, HOST_NAME, Request};
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    /// `runtime.Port`.
    pub type Port;
    /// `runtime.Port.onMessage` / `onDisconnect`: an extension event with `addListener`.
    pub type ExtEvent;

    #[wasm_bindgen(catch, js_namespace = ["chrome", "runtime"], js_name = connectNative)]
    fn connect_native(name: &str) -> Result<Port, JsValue>;

    #[wasm_bindgen(method, catch, js_name = postMessage)]
    fn post_message(this: &Port, message: &JsValue) -> Result<(), JsValue>;
    #[wasm_bindgen(method)]
    fn disconnect(this: &Port);
    #[wasm_bindgen(method, getter, js_name = onMessage)]
    fn on_message(this: &Port) -> ExtEvent;
    #[wasm_bindgen(method, getter, js_name = onDisconnect)]
    fn on_disconnect(this: &Port) -> ExtEvent;
    #[wasm_bindgen(method, js_name = addListener)]
    fn add_listener(this: &ExtEvent, listener: &Function);
}

/// An open port and the ids of the requests sent on it.
pub struct Host {
    port: Port,
    next_id: u64,
}

impl Host {
    /// Open the port. `on_frame` gets every frame as JSON text, and whether it is an event (it has an `event` field,
    /// as the protocol defines; knowing this up front lets the popup read it straight as an `Event` or a `Reply`
    /// instead of through the untagged `Incoming`, which costs wasm size and a second pass). `on_gone` gets why the
    /// port closed.
    pub fn connect(
        on_frame: impl FnMut(String, bool) + 'static,
        on_gone: impl FnOnce(String) + 'static,
    ) -> Result<Host, String> {
        let port = connect_native(HOST_NAME).map_err(|e| error_text(&e))?;
        let mut on_frame = on_frame;
        let frame = Closure::<dyn FnMut(JsValue)>::new(move |v: JsValue| {
            let is_event = Reflect::has(&v, &"event".into()).unwrap_or(false);
            let text = JSON::stringify(&v).map(String::from).unwrap_or_default();
            on_frame(text, is_event);
        });
        port.on_message()
            .add_listener(frame.as_ref().unchecked_ref());
        // The port lives as long as the popup (or until a reconnect), so its listeners may too.
        frame.forget();
        let gone = Closure::once_into_js(move |p: JsValue| on_gone(disconnect_reason(&p)));
        port.on_disconnect().add_listener(gone.unchecked_ref());
        Ok(Host { port, next_id: 1 })
    }

    /// Send a request; returns its id so the reply can be matched.
    pub fn send(&mut self, command: Command) -> Result<u64, String> {
        let id = self.next_id;
        self.next_id += 1;
        let text = serde_json::to_string(&Request { id, command }).map_err(|e| e.to_string())?;
        let value = JSON::parse(&text).map_err(|e| error_text(&e))?;
        self.port.post_message(&value).map_err(|e| error_text(&e))?;
        Ok(id)
    }

    pub fn close(&self) {
        self.port.disconnect();
    }
}

/// Chrome reports why a port closed in `runtime.lastError` (read inside the listener); Firefox in `port.error`.
fn disconnect_reason(port: &JsValue) -> String {
    let from = |obj: &JsValue, key: &str| {
        Reflect::get(obj, &key.into())
            .ok()
            .filter(|v| !v.is_undefined() && !v.is_null())
    };
    let runtime = from(&js_sys::global(), "chrome").and_then(|c| from(&c, "runtime"));
    runtime
        .and_then(|r| from(&r, "lastError"))
        .or_else(|| from(port, "error"))
        .map(|e| error_text(&e))
        .unwrap_or_else(|| "the host closed the connection".into())
}

fn error_text(e: &JsValue) -> String {
    Reflect::get(e, &"message".into())
        .ok()
        .and_then(|m| m.as_string())
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}
