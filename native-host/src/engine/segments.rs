//! The ranges of a file still to fetch, and how connections share them.
//!
//! A file of known size starts as N equal segments. Each connection owns one segment at a time; when it finishes, it
//! takes a free segment or, failing that, **half of the largest remaining range** of a busy one (never less than
//! [`MIN_SPLIT`]), so no connection idles while another has a long tail. When speeds are known, "largest" means the
//! most time left, and the cut is placed so that both connections should end together: a connection running at a
//! fifth of the others' speed keeps a sixth of its range, not half.
//!
//! A new connection does not deliver at once: a kept-alive one waits a round trip for its first byte, a fresh one
//! also waits for its handshake and for TCP's slow start. Each segment records how long its connection took to its
//! first byte and to its first 1, 2, 4, ... 128 MiB (its ramp); a split charges the newcomer its lead, so on a long
//! link a cold connection does not take a piece the victim would have finished first (and the victim, whose response
//! is cut short, does not lose its warm connection for nothing). A cold newcomer's lead is what this transfer's
//! slowest ramp took to deliver the piece it would take, less the time that piece takes at full speed: slow start
//! costs more on a bigger piece.
//!
//! A segment's bytes go through three marks: `pos` (written), `claimed` (the piece its connection is taking off the
//! network and writing now), `end` (where the owner stops; a split lowers it). A split cuts only above `claimed`, so a
//! piece in progress is never cut in two.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The smallest piece worth its own connection.
pub const MIN_SPLIT: u64 = 1024 * 1024;

/// End of a segment whose size is unknown (the server gave no length).
pub const OPEN_END: u64 = u64::MAX;

/// One range `[pos, end)` still to fetch; `start` is where it began, for the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub start: u64,
    /// Next byte to write; everything in `[start, pos)` is written.
    pub pos: u64,
    /// One past the last byte; [`OPEN_END`] when the size is unknown.
    pub end: u64,
    /// Bytes up to here are being read or written by its connection now; a split never cuts below it.
    #[serde(skip)]
    pub claimed: u64,
    /// A connection owns this segment.
    #[serde(skip)]
    pub busy: bool,
    /// When its connection took it, and `pos` then: its speed so far.
    #[serde(skip)]
    since: Option<(Instant, u64)>,
    /// Bytes per second its last connection achieved (0: unknown), kept after release as a yardstick.
    #[serde(skip)]
    speed: u64,
    /// How long its last connection took from taking it to its first byte, and to `MIN_SPLIT << k` bytes.
    #[serde(skip)]
    first_byte: Option<Duration>,
    #[serde(skip)]
    ramp: [Option<Duration>; RAMP_STEPS],
}

/// Milestones of a ramp: 1 MiB to 128 MiB.
const RAMP_STEPS: usize = 8;

/// A speed is trusted once it has been measured this long.
const MEASURED: Duration = Duration::from_millis(500);

impl Segment {
    pub fn new(start: u64, end: u64) -> Segment {
        Segment {
            start,
            pos: start,
            end,
            claimed: start,
            busy: false,
            since: None,
            speed: 0,
            first_byte: None,
            ramp: [None; RAMP_STEPS],
        }
    }

    /// Bytes up to `at` are written, at `now`.
    pub fn wrote(&mut self, at: u64, now: Instant) {
        self.pos = at;
        if let Some((t, base)) = self.since {
            let took = now.saturating_duration_since(t);
            self.first_byte.get_or_insert(took);
            for (k, step) in self.ramp.iter_mut().enumerate() {
                if at - base < MIN_SPLIT << k {
                    break;
                }
                step.get_or_insert(took);
            }
        }
    }

    /// Seconds its connection took from taking it to `bytes` written: interpolated between its ramp's milestones,
    /// and at `full` bytes per second past the last one it reached.
    fn ramp_time(&self, bytes: u64, full: f64) -> Option<f64> {
        let mut prev = (0, self.first_byte?.as_secs_f64());
        for (k, t) in self.ramp.iter().enumerate() {
            let Some(t) = t else { break };
            let (b, t) = (MIN_SPLIT << k, t.as_secs_f64());
            if bytes <= b {
                return Some(prev.1 + (t - prev.1) * (bytes - prev.0) as f64 / (b - prev.0) as f64);
            }
            prev = (b, t);
        }
        Some(prev.1 + (bytes - prev.0) as f64 / full)
    }

    /// Bytes per second lately, once that is long enough to tell: since the last milestone of its ramp at least
    /// [`MEASURED`] ago, else since its connection took it. On a long link a connection's average since the start is
    /// mostly its slow start.
    fn rate(&self, now: Instant) -> Option<f64> {
        let (t, base) = self.since?;
        let (from, bytes) = (self.ramp.iter().enumerate().rev())
            .filter_map(|(k, d)| Some((t + (*d)?, MIN_SPLIT << k)))
            .find(|&(at, _)| now.saturating_duration_since(at) >= MEASURED)
            .unwrap_or((t, 0));
        let secs = now.checked_duration_since(from)?;
        (secs >= MEASURED)
            .then(|| (self.pos - base).saturating_sub(bytes) as f64 / secs.as_secs_f64())
    }

    fn own(&mut self, now: Instant) {
        self.busy = true;
        self.claimed = self.pos;
        self.since = Some((now, self.pos));
        self.first_byte = None;
        self.ramp = [None; RAMP_STEPS];
    }

    pub fn remaining(&self) -> u64 {
        self.end.saturating_sub(self.pos)
    }

    pub fn is_done(&self) -> bool {
        self.pos >= self.end
    }
}

/// Cut `[0, total)` into at most `connections` equal segments of at least [`MIN_SPLIT`] each.
pub fn initial(total: u64, connections: u32) -> Vec<Segment> {
    let n = (total / MIN_SPLIT).clamp(1, connections.max(1) as u64);
    let size = total / n;
    (0..n)
        .map(|i| {
            let start = i * size;
            let end = if i + 1 == n { total } else { start + size };
            Segment::new(start, end)
        })
        .collect()
}

/// The segments of a transfer starting from zero: N equal ones when the server serves ranges of a known size, else
/// one from zero to the end (or to wherever the stream ends).
pub fn fresh(total: Option<u64>, ranges: bool, connections: u32) -> Vec<Segment> {
    match (total, ranges) {
        (Some(total), true) => initial(total, connections),
        (total, _) => vec![Segment::new(0, total.unwrap_or(OPEN_END))],
    }
}

/// Give a free connection work: a segment nobody owns, else a share of the busy one with the most time left. Marks
/// it busy and returns its index, or `None` when nothing is left worth a connection. `warm`: the connection is open
/// already (kept alive), so it needs no handshake and no slow start.
pub fn take(segs: &mut Vec<Segment>, now: Instant, warm: bool) -> Option<usize> {
    if let Some(i) = segs.iter().position(|s| !s.busy && !s.is_done()) {
        segs[i].own(now);
        return Some(i);
    }
    // What a fresh connection may expect: the best speed any connection of this transfer has shown.
    let fresh = segs
        .iter()
        .filter_map(|s| {
            if s.busy {
                s.rate(now)
            } else {
                (s.speed > 0).then_some(s.speed as f64)
            }
        })
        .fold(None, |best: Option<f64>, r| {
            Some(best.map_or(r, |b| b.max(r)))
        });
    let (i, left, rate) = segs
        .iter()
        .enumerate()
        .filter(|(_, s)| s.busy && s.end != OPEN_END)
        .map(|(i, s)| (i, s.end.saturating_sub(s.claimed.max(s.pos)), s.rate(now)))
        .filter(|&(_, left, _)| left >= 2 * MIN_SPLIT)
        .max_by(|a, b| {
            let time_left = |(_, left, rate): &(usize, u64, Option<f64>)| {
                *left as f64 / rate.or(fresh).unwrap_or(1.0).max(1.0)
            };
            time_left(a).total_cmp(&time_left(b))
        })?;
    // The victim keeps what it fetches while the new connection gets going, then the share that it should finish
    // when the new connection does; of the rest, never more than half.
    let kept_for = |lead: f64| {
        let (keep, head) = match (rate, fresh) {
            (Some(v), Some(f)) if v + f > 0.0 => ((v / (v + f)).min(0.5), v * lead),
            (None, Some(f)) => (0.5, f * lead),
            _ => (0.5, 0.0),
        };
        let head = (head as u64).min(left);
        (head + ((left - head) as f64 * keep) as u64).max(64 * 1024)
    };
    // A cold newcomer's lead grows with the piece it takes, and the piece shrinks as the lead grows: settle it from
    // the smallest piece up, so the piece only ever shrinks.
    // (A warm newcomer's lead is a round trip, whatever the piece.)
    let mut lead_now = lead(segs, fresh, warm, MIN_SPLIT);
    let mut kept = kept_for(lead_now);
    for _ in 0..if warm { 0 } else { 4 } {
        let stolen = left.saturating_sub(kept);
        if stolen < MIN_SPLIT {
            break;
        }
        let next = lead(segs, fresh, warm, stolen);
        if next <= lead_now {
            break;
        }
        (lead_now, kept) = (next, kept_for(next));
    }
    if left.saturating_sub(kept) < MIN_SPLIT {
        return None;
    }
    let victim = &mut segs[i];
    let mid = victim.claimed.max(victim.pos) + kept;
    let mut stolen = Segment::new(mid, victim.end);
    stolen.own(now);
    victim.end = mid;
    segs.push(stolen);
    Some(segs.len() - 1)
}

/// Seconds a new connection loses against one delivering `bytes` at full speed `fresh` from the start, as this
/// transfer's connections have shown. A kept-alive one loses a round trip: the quickest first byte. A fresh one also
/// loses its handshake (another round trip: connections opened during the probe did not show it) and its slow start:
/// the slowest ramp's time to `bytes`, less their time at full speed.
fn lead(segs: &[Segment], fresh: Option<f64>, warm: bool, bytes: u64) -> f64 {
    let Some(f) = fresh.filter(|&f| f > 0.0) else {
        return 0.0;
    };
    let round_trip = segs
        .iter()
        .filter_map(|s| s.first_byte.map(|d| d.as_secs_f64()))
        .reduce(f64::min)
        .unwrap_or(0.0);
    if warm {
        return round_trip;
    }
    segs.iter()
        .filter(|s| s.ramp[0].is_some())
        .filter_map(|s| s.ramp_time(bytes, f))
        .reduce(f64::max)
        .map_or(0.0, |t| (round_trip + t - bytes as f64 / f).max(0.0))
}

/// Its connection let segment `idx` go (done, failed or cancelled): note the speed it achieved.
pub fn release(segs: &mut [Segment], idx: usize, now: Instant) {
    if let Some(s) = segs.get_mut(idx) {
        if let Some(rate) = s.rate(now) {
            s.speed = rate as u64;
        }
        s.busy = false;
        s.claimed = s.pos;
        s.since = None;
    }
}

/// Bytes still to fetch, when every segment has a known end.
pub fn remaining(segs: &[Segment]) -> Option<u64> {
    segs.iter().try_fold(0u64, |acc, s| {
        (s.end != OPEN_END).then(|| acc + s.remaining())
    })
}

/// Drop finished segments and merge none: what is worth saving.
pub fn unfinished(segs: &[Segment]) -> Vec<Segment> {
    segs.iter().filter(|s| !s.is_done()).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MB: u64 = MIN_SPLIT;

    fn now() -> Instant {
        Instant::now()
    }

    #[test]
    fn small_files_get_one_segment() {
        assert_eq!(initial(10, 8), vec![Segment::new(0, 10)]);
        assert_eq!(initial(MB + 1, 8).len(), 1);
        assert_eq!(initial(0, 8), vec![Segment::new(0, 0)]);
    }

    #[test]
    fn large_files_get_one_segment_per_connection() {
        let segs = initial(256 * MB + 3, 8);
        assert_eq!(segs.len(), 8);
        assert_eq!(segs[0].start, 0);
        assert_eq!(segs.last().unwrap().end, 256 * MB + 3);
        for w in segs.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
    }

    #[test]
    fn a_free_connection_takes_half_the_largest_tail() {
        let mut segs = initial(100 * MB, 2);
        assert_eq!(take(&mut segs, now(), true), Some(0));
        assert_eq!(take(&mut segs, now(), true), Some(1));
        segs[0].pos = 50 * MB; // first one done
        segs[0].busy = false;
        segs[1].pos = 60 * MB; // 40 MiB left
        segs[1].claimed = 60 * MB;
        assert_eq!(take(&mut segs, now(), true), Some(2));
        assert_eq!(segs[1].end, 80 * MB);
        assert_eq!(
            (segs[2].start, segs[2].pos, segs[2].end, segs[2].busy),
            (80 * MB, 80 * MB, 100 * MB, true)
        );
    }

    /// A file of `total` bytes in two segments, both taken now by connections `warm` or not.
    fn two_taken(total: u64, warm: bool) -> (Instant, Vec<Segment>) {
        let t0 = now();
        let mut segs = initial(total, 2);
        take(&mut segs, t0, warm);
        take(&mut segs, t0, warm);
        (t0, segs)
    }

    #[test]
    fn a_slow_connection_keeps_only_what_it_can_finish_in_time() {
        let (t0, mut segs) = two_taken(44 * MB, true);
        let t2 = t0 + Duration::from_secs(2);
        segs[0].pos = segs[0].end; // 22 MiB done in 2 s: 11 MiB/s
        release(&mut segs, 0, t2);
        segs[1].pos += 2 * MB; // 1 MiB/s, 20 MiB left
        segs[1].claimed = segs[1].pos;
        assert_eq!(take(&mut segs, t2, true), Some(2));
        let kept = segs[1].end - segs[1].pos;
        assert_eq!(kept, 20 * MB / 12, "1/(1+11) of what is left");
        assert_eq!(segs[2].end, 44 * MB);
    }

    #[test]
    fn the_split_goes_to_the_most_time_left_not_the_most_bytes() {
        let t0 = now();
        let mut segs = vec![Segment::new(0, 40 * MB), Segment::new(40 * MB, 60 * MB)];
        take(&mut segs, t0, true);
        take(&mut segs, t0, true);
        let t1 = t0 + Duration::from_secs(1);
        segs[0].pos += 10 * MB; // 30 MiB left at 10 MiB/s: 3 s
        segs[1].pos += MB; // 19 MiB left at 1 MiB/s: 19 s
        segs[0].claimed = segs[0].pos;
        segs[1].claimed = segs[1].pos;
        take(&mut segs, t1, true);
        assert!(segs[1].end < 60 * MB, "the slow one is split");
        assert_eq!(segs[0].end, 40 * MB);
    }

    #[test]
    fn no_split_below_the_minimum_or_a_claim() {
        let mut segs = vec![Segment::new(0, 3 * MB)];
        take(&mut segs, now(), true);
        segs[0].claimed = 2 * MB;
        assert_eq!(
            take(&mut segs, now(), true),
            None,
            "1 MiB left is not worth a second connection"
        );
        assert_eq!(segs[0].end, 3 * MB);
    }

    #[test]
    fn a_cold_connection_leaves_a_short_tail_to_the_warm_one() {
        // Two connections on a long link: 200 ms to the first byte, 1.5 s to the first MiB (slow start).
        let (t0, mut segs) = two_taken(64 * MB, false);
        for s in &mut segs {
            s.wrote(s.pos + 1, t0 + Duration::from_millis(200));
            s.wrote(s.start + MB, t0 + Duration::from_millis(1500));
        }
        let t2 = t0 + Duration::from_millis(3500);
        let end = segs[0].end;
        segs[0].wrote(end, t2);
        release(&mut segs, 0, t2);
        let at = segs[1].start + 21 * MB;
        segs[1].wrote(at, t2); // 10 MiB/s since the first MiB, 11 MiB (1.1 s) left; the other did 15.5 MiB/s
        segs[1].claimed = segs[1].pos;
        let before = segs.clone();
        assert_eq!(
            take(&mut segs, t2, false),
            None,
            "a new connection would spend most of the victim's time left getting up to speed"
        );
        assert_eq!(segs, before);
        let i = take(&mut segs, t2, true).expect("a kept-alive connection starts in a round trip");
        let stolen = segs[i].end - segs[i].start;
        assert!(
            (5 * MB..6 * MB).contains(&stolen),
            "the victim keeps what it fetches in that round trip, then its share by speed (10:15.5): stole {stolen}"
        );
    }

    #[test]
    fn a_cold_connection_is_charged_the_slow_start_of_the_piece_it_would_take() {
        // Two connections on a 100 ms link. Each took 0.1 s to its first byte, then doubled its speed every round
        // trip: 1 MiB at 0.45 s, 2 at 0.55, ... 32 at 0.95.
        let t0 = now();
        let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
        let mut segs = vec![Segment::new(0, 64 * MB), Segment::new(64 * MB, 192 * MB)];
        take(&mut segs, t0, false);
        take(&mut segs, t0, false);
        for s in &mut segs {
            s.wrote(s.pos + 1, at(0.1));
            for k in 0..6 {
                s.wrote(s.start + (MB << k), at(0.45 + 0.1 * k as f64));
            }
        }
        // The first is done at 1.33 s (about 96 MiB/s since 8 MiB); the second has done 78 MiB by 1.49 s (about 85
        // MiB/s since 32 MiB), and 50 MiB are left: about 0.6 s.
        segs[0].wrote(64 * MB, at(1.33));
        release(&mut segs, 0, at(1.33));
        let t = at(1.49);
        segs[1].wrote(64 * MB + (1 << 26), at(1.33));
        segs[1].wrote(142 * MB, t);
        segs[1].claimed = segs[1].pos;
        let before = segs.clone();
        // A new connection would need 0.85 s to deliver even 8 MiB.
        assert_eq!(take(&mut segs, t, false), None, "{:?}", segs.last());
        assert_eq!(segs, before);
        let i = take(&mut segs, t, true).expect("a kept-alive connection still helps");
        assert!(segs[i].start > 150 * MB, "took {:?}", segs[i]);
    }

    #[test]
    fn open_ended_segments_are_never_split() {
        let mut segs = vec![Segment::new(0, OPEN_END)];
        take(&mut segs, now(), true);
        assert_eq!(take(&mut segs, now(), true), None);
        assert_eq!(remaining(&segs), None);
    }

    proptest! {
        /// However connections take and split, the segments always cover what is unwritten exactly once.
        #[test]
        fn splits_cover_the_file_exactly(total in 0u64..(64 * MB), conns in 1u32..33, steps in proptest::collection::vec((0usize..40, 0u64..(8 * MB)), 0..60)) {
            let mut segs = initial(total, conns);
            for (pick, advance) in steps {
                if pick % 3 == 0 {
                    let _ = take(&mut segs, now(), true);
                } else if !segs.is_empty() {
                    let i = pick % segs.len();
                    let s = &mut segs[i];
                    if s.busy {
                        s.pos = (s.pos + advance).min(s.end);
                        s.claimed = s.pos;
                        if s.is_done() { s.busy = false; }
                    }
                }
            }
            let mut ranges: Vec<(u64, u64)> = segs.iter().map(|s| (s.start, s.end)).collect();
            ranges.sort_unstable();
            let mut at = 0;
            for (start, end) in ranges {
                prop_assert_eq!(start, at);
                prop_assert!(end >= start);
                at = end;
            }
            prop_assert_eq!(at, total);
        }
    }
}
