//! The popup's copy of the host's download list, and what each row shows.
//!
//! The host owns every download; this is a mirror built from one `list` reply and kept current by pushed events.
//! [`Model::apply`] says which rows changed, so the view touches only those.

use std::collections::BTreeMap;

use protocol::{DownloadId, DownloadInfo, Event, MoveTo, Progress, Status};

use crate::format;

/// What an event did to the list, so the view can update rows in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A download appeared or one of its shown fields changed.
    Upsert(DownloadId),
    Removed(DownloadId),
}

/// The downloads the host knows, by id, and the queue's order.
///
/// Rows are shown in [`Model::shown_order`]: downloads that may still go on (queued, running, paused) in the queue's
/// order, the order they start in and `move` changes; then finished ones (completed, failed, cancelled), newest
/// first.
#[derive(Debug, Default)]
pub struct Model {
    pub downloads: BTreeMap<DownloadId, DownloadInfo>,
    /// Every id in the queue's order, as `list` gave it. A new download joins at the bottom, as the host puts it; a
    /// `move` the host accepted is applied here the way the host applies it.
    order: Vec<DownloadId>,
}

impl Model {
    /// Replace everything with a fresh `list` page (or add a further page when `append`).
    pub fn load(&mut self, page: Vec<DownloadInfo>, append: bool) {
        if !append {
            self.downloads.clear();
            self.order.clear();
        }
        for d in page {
            if self.downloads.insert(d.id, d.clone()).is_none() {
                self.order.push(d.id);
            }
        }
    }

    /// The host moved download `id` (its answer to `move` was ok): the same move in this copy of the order.
    pub fn move_to(&mut self, id: DownloadId, to: MoveTo) {
        let Some(from) = self.order.iter().position(|&d| d == id) else {
            return;
        };
        // As the host does it: up or down past the next download that may still go on.
        let waits = |d: &DownloadId| !self.shows_finished(*d);
        let last = self.order.len() - 1;
        let dest = match to {
            MoveTo::Top => 0,
            MoveTo::Bottom => last,
            MoveTo::Up => self.order[..from].iter().rposition(waits).unwrap_or(from),
            MoveTo::Down => self.order[from + 1..]
                .iter()
                .position(waits)
                .map_or(from, |i| from + 1 + i),
        };
        let moved = self.order.remove(from);
        self.order.insert(dest, moved);
    }

    /// Every id in the order rows are shown: downloads that may still go on in the queue's order, then finished
    /// ones newest first.
    pub fn shown_order(&self) -> Vec<DownloadId> {
        let (mut finished, going): (Vec<DownloadId>, Vec<DownloadId>) = self
            .order
            .iter()
            .copied()
            .filter(|id| self.downloads.contains_key(id))
            .partition(|id| self.downloads[id].status.is_finished());
        finished.sort_unstable_by(|a, b| b.cmp(a));
        let mut ids = going;
        ids.extend(finished);
        ids
    }

    /// Whether `id` shows among the finished rows (it moves there when it ends).
    pub fn shows_finished(&self, id: DownloadId) -> bool {
        self.downloads
            .get(&id)
            .is_some_and(|d| d.status.is_finished())
    }

    /// Fold one pushed event into the list. Events about settings or history change nothing here.
    pub fn apply(&mut self, event: &Event) -> Vec<Change> {
        match event {
            Event::Progress { downloads } => downloads
                .iter()
                .filter_map(|p| self.apply_progress(p).then_some(Change::Upsert(p.id)))
                .collect(),
            Event::State { download } => {
                if self
                    .downloads
                    .insert(download.id, download.clone())
                    .is_none()
                {
                    self.order.push(download.id);
                }
                vec![Change::Upsert(download.id)]
            }
            Event::Removed { id } => match self.downloads.remove(id) {
                Some(_) => {
                    self.order.retain(|d| d != id);
                    vec![Change::Removed(*id)]
                }
                None => Vec::new(),
            },
            Event::Settings { .. } | Event::History { .. } => Vec::new(),
        }
    }

    /// Returns whether anything shown changed. Progress for an unknown id is dropped: its `state` event follows.
    fn apply_progress(&mut self, p: &Progress) -> bool {
        let Some(d) = self.downloads.get_mut(&p.id) else {
            return false;
        };
        let changed = d.status != p.status
            || d.total != p.total
            || d.downloaded != p.downloaded
            || d.speed != p.speed
            || d.eta != p.eta
            || d.connections != p.connections;
        d.status = p.status;
        d.total = p.total;
        d.downloaded = p.downloaded;
        d.speed = p.speed;
        d.eta = p.eta;
        d.connections = p.connections;
        changed
    }

    /// Downloads transferring right now (what the badge counts).
    pub fn active(&self) -> usize {
        self.downloads
            .values()
            .filter(|d| d.status == Status::Downloading)
            .count()
    }
}

/// The text of one row, computed from a download. Kept apart from the DOM so it can be tested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowText {
    pub name: String,
    pub status: &'static str,
    pub percent: Option<u8>,
    pub percent_text: String,
    pub detail: String,
    pub speed: String,
    pub eta: String,
    pub connections: String,
}

impl RowText {
    pub fn of(d: &DownloadInfo) -> RowText {
        let name = if d.filename.is_empty() {
            format::url_basename(&d.url).to_owned()
        } else {
            d.filename.clone()
        };
        let percent = format::percent(d.downloaded, d.total);
        let running = d.status == Status::Downloading;
        let detail = match (d.status, &d.error) {
            (Status::Failed, Some(e)) => e.clone(),
            _ => match d.total {
                Some(t) => format!("{} of {}", format::bytes(d.downloaded), format::bytes(t)),
                None => format::bytes(d.downloaded),
            },
        };
        RowText {
            name,
            status: status_label(d.status),
            percent,
            percent_text: percent.map(|p| format!("{p}%")).unwrap_or_default(),
            detail,
            speed: if running {
                format::speed(d.speed)
            } else {
                String::new()
            },
            eta: match (running, d.eta) {
                (true, Some(s)) => format!("{} left", format::eta(s)),
                _ => String::new(),
            },
            connections: if running {
                format!("{}/{} conn", d.connections, d.threads)
            } else {
                String::new()
            },
        }
    }
}

pub fn status_label(s: Status) -> &'static str {
    match s {
        Status::Queued => "Queued",
        Status::Downloading => "Downloading",
        Status::Paused => "Paused",
        Status::Completed => "Completed",
        Status::Failed => "Failed",
        Status::Cancelled => "Cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: DownloadId, status: Status) -> DownloadInfo {
        DownloadInfo {
            id,
            url: format!("http://h/f{id}.bin"),
            filename: String::new(),
            path: String::new(),
            status,
            total: Some(2048),
            downloaded: 0,
            speed: 0,
            eta: None,
            threads: 8,
            connections: 0,
            retries: 5,
            bandwidth_limit: 0,
            error: None,
            created_at: 0,
            finished_at: None,
        }
    }

    fn progress(id: DownloadId, downloaded: u64) -> Progress {
        Progress {
            id,
            status: Status::Downloading,
            total: Some(2048),
            downloaded,
            speed: 1024,
            eta: Some(1),
            connections: 4,
        }
    }

    #[test]
    fn progress_updates_only_known_rows_that_changed() {
        let mut m = Model::default();
        m.load(
            vec![info(1, Status::Queued), info(2, Status::Queued)],
            false,
        );
        let ev = Event::Progress {
            downloads: vec![progress(1, 100), progress(9, 5)],
        };
        assert_eq!(m.apply(&ev), vec![Change::Upsert(1)]);
        assert_eq!(m.downloads[&1].downloaded, 100);
        assert_eq!(m.active(), 1);
        // The same numbers again change nothing on screen.
        assert_eq!(m.apply(&ev), vec![]);
    }

    #[test]
    fn state_adds_and_removed_drops() {
        let mut m = Model::default();
        assert_eq!(
            m.apply(&Event::State {
                download: info(3, Status::Queued)
            }),
            vec![Change::Upsert(3)]
        );
        assert_eq!(m.apply(&Event::Removed { id: 3 }), vec![Change::Removed(3)]);
        assert_eq!(m.apply(&Event::Removed { id: 3 }), vec![]);
        assert!(m.downloads.is_empty());
    }

    #[test]
    fn load_replaces_unless_appending() {
        let mut m = Model::default();
        m.load(vec![info(1, Status::Queued)], false);
        m.load(vec![info(2, Status::Queued)], true);
        assert_eq!(m.downloads.len(), 2);
        m.load(vec![info(5, Status::Queued)], false);
        assert_eq!(m.downloads.keys().copied().collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn rows_follow_the_queue_then_finished_ones_newest_first() {
        let mut m = Model::default();
        // `list` gives the queue's order, which `move` may have made anything but by id.
        m.load(
            vec![
                info(4, Status::Queued),
                info(2, Status::Completed),
                info(1, Status::Downloading),
                info(3, Status::Failed),
                info(5, Status::Paused),
            ],
            false,
        );
        assert_eq!(m.shown_order(), vec![4, 1, 5, 3, 2]);
        m.move_to(5, MoveTo::Top);
        assert_eq!(m.shown_order(), vec![5, 4, 1, 3, 2]);
        // The queue is [5, 4, 2, 1, 3]: down passes over the completed 2, as the host does, so the row moves.
        m.move_to(4, MoveTo::Down);
        assert_eq!(m.shown_order(), vec![5, 1, 4, 3, 2]);
        m.move_to(4, MoveTo::Down);
        assert_eq!(
            m.shown_order(),
            vec![5, 1, 4, 3, 2],
            "nothing below it waits"
        );
        m.move_to(5, MoveTo::Bottom);
        assert_eq!(m.shown_order(), vec![1, 4, 5, 3, 2]);
        // A new download joins the queue at the bottom; a finished one moves to the finished rows.
        m.apply(&Event::State {
            download: info(6, Status::Queued),
        });
        m.apply(&Event::State {
            download: info(1, Status::Completed),
        });
        assert!(m.shows_finished(1));
        assert_eq!(m.shown_order(), vec![4, 5, 6, 3, 2, 1]);
        m.apply(&Event::Removed { id: 4 });
        assert_eq!(m.shown_order(), vec![5, 6, 3, 2, 1]);
    }

    #[test]
    fn row_text_of_a_running_download() {
        let mut d = info(1, Status::Downloading);
        d.downloaded = 1024;
        d.speed = 512;
        d.eta = Some(2);
        d.connections = 3;
        let t = RowText::of(&d);
        assert_eq!(t.name, "f1.bin");
        assert_eq!(t.status, "Downloading");
        assert_eq!(t.percent, Some(50));
        assert_eq!(t.percent_text, "50%");
        assert_eq!(t.detail, "1.0 KiB of 2.0 KiB");
        assert_eq!(t.speed, "512 B/s");
        assert_eq!(t.eta, "2 s left");
        assert_eq!(t.connections, "3/8 conn");
    }

    #[test]
    fn row_text_of_a_finished_or_failed_download_hides_live_numbers() {
        let mut d = info(1, Status::Completed);
        d.filename = "a.iso".into();
        d.downloaded = 2048;
        let t = RowText::of(&d);
        assert_eq!(
            (t.name.as_str(), t.percent_text.as_str()),
            ("a.iso", "100%")
        );
        assert!(t.speed.is_empty() && t.eta.is_empty() && t.connections.is_empty());

        let mut f = info(2, Status::Failed);
        f.error = Some("http 403".into());
        assert_eq!(RowText::of(&f).detail, "http 403");
    }

    #[test]
    fn unknown_size_has_no_percent() {
        let mut d = info(1, Status::Downloading);
        d.total = None;
        d.downloaded = 3000;
        let t = RowText::of(&d);
        assert_eq!(t.percent, None);
        assert_eq!(t.percent_text, "");
        assert_eq!(t.detail, "2.9 KiB");
    }
}
