//! The ranges of a file still to fetch, and how connections share them.
//!
//! A file of known size starts as N equal segments. Each connection owns one segment at a time; when it finishes, it
//! takes a free segment or, failing that, **half of the largest remaining range** of a busy one (never less than
//! [`MIN_SPLIT`]), so no connection idles while another has a long tail.
//!
//! A segment's bytes go through three marks: `pos` (written), `claimed` (handed to a write in progress), `end` (where
//! the owner stops; a split lowers it). A split cuts only above `claimed`, so a write in progress is never cut in two.

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
    /// Bytes up to here are being written now; a split never cuts below it.
    #[serde(skip)]
    pub claimed: u64,
    /// A connection owns this segment.
    #[serde(skip)]
    pub busy: bool,
}

impl Segment {
    pub fn new(start: u64, end: u64) -> Segment {
        Segment {
            start,
            pos: start,
            end,
            claimed: start,
            busy: false,
        }
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

/// Give a free connection work: a segment nobody owns, else half of the largest busy one. Marks it busy and returns
/// its index, or `None` when nothing is left worth a connection.
pub fn take(segs: &mut Vec<Segment>) -> Option<usize> {
    if let Some(i) = segs.iter().position(|s| !s.busy && !s.is_done()) {
        segs[i].busy = true;
        segs[i].claimed = segs[i].pos;
        return Some(i);
    }
    let (i, left) = segs
        .iter()
        .enumerate()
        .filter(|(_, s)| s.busy && s.end != OPEN_END)
        .map(|(i, s)| (i, s.end.saturating_sub(s.claimed.max(s.pos))))
        .max_by_key(|&(_, left)| left)?;
    if left < 2 * MIN_SPLIT {
        return None;
    }
    let victim = &mut segs[i];
    let mid = victim.claimed.max(victim.pos) + left / 2;
    let mut stolen = Segment::new(mid, victim.end);
    stolen.busy = true;
    victim.end = mid;
    segs.push(stolen);
    Some(segs.len() - 1)
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
        assert_eq!(take(&mut segs), Some(0));
        assert_eq!(take(&mut segs), Some(1));
        segs[0].pos = 50 * MB; // first one done
        segs[0].busy = false;
        segs[1].pos = 60 * MB; // 40 MiB left
        segs[1].claimed = 60 * MB;
        assert_eq!(take(&mut segs), Some(2));
        assert_eq!(segs[1].end, 80 * MB);
        assert_eq!(
            segs[2],
            Segment {
                start: 80 * MB,
                pos: 80 * MB,
                end: 100 * MB,
                claimed: 80 * MB,
                busy: true
            }
        );
    }

    #[test]
    fn no_split_below_the_minimum_or_a_claim() {
        let mut segs = vec![Segment::new(0, 3 * MB)];
        take(&mut segs);
        segs[0].claimed = 2 * MB;
        assert_eq!(
            take(&mut segs),
            None,
            "1 MiB left is not worth a second connection"
        );
        assert_eq!(segs[0].end, 3 * MB);
    }

    #[test]
    fn open_ended_segments_are_never_split() {
        let mut segs = vec![Segment::new(0, OPEN_END)];
        take(&mut segs);
        assert_eq!(take(&mut segs), None);
        assert_eq!(remaining(&segs), None);
    }

    proptest! {
        /// However connections take and split, the segments always cover what is unwritten exactly once.
        #[test]
        fn splits_cover_the_file_exactly(total in 0u64..(64 * MB), conns in 1u32..33, steps in proptest::collection::vec((0usize..40, 0u64..(8 * MB)), 0..60)) {
            let mut segs = initial(total, conns);
            for (pick, advance) in steps {
                if pick % 3 == 0 {
                    let _ = take(&mut segs);
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
