//! A request for part of a file, and the judgement of its answer, with no I/O.
//!
//! Two versions of a file must never be spliced together, so every answer is judged against what was asked and what
//! the plan knows of the file before a byte of it is written: its validators (`ETag`, `Last-Modified`) must not differ
//! from the plan's, a ranged request must get a `206` whose `Content-Range` starts where it asked and ends no later,
//! and an unranged `200` must be the size the plan expects. Both body paths (reqwest and [`super::splice`]) are judged
//! here, so they cannot drift apart.

use std::ops::Range;

use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::error::TransferError;
use super::segments::OPEN_END;

/// What one request asks for, and what the plan knows of the file to tell one version of it from another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// First byte asked for.
    pub pos: u64,
    /// One past the last byte asked for; [`OPEN_END`] when the request runs to the end of the file.
    pub end: u64,
    /// The request carries `Range` (and `If-Range`): the server said it serves ranges.
    pub ranges: bool,
    pub total: Option<u64>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Asked {
    /// What to send as `If-Range`: a strong ETag, else Last-Modified.
    pub fn if_range(&self) -> Option<&str> {
        self.etag
            .as_deref()
            .filter(|e| !e.starts_with("W/"))
            .or(self.last_modified.as_deref())
    }

    /// Add `Range` and `If-Range` to a request's headers when it is ranged.
    pub fn add_headers(&self, headers: &mut HeaderMap) {
        if !self.ranges {
            return;
        }
        let range = if self.end == OPEN_END {
            format!("bytes={}-", self.pos)
        } else {
            format!("bytes={}-{}", self.pos, self.end - 1)
        };
        headers.insert(
            header::RANGE,
            HeaderValue::from_str(&range).expect("digits are a valid header value"),
        );
        if let Some(v) = self.if_range().and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(header::IF_RANGE, v);
        }
    }
}

/// Judge an answer to `asked`: the bytes of the file its body holds (from `asked.pos`; up to [`OPEN_END`] when the
/// body ends where the server closes it), or why none of it may be written.
pub fn judge(
    asked: &Asked,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<Range<u64>, TransferError> {
    let changed = |what: &str| TransferError::Changed(what.to_string());
    let differs = |name: HeaderName, known: &Option<String>| match (
        known,
        headers.get(name).and_then(|v| v.to_str().ok()),
    ) {
        (Some(k), Some(got)) => k != got,
        _ => false,
    };
    if differs(header::ETAG, &asked.etag) {
        return Err(changed("ETag differs"));
    }
    if differs(header::LAST_MODIFIED, &asked.last_modified) {
        return Err(changed("Last-Modified differs"));
    }
    match status {
        StatusCode::PARTIAL_CONTENT if asked.ranges => ranged(asked, headers),
        StatusCode::OK if asked.ranges => Err(TransferError::NoRanges),
        StatusCode::OK => match (asked.total, content_length(headers)) {
            (Some(t), Some(len)) if t != len => Err(changed("size differs")),
            _ => Ok(asked.pos..OPEN_END),
        },
        StatusCode::RANGE_NOT_SATISFIABLE => Err(changed("the server refused the range (416)")),
        s => Err(TransferError::from_status(s, headers)),
    }
}

/// A 206's bytes: its `Content-Range` must start at the byte asked for and end no later than asked (a server may send
/// less), and name the plan's size if it names one.
fn ranged(asked: &Asked, headers: &HeaderMap) -> Result<Range<u64>, TransferError> {
    let cr = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_content_range);
    let Some(cr) = cr else {
        return Err(TransferError::BadRange(
            "206 without a valid Content-Range".into(),
        ));
    };
    if cr.total.is_some() && asked.total.is_some() && cr.total != asked.total {
        return Err(TransferError::Changed("size differs".into()));
    }
    let want_last = if asked.end == OPEN_END {
        cr.last
    } else {
        asked.end - 1
    };
    if cr.first != asked.pos || cr.last > want_last {
        return Err(TransferError::BadRange(format!(
            "asked for bytes {}-{want_last}, got {}-{}",
            asked.pos, cr.first, cr.last
        )));
    }
    Ok(asked.pos..cr.last + 1)
}

/// A response's `Content-Length`, when it has one that reads as a length.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    protocol::validate::content_length(headers.get(header::CONTENT_LENGTH)?.to_str().ok()?)
}

/// A `Content-Range: bytes first-last/total` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    pub last: u64,
    pub total: Option<u64>,
}

pub fn parse_content_range(v: &str) -> Option<ContentRange> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.trim().split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (first <= last && total.is_none_or(|t| last < t)).then_some(ContentRange { first, last, total })
}

#[cfg(test)]
#[path = "response_tests.rs"]
mod tests;
