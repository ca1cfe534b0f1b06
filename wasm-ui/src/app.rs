//! The popup: one [`App`] owns all state, every input becomes a [`Message`], and [`App::update`] is the one `match`
//! that handles them (the wasm-bindgen TodoMVC shape).
//!
//! Rows are created once per download and then updated in place by id; an event touches only the text that changed.
//!
//! # Layout
//! - This file: [`App`], [`Message`], the dispatch queue, wiring the page's inputs, and talking to the host.
//! - `rows`: the downloads list, built in chunks and updated in place.
//! - `panels`: the add form and the history and settings panels.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};

use protocol::{
    Command, CountResult, DownloadId, ErrorCode, Event, HistoryResult, ListResult, MAX_PAGE,
    MoveTo, PageRequest, Reply, SettingsResult,
};
use wasm_bindgen::JsCast;
use web_sys::{Document, Element, HtmlTemplateElement, KeyboardEvent};

use crate::dom::{self, by_id, input, set_attr, set_hidden};
use crate::forms::RowForm;
use crate::host::Host;
use crate::model::{Change, Model};
use crate::offers::{self, Answer, Offer, Refused};
use crate::prefs;
use crate::view_state;

mod panels;
mod rows;

use rows::Row;

/// History rows per page.
const HISTORY_PAGE: usize = 50;
/// After losing a host that was answering, reconnect once after this long.
const RECONNECT_AFTER_MS: i32 = 1000;
/// How long the host has to answer the first `ping` before the popup says it is not answering.
const PING_TIMEOUT_MS: i32 = 5000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Downloads,
    History,
    Settings,
}

impl Tab {
    const ALL: [Tab; 3] = [Tab::Downloads, Tab::History, Tab::Settings];

    fn name(self) -> &'static str {
        match self {
            Tab::Downloads => "downloads",
            Tab::History => "history",
            Tab::Settings => "settings",
        }
    }
}

/// A button in a download's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Cancel,
    Remove,
    OpenFile,
    OpenFolder,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "cancel" => Action::Cancel,
            "remove" => Action::Remove,
            "open" => Action::OpenFile,
            "folder" => Action::OpenFolder,
            _ => return None,
        })
    }

    fn command(self, download_id: DownloadId) -> Command {
        match self {
            Action::Pause => Command::Pause { download_id },
            Action::Resume => Command::Resume { download_id },
            Action::Cancel => Command::Cancel { download_id },
            Action::Remove => Command::Remove {
                download_id,
                delete_file: false,
            },
            Action::OpenFile => Command::Open {
                download_id,
                folder: false,
            },
            Action::OpenFolder => Command::Open {
                download_id,
                folder: true,
            },
        }
    }
}

/// A header button acting on every download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bulk {
    PauseAll,
    ResumeAll,
    ClearFinished,
}

impl Bulk {
    const ALL: [Bulk; 3] = [Bulk::PauseAll, Bulk::ResumeAll, Bulk::ClearFinished];

    /// The id of its button in `popup.html`.
    fn button(self) -> &'static str {
        match self {
            Bulk::PauseAll => "pause-all",
            Bulk::ResumeAll => "resume-all",
            Bulk::ClearFinished => "clear-finished",
        }
    }

    fn command(self) -> Command {
        match self {
            Bulk::PauseAll => Command::PauseAll,
            Bulk::ResumeAll => Command::ResumeAll,
            Bulk::ClearFinished => Command::ClearFinished,
        }
    }

    /// What the notice says it did to `count` downloads.
    fn done(self, count: usize) -> String {
        let verb = match self {
            Bulk::PauseAll => "Paused",
            Bulk::ResumeAll => "Resumed",
            Bulk::ClearFinished => "Cleared",
        };
        let s = if count == 1 { "" } else { "s" };
        format!("{verb} {count} download{s}")
    }
}

/// What a row's "More" menu asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOp {
    /// The typed address; `restart`: start over there ("Start over", offered after a `conflict`).
    SetUrl {
        restart: bool,
    },
    /// The typed speed cap and connections.
    Update,
    Move(MoveTo),
}

impl RowOp {
    fn parse(s: &str) -> Option<RowOp> {
        Some(match s {
            "set-url" => RowOp::SetUrl { restart: false },
            "restart-url" => RowOp::SetUrl { restart: true },
            "update" => RowOp::Update,
            "top" => RowOp::Move(MoveTo::Top),
            "up" => RowOp::Move(MoveTo::Up),
            "down" => RowOp::Move(MoveTo::Down),
            _ => return None,
        })
    }
}

/// Everything that can happen to the popup.
#[derive(Debug)]
pub enum Message {
    /// Open (or reopen) the port to the host.
    Connect,
    /// A frame from the port opened as connection `generation`.
    Frame {
        generation: u64,
        text: String,
        is_event: bool,
    },
    /// The port of connection `generation` closed.
    Disconnected {
        generation: u64,
        reason: String,
    },
    /// The first ping of connection `generation` may have gone unanswered.
    PingDeadline {
        generation: u64,
    },
    ShowTab(Tab),
    /// Arrow keys, Home and End on the tab list.
    TabKey(String),
    SubmitAdd,
    Row(DownloadId, Action),
    Bulk(Bulk),
    /// Notifications turned on or off in the settings (saved at once, in extension storage).
    Notify(bool),
    /// Whether notifications are on, as read from extension storage.
    NotifyLoaded(bool),
    /// A row's "More" menu, with what was typed in it.
    RowOp(DownloadId, RowOp, RowForm),
    /// The worker's offers standing now (read from extension storage).
    OffersLoaded(Vec<Offer>),
    /// An answer to the offer shown on a failed download's row.
    Offer(DownloadId, Answer),
    /// What the worker did with that answer.
    OfferAnswered(DownloadId, Answer, Result<(), Refused>),
    /// Move through history by this many pages.
    HistoryPage(i64),
    ClearHistory,
    SaveSettings,
    /// Build the next chunk of rows.
    RenderMore,
}

/// What a request in flight was for, so its reply can be handled.
#[derive(Debug, Clone, Copy)]
enum Pending {
    Ping,
    Subscribe,
    List { offset: usize },
    Add,
    Row,
    Bulk(Bulk),
    RowOp(DownloadId, RowOp),
    History,
    ClearHistory,
    GetSettings,
    SetSettings,
}

pub struct App {
    doc: Document,
    host: Option<Host>,
    /// Counts connections, so callbacks from an old port are ignored.
    generation: u64,
    online: bool,
    pending: HashMap<u64, Pending>,
    model: Model,
    rows: HashMap<DownloadId, Row>,
    template: Element,
    list: Element,
    tab: Tab,
    history_offset: usize,
    history_total: usize,
    /// History changed while its tab was hidden: reload when shown.
    history_stale: bool,
    first_row_marked: bool,
    /// Failed download → the key of the worker's offer of a browser download's address for it.
    offers: HashMap<DownloadId, String>,
    /// The rows not built yet, in the order they are shown (see [`App::render_chunk`]); empty when every row is.
    unbuilt: VecDeque<DownloadId>,
    render_scheduled: bool,
}

thread_local! {
    static APP: RefCell<Option<App>> = const { RefCell::new(None) };
    static QUEUE: RefCell<VecDeque<Message>> = const { RefCell::new(VecDeque::new()) };
    static RUNNING: Cell<bool> = const { Cell::new(false) };
}

/// Queue a message and run the queue, unless a message is being handled already (then it runs right after).
pub fn dispatch(msg: Message) {
    QUEUE.with(|q| q.borrow_mut().push_back(msg));
    if RUNNING.with(|r| r.replace(true)) {
        return;
    }
    while let Some(msg) = QUEUE.with(|q| q.borrow_mut().pop_front()) {
        APP.with(|app| {
            if let Some(app) = app.borrow_mut().as_mut() {
                app.update(msg);
            }
        });
    }
    RUNNING.with(|r| r.set(false));
}

/// Build the app over `popup.html`, wire its inputs to messages and connect to the host.
pub fn start() {
    if let Some(perf) = web_sys::window().and_then(|w| w.performance()) {
        // When the wasm is compiled and running, for the browser tests' numbers.
        let _ = perf.mark("sdm-start");
    }
    let doc = dom::document();
    let template: HtmlTemplateElement = by_id(&doc, "row-template")
        .dyn_into()
        .expect("#row-template is a <template>");
    let template = template
        .content()
        .first_element_child()
        .expect("the row template has an element");
    let app = App {
        list: by_id(&doc, "downloads"),
        template,
        doc: doc.clone(),
        host: None,
        generation: 0,
        online: false,
        pending: HashMap::new(),
        model: Model::default(),
        rows: HashMap::new(),
        tab: Tab::Downloads,
        history_offset: 0,
        history_total: 0,
        history_stale: true,
        first_row_marked: false,
        unbuilt: VecDeque::new(),
        offers: HashMap::new(),
        render_scheduled: false,
    };
    APP.with(|a| *a.borrow_mut() = Some(app));
    wire(&doc);
    prefs::load_notify(|on| dispatch(Message::NotifyLoaded(on)));
    offers::load(|list| dispatch(Message::OffersLoaded(list)));
    offers::watch(|| offers::load(|list| dispatch(Message::OffersLoaded(list))));
    dispatch(Message::Connect);
}

fn wire(doc: &Document) {
    for tab in Tab::ALL {
        dom::listen(
            &by_id(doc, &format!("tab-{}", tab.name())),
            "click",
            move |_| dispatch(Message::ShowTab(tab)),
        );
    }
    dom::listen(&by_id(doc, "tabs"), "keydown", |e| {
        if let Some(k) = e.dyn_ref::<KeyboardEvent>() {
            let key = k.key();
            if matches!(key.as_str(), "ArrowLeft" | "ArrowRight" | "Home" | "End") {
                e.prevent_default();
                dispatch(Message::TabKey(key));
            }
        }
    });
    dom::listen(&by_id(doc, "add-form"), "submit", |e| {
        e.prevent_default();
        dispatch(Message::SubmitAdd);
    });
    dom::listen(&by_id(doc, "set-notify"), "change", |_| {
        dispatch(Message::Notify(
            input(&dom::document(), "set-notify").checked(),
        ))
    });
    dom::listen(&by_id(doc, "settings-form"), "submit", |e| {
        e.prevent_default();
        dispatch(Message::SaveSettings);
    });
    // One listener for every row's buttons: rows come and go, the list stays.
    dom::listen(&by_id(doc, "downloads"), "click", |e| {
        if let Some((button, _, id)) = clicked_in_row(&e, "button[data-action]")
            && let Some(action) = button
                .get_attribute("data-action")
                .and_then(|a| Action::parse(&a))
        {
            dispatch(Message::Row(id, action));
        }
    });
    dom::listen(&by_id(doc, "downloads"), "click", |e| {
        let Some((button, li, id)) = clicked_in_row(&e, "button[data-op]") else {
            return;
        };
        let Some(op) = button
            .get_attribute("data-op")
            .and_then(|o| RowOp::parse(&o))
        else {
            return;
        };
        let typed = |selector: &str| {
            dom::child(&li, selector)
                .dyn_into::<web_sys::HtmlInputElement>()
                .map(|i| i.value())
                .unwrap_or_default()
        };
        let form = RowForm {
            url: typed(".m-url"),
            speed_kib: typed(".m-speed"),
            threads: typed(".m-threads"),
        };
        dispatch(Message::RowOp(id, op, form));
    });
    dom::listen(&by_id(doc, "downloads"), "click", |e| {
        if let Some((button, _, id)) = clicked_in_row(&e, "button[data-offer]")
            && let Some(answer) = button
                .get_attribute("data-offer")
                .and_then(|a| Answer::parse(&a))
        {
            dispatch(Message::Offer(id, answer));
        }
    });
    for bulk in Bulk::ALL {
        dom::listen(&by_id(doc, bulk.button()), "click", move |_| {
            dispatch(Message::Bulk(bulk))
        });
    }
    dom::listen(&by_id(doc, "history-prev"), "click", |_| {
        dispatch(Message::HistoryPage(-1))
    });
    dom::listen(&by_id(doc, "history-next"), "click", |_| {
        dispatch(Message::HistoryPage(1))
    });
    dom::listen(&by_id(doc, "history-clear"), "click", |_| {
        dispatch(Message::ClearHistory)
    });
    dom::listen(&by_id(doc, "retry"), "click", |_| {
        dispatch(Message::Connect)
    });
}

impl App {
    fn update(&mut self, msg: Message) {
        match msg {
            Message::Connect => self.connect(),
            Message::Frame {
                generation,
                text,
                is_event,
            } if generation == self.generation => self.frame(&text, is_event),
            Message::Disconnected { generation, reason } if generation == self.generation => {
                let was_online = self.online;
                self.host = None;
                self.pending.clear();
                self.go_offline(&reason);
                // A host that was answering and went away (an update, a crash) gets one quiet retry.
                if was_online {
                    dom::after(RECONNECT_AFTER_MS, || dispatch(Message::Connect));
                }
            }
            Message::PingDeadline { generation }
                if generation == self.generation && !self.online =>
            {
                self.go_offline("it did not answer within 5 seconds");
            }
            Message::Frame { .. } | Message::Disconnected { .. } | Message::PingDeadline { .. } => {
            }
            Message::ShowTab(tab) => self.show_tab(tab, false),
            Message::TabKey(key) => {
                let i = Tab::ALL.iter().position(|t| *t == self.tab).unwrap_or(0);
                let next = match key.as_str() {
                    "ArrowLeft" => (i + Tab::ALL.len() - 1) % Tab::ALL.len(),
                    "ArrowRight" => (i + 1) % Tab::ALL.len(),
                    "Home" => 0,
                    _ => Tab::ALL.len() - 1,
                };
                self.show_tab(Tab::ALL[next], true);
            }
            Message::SubmitAdd => self.submit_add(),
            Message::Row(id, action) => self.send(action.command(id), Pending::Row),
            Message::Bulk(bulk) => self.send(bulk.command(), Pending::Bulk(bulk)),
            Message::Notify(on) => prefs::save_notify(on, move |saved| {
                let text = match saved {
                    Ok(()) if on => "Notifications on".to_owned(),
                    Ok(()) => "Notifications off".to_owned(),
                    Err(e) => format!("could not save the notification setting: {e}"),
                };
                dom::by_id(&dom::document(), "notice").set_text_content(Some(&text));
            }),
            Message::NotifyLoaded(on) => input(&self.doc, "set-notify").set_checked(on),
            Message::RowOp(id, op, form) => {
                let command = match op {
                    RowOp::SetUrl { restart } => form.set_url(id, restart),
                    RowOp::Update => form.update(id),
                    RowOp::Move(to) => Ok(Command::Move {
                        download_id: id,
                        to,
                    }),
                };
                match command {
                    Ok(command) => self.send(command, Pending::RowOp(id, op)),
                    Err(e) => self.notice(&e),
                }
            }
            Message::OffersLoaded(list) => {
                self.offers = list.into_iter().map(|o| (o.download_id, o.key)).collect();
                for &id in self.rows.keys() {
                    self.show_offer(id);
                }
            }
            Message::Offer(id, answer) => match self.offers.get(&id) {
                Some(key) => {
                    self.notice("Asking the browser's download…");
                    offers::answer(key, answer, move |r| {
                        dispatch(Message::OfferAnswered(id, answer, r))
                    });
                }
                None => {
                    self.notice("That offer is gone: the browser's download was handled already")
                }
            },
            Message::OfferAnswered(id, answer, result) => self.offer_answered(id, answer, result),
            Message::HistoryPage(delta) => {
                let offset = self.history_offset as i64 + delta * HISTORY_PAGE as i64;
                if offset >= 0 && (offset as usize) < self.history_total.max(1) {
                    self.history_offset = offset as usize;
                    self.load_history();
                }
            }
            Message::ClearHistory => self.send(Command::ClearHistory, Pending::ClearHistory),
            Message::SaveSettings => self.save_settings(),
            Message::RenderMore => {
                self.render_scheduled = false;
                self.render_chunk(rows::CHUNK);
            }
        }
    }

    fn connect(&mut self) {
        if let Some(old) = self.host.take() {
            old.close();
        }
        self.generation += 1;
        self.online = false;
        self.pending.clear();
        let generation = self.generation;
        let host = Host::connect(
            move |text, is_event| {
                dispatch(Message::Frame {
                    generation,
                    text,
                    is_event,
                })
            },
            move |reason| dispatch(Message::Disconnected { generation, reason }),
        );
        match host {
            Ok(host) => {
                self.host = Some(host);
                self.send(Command::Ping, Pending::Ping);
                self.send(Command::Subscribe, Pending::Subscribe);
                self.send(Command::GetSettings, Pending::GetSettings);
                self.request_list(0);
                if self.tab == Tab::History {
                    self.load_history();
                }
                dom::after(PING_TIMEOUT_MS, move || {
                    dispatch(Message::PingDeadline { generation })
                });
            }
            Err(reason) => self.go_offline(&reason),
        }
    }

    fn go_offline(&mut self, reason: &str) {
        self.online = false;
        by_id(&self.doc, "offline-reason").set_text_content(Some(&format!("({reason})")));
        set_hidden(&by_id(&self.doc, "offline"), false);
        self.render_summary();
    }

    fn send(&mut self, command: Command, what: Pending) {
        let Some(host) = self.host.as_mut() else {
            self.notice("not connected to SDM: press Retry above");
            return;
        };
        match host.send(command) {
            Ok(id) => {
                self.pending.insert(id, what);
            }
            Err(e) => self.notice(&format!("could not send to SDM: {e}")),
        }
    }

    fn request_list(&mut self, offset: usize) {
        let page = PageRequest {
            offset,
            limit: Some(MAX_PAGE),
        };
        self.send(Command::List(page), Pending::List { offset });
    }

    fn load_history(&mut self) {
        self.history_stale = false;
        let page = PageRequest {
            offset: self.history_offset,
            limit: Some(HISTORY_PAGE),
        };
        self.send(Command::History(page), Pending::History);
    }

    fn frame(&mut self, text: &str, is_event: bool) {
        let read = if is_event {
            serde_json::from_str::<Event>(text).map(|ev| self.event(ev))
        } else {
            serde_json::from_str::<Reply>(text).map(|reply| self.reply(reply))
        };
        if let Err(e) = read {
            self.notice(&format!("unreadable message from SDM: {e}"));
        }
    }

    fn reply(&mut self, reply: Reply) {
        let Some(what) = reply.id.and_then(|id| self.pending.remove(&id)) else {
            if let Some(e) = reply.error {
                self.notice(&e.message);
            }
            return;
        };
        if !reply.ok {
            let (code, message) = reply
                .error
                .map(|e| (Some(e.code), e.message))
                .unwrap_or_default();
            // The relay answers `unavailable` when the service is gone: what is on screen may be stale, so say so and
            // offer Retry (a new port, a fresh list) rather than a passing notice.
            match (what, code) {
                (Pending::Ping, _) | (_, Some(ErrorCode::Unavailable)) => self.go_offline(&message),
                // Another file at the new address: offer to start over there.
                (Pending::RowOp(id, RowOp::SetUrl { .. }), Some(ErrorCode::Conflict)) => {
                    self.offer_restart(id, true);
                    self.notice(&format!(
                        "{message}. Press Start over to download it from the start."
                    ));
                }
                _ => self.notice(&message),
            }
            return;
        }
        match what {
            Pending::Ping => {
                self.online = true;
                set_hidden(&by_id(&self.doc, "offline"), true);
                self.render_summary();
            }
            Pending::Subscribe | Pending::Row => {}
            Pending::RowOp(id, op) => {
                let said = match op {
                    RowOp::SetUrl { restart: false } => {
                        "New address set; the bytes already down are kept"
                    }
                    RowOp::SetUrl { restart: true } => "New address set; starting over",
                    RowOp::Update => "Changed",
                    RowOp::Move(_) => "Moved in the queue",
                };
                match op {
                    RowOp::SetUrl { .. } => self.offer_restart(id, false),
                    // The host gives no event for a move: its order changes here the same way.
                    RowOp::Move(to) => {
                        self.model.move_to(id, to);
                        self.place_row(id);
                    }
                    RowOp::Update => {}
                }
                self.notice(said);
            }
            // The rows follow from the `state` and `removed` events; the notice says how many changed.
            Pending::Bulk(bulk) => match reply.into_result::<CountResult>() {
                Ok(r) => self.notice(&bulk.done(r.count)),
                Err(e) => self.notice(&e.message),
            },
            Pending::List { offset } => match reply.into_result::<ListResult>() {
                Ok(page) => self.loaded_list(offset, page),
                Err(e) => self.notice(&e.message),
            },
            Pending::Add => {
                input(&self.doc, "add-url").set_value("");
                input(&self.doc, "add-filename").set_value("");
                self.notice("Added");
            }
            Pending::History => match reply.into_result::<HistoryResult>() {
                Ok(page) => self.render_history(page),
                Err(e) => self.notice(&e.message),
            },
            Pending::ClearHistory => {
                self.history_offset = 0;
                self.load_history();
            }
            Pending::GetSettings => match reply.into_result::<SettingsResult>() {
                Ok(r) => self.fill_settings(&r.settings),
                Err(e) => self.notice(&e.message),
            },
            Pending::SetSettings => self.notice("Settings saved"),
        }
    }

    fn loaded_list(&mut self, offset: usize, page: ListResult) {
        let received = page.downloads.len();
        self.model.load(page.downloads, offset > 0);
        if offset == 0 {
            self.rebuild_rows();
        } else {
            let ids: Vec<DownloadId> = self.model.downloads.keys().copied().collect();
            for id in ids {
                self.upsert_row(id);
            }
        }
        if received > 0 && offset + received < page.total {
            self.request_list(offset + received);
        }
        self.render_summary();
    }

    fn event(&mut self, ev: Event) {
        match &ev {
            // Someone else changed the settings; do not overwrite what is being typed in the form.
            Event::Settings { settings } if !self.editing_settings() => {
                self.fill_settings(settings)
            }
            Event::Settings { .. } => {}
            Event::History { total } => {
                self.history_total = *total;
                if self.tab == Tab::History {
                    self.load_history();
                } else {
                    self.history_stale = true;
                }
            }
            Event::Progress { .. } | Event::State { .. } | Event::Removed { .. } => {}
        }
        let changes = self.model.apply(&ev);
        for change in &changes {
            match *change {
                Change::Upsert(id) => self.upsert_row(id),
                Change::Removed(id) => {
                    if let Some(row) = self.rows.remove(&id) {
                        row.li.remove();
                    }
                }
            }
        }
        if !changes.is_empty() {
            self.render_summary();
        }
    }

    fn render_summary(&self) {
        let text = if !self.online {
            String::from("offline")
        } else {
            view_state::summary(self.model.active(), self.model.downloads.len())
        };
        by_id(&self.doc, "summary").set_text_content(Some(&text));
        set_hidden(&by_id(&self.doc, "empty"), !self.model.downloads.is_empty());
    }

    fn show_tab(&mut self, tab: Tab, focus: bool) {
        self.tab = tab;
        for t in Tab::ALL {
            let button = by_id(&self.doc, &format!("tab-{}", t.name()));
            let selected = t == tab;
            set_attr(
                &button,
                "aria-selected",
                if selected { "true" } else { "false" },
            );
            set_attr(&button, "tabindex", if selected { "0" } else { "-1" });
            set_hidden(&by_id(&self.doc, &format!("panel-{}", t.name())), !selected);
            if selected
                && focus
                && let Some(b) = button.dyn_ref::<web_sys::HtmlElement>()
            {
                let _ = b.focus();
            }
        }
        if tab == Tab::History && (self.history_stale || self.history_total == 0) {
            self.load_history();
        }
    }

    /// Show (and focus) or hide a row's "Start over" button; hiding it also empties the address typed.
    fn offer_restart(&self, id: DownloadId, offer: bool) {
        let Some(row) = self.rows.get(&id) else {
            return;
        };
        let button = dom::child(&row.li, ".m-restart");
        set_hidden(&button, !offer);
        if offer {
            if let Some(b) = button.dyn_ref::<web_sys::HtmlElement>() {
                let _ = b.focus();
            }
        } else if let Ok(url) =
            dom::child(&row.li, ".m-url").dyn_into::<web_sys::HtmlInputElement>()
        {
            url.set_value("");
        }
    }

    /// Show or hide the offer on download `id`'s row, as the worker's offers stand.
    fn show_offer(&self, id: DownloadId) {
        let Some(row) = self.rows.get(&id) else {
            return;
        };
        let offered = self.offers.contains_key(&id);
        set_hidden(&dom::child(&row.li, ".offer"), !offered);
        if !offered {
            set_hidden(&dom::child(&row.li, ".o-restart"), true);
        }
    }

    fn offer_answered(&self, id: DownloadId, answer: Answer, result: Result<(), Refused>) {
        match result {
            Ok(()) => self.notice(match answer {
                Answer::Use => "Using the browser's address; the bytes already down are kept",
                Answer::Restart => "Using the browser's address; starting over",
                Answer::Separate => "The browser's download goes to SDM as a download of its own",
            }),
            // Another file at the browser's address: offer to start over there, as Refresh address does.
            Err(r) if r.code == "conflict" => {
                if let Some(row) = self.rows.get(&id) {
                    let button = dom::child(&row.li, ".o-restart");
                    set_hidden(&button, false);
                    if let Some(b) = button.dyn_ref::<web_sys::HtmlElement>() {
                        let _ = b.focus();
                    }
                }
                self.notice(&format!(
                    "{}. Press Start over to download it from the start.",
                    r.message
                ));
            }
            Err(r) => self.notice(&r.message),
        }
    }

    fn notice(&self, text: &str) {
        by_id(&self.doc, "notice").set_text_content(Some(text));
    }
}

/// The element matching `selector` that a click in the list landed in, the row (`li[data-id]`) holding it, and that
/// row's download id.
fn clicked_in_row(e: &web_sys::Event, selector: &str) -> Option<(Element, Element, DownloadId)> {
    let target = e.target()?.dyn_into::<Element>().ok()?;
    let found = target.closest(selector).ok().flatten()?;
    let row = found.closest("li[data-id]").ok().flatten()?;
    let id = row.get_attribute("data-id")?.parse().ok()?;
    Some((found, row, id))
}
