//! Small pieces of view text that depend only on numbers.

/// The header line: `"2 downloading · 10 in list"`.
pub fn summary(active: usize, total: usize) -> String {
    match (active, total) {
        (_, 0) => "no downloads".into(),
        (0, t) => format!("{t} in list"),
        (a, t) => format!("{a} downloading · {t} in list"),
    }
}

/// The history pager's label and which buttons work.
#[derive(Debug, PartialEq, Eq)]
pub struct Pager {
    pub label: String,
    pub has_prev: bool,
    pub has_next: bool,
}

pub fn history_pager(offset: usize, shown: usize, total: usize) -> Pager {
    let label = if total == 0 {
        "empty".into()
    } else {
        format!("{}–{} of {}", offset + 1, offset + shown, total)
    };
    Pager {
        label,
        has_prev: offset > 0,
        has_next: offset + shown < total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts() {
        assert_eq!(summary(0, 0), "no downloads");
        assert_eq!(summary(0, 4), "4 in list");
        assert_eq!(summary(2, 4), "2 downloading · 4 in list");
    }

    #[test]
    fn pager_edges() {
        assert_eq!(
            history_pager(0, 0, 0),
            Pager {
                label: "empty".into(),
                has_prev: false,
                has_next: false
            }
        );
        let first = history_pager(0, 50, 120);
        assert_eq!(first.label, "1–50 of 120");
        assert!(!first.has_prev && first.has_next);
        let last = history_pager(100, 20, 120);
        assert!(last.has_prev && !last.has_next);
    }
}
