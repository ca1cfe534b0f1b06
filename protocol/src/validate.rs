//! The checks on what a request may carry, written once: the engine, the command line and the popup all call these,
//! so a value the popup accepts is one the engine accepts, with the same message.
//!
//! Every function takes the value as the sender wrote it and answers with the value to use or an [`Invalid`] whose
//! message names the field and says what would be accepted.

use crate::{MAX_CONCURRENT_RANGE, MAX_RETRIES, MAX_URL_LEN, THREADS_RANGE};

/// Why a value was refused, worded for the person who typed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Most headers a download may carry.
pub const MAX_HEADERS: usize = 64;

/// Longest header name, the limit of the `http` crate that finally sends it.
const MAX_HEADER_NAME_LEN: usize = (1 << 16) - 1;

/// An http or https URL of at most [`MAX_URL_LEN`] bytes, with a host and without credentials in it. Surrounding
/// spaces are ignored.
pub fn url(text: &str) -> Result<url::Url, Invalid> {
    if text.len() > MAX_URL_LEN {
        return Err(Invalid(format!(
            "URL is {} bytes long; at most {MAX_URL_LEN} are allowed",
            text.len()
        )));
    }
    let url = url::Url::parse(text.trim()).map_err(|e| Invalid(format!("not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Invalid(format!(
            "only http or https URLs can be downloaded, not {}:",
            url.scheme()
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Invalid(
            "URL must not contain a user name or password; send an Authorization header instead"
                .into(),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Invalid("URL has no host".into()));
    }
    Ok(url)
}

/// Connections per download, within [`THREADS_RANGE`].
pub fn threads(n: u32) -> Result<u32, Invalid> {
    between("threads", n, THREADS_RANGE)
}

/// Retries per connection, at most [`MAX_RETRIES`].
pub fn retries(n: u32) -> Result<u32, Invalid> {
    if n <= MAX_RETRIES {
        Ok(n)
    } else {
        Err(Invalid(format!(
            "retries must be at most {MAX_RETRIES}, not {n}"
        )))
    }
}

/// Downloads running at once, within [`MAX_CONCURRENT_RANGE`].
pub fn max_concurrent(n: u32) -> Result<u32, Invalid> {
    between("max_concurrent", n, MAX_CONCURRENT_RANGE)
}

fn between(name: &str, n: u32, range: std::ops::RangeInclusive<u32>) -> Result<u32, Invalid> {
    if range.contains(&n) {
        Ok(n)
    } else {
        Err(Invalid(format!(
            "{name} must be between {} and {}, not {n}",
            range.start(),
            range.end()
        )))
    }
}

/// A request header that can be sent as written, surrounding spaces aside: the name an HTTP token, the value free of
/// control characters other than tab (a line break would let it smuggle in a header of its own).
pub fn header(name: &str, value: &str) -> Result<(), Invalid> {
    let name = name.trim();
    let is_token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || name.len() > MAX_HEADER_NAME_LEN || !name.bytes().all(is_token) {
        return Err(Invalid(format!(
            "header name {name:?} is not valid: use letters, digits and - (as in 'User-Agent: x')"
        )));
    }
    // Bytes from 0x80 up are allowed: HTTP passes them through as opaque text, and browsers send such cookies.
    let is_text = |b: u8| b == b'\t' || (b >= 0x20 && b != 0x7f);
    if !value.trim().bytes().all(is_text) {
        return Err(Invalid(format!(
            "header {name} has a line break or another control character in its value"
        )));
    }
    Ok(())
}

/// At most [`MAX_HEADERS`] headers.
pub fn header_count(n: usize) -> Result<(), Invalid> {
    if n <= MAX_HEADERS {
        Ok(())
    } else {
        Err(Invalid(format!("at most {MAX_HEADERS} headers, not {n}")))
    }
}

/// A `Content-Length` value: decimal digits only, surrounding spaces aside. A sign, a list (`5, 5`) or a number
/// beyond `u64` gives `None`, since a length read wrong would make the file wrong.
pub fn content_length(v: &str) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_with_a_host_and_no_credentials() {
        assert_eq!(
            url(" http://127.0.0.1/a ").unwrap().as_str(),
            "http://127.0.0.1/a"
        );
        assert!(url("https://example.org/a?b=c").is_ok());
        for (bad, says) in [
            ("ftp://x/a", "http or https"),
            ("file:///etc/passwd", "http or https"),
            ("javascript:alert(1)", "http or https"),
            ("data:,x", "http or https"),
            ("http://u:p@x/a", "password"),
            ("http://u@x/a", "user"),
            ("nope", "not a valid URL"),
            ("", "not a valid URL"),
            ("http://", "URL"),
        ] {
            let err = url(bad).unwrap_err();
            assert!(err.0.contains(says), "{bad}: {err}");
        }
        let long = format!("http://x/{}", "a".repeat(MAX_URL_LEN));
        assert!(url(&long).unwrap_err().0.contains("at most"));
    }

    #[test]
    fn numbers_are_checked_against_their_ranges() {
        assert_eq!(threads(1), Ok(1));
        assert_eq!(threads(32), Ok(32));
        assert_eq!(
            threads(0).unwrap_err().0,
            "threads must be between 1 and 32, not 0"
        );
        assert!(threads(33).is_err());
        assert_eq!(retries(0), Ok(0));
        assert_eq!(retries(MAX_RETRIES), Ok(MAX_RETRIES));
        assert_eq!(
            retries(101).unwrap_err().0,
            "retries must be at most 100, not 101"
        );
        assert_eq!(max_concurrent(4), Ok(4));
        assert!(max_concurrent(0).unwrap_err().0.contains("max_concurrent"));
        assert!(max_concurrent(u32::MAX).is_err());
    }

    #[test]
    fn headers_need_a_token_name_and_a_value_without_controls() {
        assert!(header("User-Agent", "x/1").is_ok());
        assert!(header(" Cookie ", " a=b; c=d ").is_ok());
        assert!(header("X-Tab", "a\tb").is_ok());
        assert!(header("X-Utf8", "café").is_ok());
        assert!(header("X-Empty", "").is_ok());
        for (name, value) in [
            ("", "v"),
            ("Bad Name", "v"),
            ("X:", "v"),
            ("X", "a\r\nInjected: b"),
            ("X", "a\0b"),
            ("X", "a\x7fb"),
        ] {
            let err = header(name, value).unwrap_err();
            assert!(err.0.contains("header"), "{name:?}: {value:?}: {err}");
        }
        assert!(header(&"a".repeat(MAX_HEADER_NAME_LEN + 1), "v").is_err());
    }

    #[test]
    fn at_most_64_headers() {
        assert!(header_count(0).is_ok());
        assert!(header_count(64).is_ok());
        assert!(
            header_count(65)
                .unwrap_err()
                .0
                .contains("at most 64 headers")
        );
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(content_length("0"), Some(0));
        assert_eq!(content_length(" 1234 "), Some(1234));
        assert_eq!(content_length("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            " ",
            "+5",
            "-1",
            "5, 5",
            "1e3",
            "0x10",
            "18446744073709551616",
        ] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
    }
}
