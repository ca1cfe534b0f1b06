//! The downloads list: one row per download, built from the row template once and then updated in place.

use protocol::{DownloadId, DownloadInfo, Status};
use wasm_bindgen::JsCast;
use web_sys::Element;

use super::{App, Message, dispatch};
use crate::dom::{self, child, set_attr};
use crate::model::RowText;

/// Rows built at once when the list arrives (a screenful and more), then per later task (each well under 50 ms).
const FIRST_CHUNK: usize = 60;
pub(super) const CHUNK: usize = 150;

/// The live parts of one download's row.
pub(super) struct Row {
    pub(super) li: Element,
    name: Element,
    status: Element,
    bar: Element,
    fill: Element,
    percent: Element,
    detail: Element,
    speed: Element,
    eta: Element,
    connections: Element,
    /// What is on screen now, so an update writes only what changed.
    shown: Option<(Status, RowText)>,
}

impl App {
    /// Replace every row (after a fresh `list`). The first rows are built at once; the rest follow in chunks, each in
    /// its own task, so a thousand downloads never block the page for long.
    pub(super) fn rebuild_rows(&mut self) {
        self.rows.clear();
        self.list.set_text_content(None);
        self.unbuilt = self.model.shown_order().into();
        self.render_chunk(FIRST_CHUNK);
    }

    /// Build up to `max` of the rows not built yet, in the order they are shown, and append them; schedule the next
    /// chunk.
    pub(super) fn render_chunk(&mut self, max: usize) {
        if self.unbuilt.is_empty() {
            return;
        }
        let perf = web_sys::window().and_then(|w| w.performance());
        if let Some(perf) = &perf {
            let _ = perf.mark("sdm-rows-start");
        }
        let fragment = self.doc.create_document_fragment();
        let mut built = 0;
        while built < max {
            let Some(id) = self.unbuilt.pop_front() else {
                break;
            };
            // Removed since the list came, or placed already by an event.
            let Some(d) = self.model.downloads.get(&id) else {
                continue;
            };
            if self.rows.contains_key(&id) {
                continue;
            }
            let mut row = self.new_row(id);
            render_row(&mut row, d);
            let _ = fragment.append_child(&row.li);
            self.rows.insert(id, row);
            self.show_offer(id);
            built += 1;
        }
        let _ = self.list.append_child(&fragment);
        // How long each chunk took, for the browser tests' numbers (`sdm-rows` in the performance timeline).
        if let Some(perf) = perf {
            let _ = perf.mark("sdm-rows-end");
            let _ = perf.measure_with_start_mark_and_end_mark(
                "sdm-rows",
                "sdm-rows-start",
                "sdm-rows-end",
            );
        }
        self.mark_first_row();
        if !self.unbuilt.is_empty() && !self.render_scheduled {
            self.render_scheduled = true;
            dom::after(0, || dispatch(Message::RenderMore));
        }
    }

    pub(super) fn upsert_row(&mut self, id: DownloadId) {
        let Some(d) = self.model.downloads.get(&id) else {
            return;
        };
        if let Some(row) = self.rows.get_mut(&id) {
            let was_finished = row.shown.as_ref().is_some_and(|(s, _)| s.is_finished());
            render_row(row, d);
            // Ended (or resumed after failing): it moves between the queue's rows and the finished ones.
            if was_finished != d.status.is_finished() {
                self.place_row(id);
            }
            return;
        }
        // Not built yet: its chunk will build it from the model, as it is by then.
        if self.unbuilt.contains(&id) {
            return;
        }
        let mut row = self.new_row(id);
        render_row(&mut row, d);
        self.rows.insert(id, row);
        self.show_offer(id);
        self.place_row(id);
        self.mark_first_row();
    }

    /// Put download `id`'s row where [`crate::model::Model::shown_order`] has it: before the next row shown after
    /// it that is built, else last. Focus inside the row (a "More" menu's button) stays there.
    pub(super) fn place_row(&self, id: DownloadId) {
        let Some(row) = self.rows.get(&id) else {
            return;
        };
        let order = self.model.shown_order();
        let before = order
            .iter()
            .skip_while(|&&d| d != id)
            .skip(1)
            .find_map(|d| self.rows.get(d))
            .map(|r| r.li.clone());
        // Already in place (a new row is in no list yet).
        if row.li.parent_node().is_some() && row.li.next_element_sibling() == before {
            return;
        }
        let focused = self
            .doc
            .active_element()
            .filter(|f| row.li.contains(Some(f.as_ref())));
        let _ = self
            .list
            .insert_before(&row.li, before.as_ref().map(|e| e.as_ref()));
        if let Some(f) = focused.and_then(|f| f.dyn_into::<web_sys::HtmlElement>().ok()) {
            let _ = f.focus();
        }
    }

    fn new_row(&self, id: DownloadId) -> Row {
        let li: Element = self
            .template
            .clone_node_with_deep(true)
            .ok()
            .and_then(|n| n.dyn_into().ok())
            .expect("the row template clones");
        set_attr(&li, "data-id", &id.to_string());
        Row {
            name: child(&li, ".name"),
            status: child(&li, ".status"),
            bar: child(&li, ".bar"),
            fill: child(&li, ".fill"),
            percent: child(&li, ".pct"),
            detail: child(&li, ".detail"),
            speed: child(&li, ".speed"),
            eta: child(&li, ".eta"),
            connections: child(&li, ".conns"),
            li,
            shown: None,
        }
    }

    /// Record when the first row reached the screen (read by the browser tests' timing).
    fn mark_first_row(&mut self) {
        if self.first_row_marked || self.rows.is_empty() {
            return;
        }
        self.first_row_marked = true;
        if let Some(perf) = web_sys::window().and_then(|w| w.performance()) {
            let _ = perf.mark("sdm-first-row");
        }
    }
}

/// Write a download into its row, touching only what changed since the last write.
fn render_row(row: &mut Row, d: &DownloadInfo) {
    let text = RowText::of(d);
    let (old_status, old) = match &row.shown {
        Some((s, t)) => (Some(*s), Some(t)),
        None => (None, None),
    };
    let changed = |f: fn(&RowText) -> &str| old.is_none_or(|o| f(o) != f(&text));
    if changed(|t| &t.name) {
        row.name.set_text_content(Some(&text.name));
        set_attr(&row.name, "title", &d.url);
    }
    if old_status != Some(d.status) {
        set_attr(&row.li, "data-status", d.status.as_str());
        row.status.set_text_content(Some(text.status));
    }
    if old.is_none_or(|o| o.percent != text.percent) {
        match text.percent {
            Some(p) => {
                set_attr(&row.fill, "style", &format!("width:{p}%"));
                set_attr(&row.bar, "aria-valuenow", &p.to_string());
                let _ = row.bar.class_list().remove_1("indeterminate");
            }
            None => {
                let _ = row.bar.remove_attribute("aria-valuenow");
                let _ = row.bar.class_list().add_1("indeterminate");
            }
        }
    }
    for (el, f) in [
        (
            &row.percent,
            (|t: &RowText| t.percent_text.as_str()) as fn(&RowText) -> &str,
        ),
        (&row.detail, |t| &t.detail),
        (&row.speed, |t| &t.speed),
        (&row.eta, |t| &t.eta),
        (&row.connections, |t| &t.connections),
    ] {
        if changed(f) {
            el.set_text_content(Some(f(&text)));
        }
    }
    row.shown = Some((d.status, text));
}
