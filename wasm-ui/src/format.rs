//! Human-readable numbers: sizes, speeds, times left, percentages.
//!
//! Pure functions, so they are unit-tested natively under `cargo test`.

const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// `1536` → `"1.5 KiB"`. Bytes below 1 KiB are whole numbers; larger sizes get one decimal, rounded to nearest.
///
/// Integer arithmetic only: float formatting would add about 20 KB to the popup's wasm.
pub fn bytes(n: u64) -> String {
    if n < 1024 {
        return format!("{n} B");
    }
    let n = u128::from(n);
    let mut unit = 0;
    let mut scale: u128 = 1024;
    // Move up while the value would print as 1024.0 or more of this unit.
    while unit + 1 < UNITS.len() && (n * 10 + scale / 2) / scale >= 10_240 {
        unit += 1;
        scale *= 1024;
    }
    let tenths = (n * 10 + scale / 2) / scale;
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
}

/// Bytes per second, as `"2.0 MiB/s"`.
pub fn speed(bytes_per_sec: u64) -> String {
    format!("{}/s", bytes(bytes_per_sec))
}

/// Seconds left, as `"45 s"`, `"3 min 05 s"`, `"2 h 07 min"` or `"3 d 4 h"`.
pub fn eta(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min {:02} s", secs / 60, secs % 60),
        3600..=86_399 => format!("{} h {:02} min", secs / 3600, (secs % 3600) / 60),
        _ => format!("{} d {} h", secs / 86_400, (secs % 86_400) / 3600),
    }
}

/// Whole percent done, rounded down so that 100 % means every byte is there.
pub fn percent(downloaded: u64, total: Option<u64>) -> Option<u8> {
    let total = total?;
    if total == 0 || downloaded >= total {
        return Some(100);
    }
    Some((u128::from(downloaded) * 100 / u128::from(total)).min(99) as u8)
}

/// The last path segment of a URL, for a download whose file name is not known yet.
pub fn url_basename(url: &str) -> &str {
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    let trimmed = without_query.trim_end_matches('/');
    let base = trimmed.rsplit('/').next().unwrap_or(trimmed);
    if base.is_empty() || base.contains(':') {
        url
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_sizes_are_whole_bytes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
    }

    #[test]
    fn larger_sizes_take_one_decimal_and_the_right_unit() {
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn rounding_never_prints_1024_of_a_unit() {
        assert_eq!(bytes(1024 * 1024 - 1), "1.0 MiB");
    }

    #[test]
    fn speed_appends_per_second() {
        assert_eq!(speed(0), "0 B/s");
        assert_eq!(speed(2 * 1024 * 1024), "2.0 MiB/s");
    }

    #[test]
    fn eta_picks_two_units() {
        assert_eq!(eta(0), "0 s");
        assert_eq!(eta(59), "59 s");
        assert_eq!(eta(185), "3 min 05 s");
        assert_eq!(eta(2 * 3600 + 7 * 60 + 9), "2 h 07 min");
        assert_eq!(eta(3 * 86_400 + 4 * 3600), "3 d 4 h");
    }

    #[test]
    fn percent_reaches_100_only_when_complete() {
        assert_eq!(percent(0, Some(10)), Some(0));
        assert_eq!(percent(9_999, Some(10_000)), Some(99));
        assert_eq!(percent(10_000, Some(10_000)), Some(100));
        assert_eq!(percent(0, Some(0)), Some(100));
        assert_eq!(percent(5, None), None);
    }

    #[test]
    fn percent_does_not_overflow_on_huge_sizes() {
        assert_eq!(percent(u64::MAX / 2, Some(u64::MAX)), Some(49));
    }

    #[test]
    fn url_basename_takes_the_last_segment() {
        assert_eq!(url_basename("http://h/a/file.bin?x=1#y"), "file.bin");
        assert_eq!(url_basename("http://h/dir/"), "dir");
        assert_eq!(url_basename("http://h"), "h");
        assert_eq!(url_basename("https://"), "https://");
    }
}
