//! A few DOM helpers, so the view code reads as what it does.

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{Document, Element, HtmlInputElement, HtmlTextAreaElement};

pub fn document() -> Document {
    web_sys::window()
        .and_then(|w| w.document())
        .expect("the popup runs in a page with a document")
}

/// An element `popup.html` is known to have.
pub fn by_id(doc: &Document, id: &str) -> Element {
    doc.get_element_by_id(id)
        .unwrap_or_else(|| panic!("popup.html has no #{id}"))
}

pub fn input(doc: &Document, id: &str) -> HtmlInputElement {
    by_id(doc, id)
        .dyn_into()
        .unwrap_or_else(|_| panic!("#{id} is not an <input>"))
}

pub fn textarea(doc: &Document, id: &str) -> HtmlTextAreaElement {
    by_id(doc, id)
        .dyn_into()
        .unwrap_or_else(|_| panic!("#{id} is not a <textarea>"))
}

/// The first descendant matching `selector`, which the row template is known to have.
pub fn child(parent: &Element, selector: &str) -> Element {
    parent
        .query_selector(selector)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("template has no {selector}"))
}

pub fn set_hidden(el: &Element, hidden: bool) {
    let result = if hidden {
        el.set_attribute("hidden", "")
    } else {
        el.remove_attribute("hidden")
    };
    // Setting or removing a plain attribute on a live element cannot fail.
    let _ = result;
}

pub fn set_attr(el: &Element, name: &str, value: &str) {
    let _ = el.set_attribute(name, value);
}

/// Call `handler` for every `event` on `target`, for the life of the page.
pub fn listen(target: &Element, event: &str, handler: impl FnMut(web_sys::Event) + 'static) {
    let closure = Closure::<dyn FnMut(web_sys::Event)>::new(handler);
    let _ = target.add_event_listener_with_callback(event, closure.as_ref().unchecked_ref());
    closure.forget();
}

/// Run `f` once after `ms` milliseconds.
pub fn after(ms: i32, f: impl FnOnce() + 'static) {
    if let Some(w) = web_sys::window() {
        let cb = Closure::once_into_js(f);
        let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(cb.unchecked_ref(), ms);
    }
}

/// Local date and time of a Unix time in milliseconds.
pub fn local_time(ms: u64) -> String {
    js_sys::Date::new(&JsValue::from_f64(ms as f64))
        .to_locale_string("default", &JsValue::UNDEFINED)
        .into()
}
