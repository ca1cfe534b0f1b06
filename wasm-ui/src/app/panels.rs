//! The add form and the history and settings panels: reading what was typed, and filling in what the host says.

use protocol::{Command, HistoryResult, Settings};
use web_sys::Element;

use super::{App, Pending};
use crate::dom::{self, by_id, input, set_attr, set_hidden, textarea};
use crate::forms::{AddForm, SettingsForm};
use crate::{format, view_state};

impl App {
    pub(super) fn submit_add(&mut self) {
        let form = AddForm {
            url: input(&self.doc, "add-url").value(),
            filename: input(&self.doc, "add-filename").value(),
            threads: input(&self.doc, "add-threads").value(),
            retries: input(&self.doc, "add-retries").value(),
            speed_kib: input(&self.doc, "add-speed").value(),
        };
        match form.to_request() {
            Ok(req) => self.send(Command::Add(req), Pending::Add),
            Err(e) => self.notice(&e),
        }
    }

    pub(super) fn render_history(&mut self, page: HistoryResult) {
        self.history_total = page.total;
        let list = by_id(&self.doc, "history");
        list.set_text_content(None);
        let fragment = self.doc.create_document_fragment();
        for item in &page.items {
            let li = self.doc.create_element("li").expect("create <li>");
            set_attr(&li, "class", "hist");
            set_attr(&li, "data-status", item.status.as_str());
            set_attr(&li, "title", &item.url);
            let name = if item.filename.is_empty() {
                format::url_basename(&item.url)
            } else {
                &item.filename
            };
            let size = item.total.unwrap_or(item.downloaded);
            for (class, text) in [
                ("name", name.to_owned()),
                ("status", crate::model::status_label(item.status).to_owned()),
                ("detail", format::bytes(size)),
                ("when", dom::local_time(item.finished_at)),
            ] {
                let span = self.doc.create_element("span").expect("create <span>");
                set_attr(&span, "class", class);
                span.set_text_content(Some(&text));
                let _ = li.append_child(&span);
            }
            let _ = fragment.append_child(&li);
        }
        let _ = list.append_child(&fragment);
        let pager = view_state::history_pager(self.history_offset, page.items.len(), page.total);
        by_id(&self.doc, "history-page").set_text_content(Some(&pager.label));
        set_disabled(&by_id(&self.doc, "history-prev"), !pager.has_prev);
        set_disabled(&by_id(&self.doc, "history-next"), !pager.has_next);
        set_disabled(&by_id(&self.doc, "history-clear"), page.total == 0);
        set_hidden(&by_id(&self.doc, "history-empty"), page.total != 0);
    }

    pub(super) fn fill_settings(&self, s: &Settings) {
        let form = SettingsForm::from_settings(s);
        input(&self.doc, "set-max").set_value(&form.max_concurrent);
        input(&self.doc, "set-speed").set_value(&form.speed_kib);
        input(&self.doc, "set-dir").set_value(&form.download_dir);
        input(&self.doc, "set-capture").set_checked(form.capture_enabled);
        input(&self.doc, "set-min").set_value(&form.capture_min_mib);
        textarea(&self.doc, "set-exclude").set_value(&form.capture_exclude);
    }

    pub(super) fn editing_settings(&self) -> bool {
        let form = by_id(&self.doc, "settings-form");
        self.doc
            .active_element()
            .is_some_and(|focused| form.contains(Some(&focused)))
    }

    pub(super) fn save_settings(&mut self) {
        let form = SettingsForm {
            max_concurrent: input(&self.doc, "set-max").value(),
            speed_kib: input(&self.doc, "set-speed").value(),
            download_dir: input(&self.doc, "set-dir").value(),
            capture_enabled: input(&self.doc, "set-capture").checked(),
            capture_min_mib: input(&self.doc, "set-min").value(),
            capture_exclude: textarea(&self.doc, "set-exclude").value(),
        };
        match form.to_patch() {
            Ok(settings) => self.send(Command::SetSettings { settings }, Pending::SetSettings),
            Err(e) => self.notice(&e),
        }
    }
}

fn set_disabled(el: &Element, disabled: bool) {
    if disabled {
        set_attr(el, "disabled", "");
    } else {
        let _ = el.remove_attribute("disabled");
    }
}
