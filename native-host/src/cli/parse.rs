//! Value parsers for flags and arguments. The rules themselves are [`protocol::validate`]'s, shared with the engine
//! and the popup; this file only reads the command line's spelling of them.

use anyhow::Context;
use protocol::validate;
use sdm::install::Browser;

/// `-c/--connections` as clap ranges take it: [`protocol::THREADS_RANGE`].
pub const CONNECTIONS: std::ops::RangeInclusive<i64> =
    *protocol::THREADS_RANGE.start() as i64..=*protocol::THREADS_RANGE.end() as i64;
/// `--retries` as clap ranges take it: up to [`protocol::MAX_RETRIES`].
pub const RETRIES: std::ops::RangeInclusive<i64> = 0..=protocol::MAX_RETRIES as i64;

/// A URL the engine will take; the error names the URL, since the message alone may not.
pub fn check_url(url: &str) -> anyhow::Result<()> {
    validate::url(url).with_context(|| format!("cannot download {url:?}"))?;
    Ok(())
}

/// A header as `Name: value`.
pub fn header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("header {s:?} needs a colon: write it as 'Name: value'"))?;
    validate::header(name, value).map_err(|e| e.0)?;
    Ok((name.trim().to_string(), value.trim().to_string()))
}

/// A sha256 as 64 hexadecimal digits, in lower case.
pub fn sha256(s: &str) -> Result<String, String> {
    if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err("a sha256 is 64 hexadecimal digits".to_string())
    }
}

/// A byte count, with an optional K, M or G suffix (powers of 1024), e.g. `500K` or `2M`.
pub fn bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&t[..i], t[i..].to_ascii_lowercase()),
        None => (t, String::new()),
    };
    let not_bytes = || format!("{s:?} is not a byte count: write e.g. 500000, 500K or 2M");
    let factor: u64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(not_bytes()),
    };
    let n: u64 = digits.trim().parse().map_err(|_| not_bytes())?;
    n.checked_mul(factor)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A browser by its name.
pub fn browser(s: &str) -> Result<Browser, String> {
    Browser::from_name(s)
        .ok_or_else(|| format!("unknown browser {s:?}: use one of {}", Browser::names()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_need_a_name_and_a_colon() {
        assert_eq!(
            header("User-Agent: x/1").unwrap(),
            ("User-Agent".into(), "x/1".into())
        );
        assert_eq!(
            header("Cookie:a=b; c=d").unwrap(),
            ("Cookie".into(), "a=b; c=d".into())
        );
        assert!(header("no colon").is_err());
        assert!(header(": value").is_err());
        assert!(header("Bad Name: v").is_err());
        assert!(header("X: a\r\nInjected: b").is_err());
    }

    #[test]
    fn byte_counts_take_binary_suffixes() {
        assert_eq!(bytes("0").unwrap(), 0);
        assert_eq!(bytes("500000").unwrap(), 500_000);
        assert_eq!(bytes("500K").unwrap(), 500 * 1024);
        assert_eq!(bytes("2M").unwrap(), 2 << 20);
        assert_eq!(bytes("1GiB").unwrap(), 1 << 30);
        assert!(bytes("fast").is_err());
        assert!(bytes("-1").is_err());
    }

    #[test]
    fn sha256_is_64_hex_digits() {
        let hex = "AB".repeat(32);
        assert_eq!(sha256(&hex).unwrap(), "ab".repeat(32));
        assert!(sha256("abc").is_err());
    }

    #[test]
    fn urls_must_be_http() {
        assert!(check_url("https://example.com/a").is_ok());
        assert!(check_url("ftp://example.com/a").is_err());
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn clap_ranges_are_the_protocol_ranges() {
        assert_eq!(CONNECTIONS, 1..=32);
        assert_eq!(RETRIES, 0..=100);
    }
}
