use super::*;

/// Bytes 100-199 of a 1000-byte file known by ETag "v1" and a Last-Modified date.
fn asked() -> Asked {
    Asked {
        pos: 100,
        end: 200,
        ranges: true,
        total: Some(1000),
        etag: Some("\"v1\"".into()),
        last_modified: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
    }
}

fn unranged() -> Asked {
    Asked {
        pos: 0,
        end: 1000,
        ranges: false,
        ..asked()
    }
}

fn head(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_static(v));
    }
    h
}

/// What [`judge`] says, in a form a table can hold: the range, or the error's message.
fn verdict(
    asked: &Asked,
    status: u16,
    pairs: &[(&'static str, &'static str)],
) -> Result<Range<u64>, String> {
    judge(asked, StatusCode::from_u16(status).unwrap(), &head(pairs)).map_err(|e| e.to_string())
}

/// A case of the table: its name, the request, the answer's status and headers, and the verdict.
type Case<'a> = (
    &'a str,
    &'a Asked,
    u16,
    Vec<(&'static str, &'static str)>,
    Result<Range<u64>, String>,
);

#[test]
fn answers_are_judged_against_what_was_asked() {
    let open = Asked {
        end: OPEN_END,
        ..asked()
    };
    let unknown_size = Asked {
        total: None,
        end: OPEN_END,
        ..unranged()
    };
    let (a, u) = (asked(), unranged());
    let changed = |what: &str| {
        Err(format!(
            "the file changed on the server during the download ({what})"
        ))
    };
    let bad_range = |what: &str| Err(format!("server sent a wrong range: {what}"));
    #[rustfmt::skip]
    let table: Vec<Case> = vec![
        ("the range asked for", &a, 206, vec![("content-range", "bytes 100-199/1000")], Ok(100..200)),
        ("less than asked: the caller asks for the rest", &a, 206, vec![("content-range", "bytes 100-149/1000")], Ok(100..150)),
        ("same validators", &a, 206, vec![("content-range", "bytes 100-199/1000"), ("etag", "\"v1\""), ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT")], Ok(100..200)),
        ("an unknown total is no change", &a, 206, vec![("content-range", "bytes 100-199/*")], Ok(100..200)),
        ("an open request takes what the server says", &open, 206, vec![("content-range", "bytes 100-999/1000")], Ok(100..1000)),
        ("another ETag", &a, 206, vec![("content-range", "bytes 100-199/1000"), ("etag", "\"v2\"")], changed("ETag differs")),
        ("another date", &a, 206, vec![("content-range", "bytes 100-199/1000"), ("last-modified", "Thu, 22 Oct 2015 07:28:00 GMT")], changed("Last-Modified differs")),
        ("validators are judged before the status", &a, 503, vec![("etag", "\"v2\"")], changed("ETag differs")),
        ("another size", &a, 206, vec![("content-range", "bytes 100-199/2000")], changed("size differs")),
        ("no Content-Range", &a, 206, vec![], bad_range("206 without a valid Content-Range")),
        ("a garbled Content-Range", &a, 206, vec![("content-range", "bytes 199-100/1000")], bad_range("206 without a valid Content-Range")),
        ("another start", &a, 206, vec![("content-range", "bytes 0-199/1000")], bad_range("asked for bytes 100-199, got 0-199")),
        ("past the end asked", &a, 206, vec![("content-range", "bytes 100-299/1000")], bad_range("asked for bytes 100-199, got 100-299")),
        ("a ranged request answered whole", &a, 200, vec![("content-length", "1000")], Err("server does not serve ranges".into())),
        ("416", &a, 416, vec![], changed("the server refused the range (416)")),
        ("unranged, the right size", &u, 200, vec![("content-length", "1000")], Ok(0..OPEN_END)),
        ("unranged, no length", &u, 200, vec![], Ok(0..OPEN_END)),
        ("unranged, an unreadable length", &u, 200, vec![("content-length", "+999")], Ok(0..OPEN_END)),
        ("unranged, another size", &u, 200, vec![("content-length", "999")], changed("size differs")),
        ("unranged, unknown size", &unknown_size, 200, vec![("content-length", "5")], Ok(0..OPEN_END)),
        ("a 206 to an unranged request", &u, 206, vec![("content-range", "bytes 0-999/1000")], Err("server answered 206 Partial Content".into())),
        ("gone", &a, 410, vec![], Err("server answered 410 Gone: the file is not on the server".into())),
        ("busy", &a, 503, vec![("retry-after", "7")], Err("server answered 503 Service Unavailable".into())),
    ];
    for (case, asked, status, pairs, want) in table {
        assert_eq!(verdict(asked, status, &pairs), want, "{case}");
    }
}

#[test]
fn a_status_error_keeps_the_servers_retry_after() {
    let err = judge(
        &asked(),
        StatusCode::SERVICE_UNAVAILABLE,
        &head(&[("retry-after", "7")]),
    )
    .unwrap_err();
    assert!(err.is_retryable());
    assert_eq!(err.wait_hint(), Some(std::time::Duration::from_secs(7)));
    let err = judge(&asked(), StatusCode::OK, &head(&[])).unwrap_err();
    assert!(matches!(err, TransferError::NoRanges));
}

#[test]
fn ranged_requests_carry_range_and_if_range() {
    let headers = |asked: &Asked| {
        let mut h = HeaderMap::new();
        asked.add_headers(&mut h);
        let get = |name| {
            h.get(name)
                .map(|v: &HeaderValue| v.to_str().unwrap().to_string())
        };
        (get(header::RANGE), get(header::IF_RANGE))
    };
    assert_eq!(
        headers(&asked()),
        (Some("bytes=100-199".into()), Some("\"v1\"".into()))
    );
    let weak = Asked {
        end: OPEN_END,
        etag: Some("W/\"v1\"".into()),
        ..asked()
    };
    assert_eq!(
        headers(&weak),
        (
            Some("bytes=100-".into()),
            Some("Wed, 21 Oct 2015 07:28:00 GMT".into())
        ),
        "a weak ETag cannot make a range conditional; the date can"
    );
    let bare = Asked {
        etag: None,
        last_modified: None,
        ..asked()
    };
    assert_eq!(headers(&bare), (Some("bytes=100-199".into()), None));
    assert_eq!(headers(&unranged()), (None, None));
}

#[test]
fn content_length_is_read_from_the_header() {
    assert_eq!(
        content_length(&head(&[("content-length", " 42 ")])),
        Some(42)
    );
    assert_eq!(content_length(&head(&[("content-length", "4 2")])), None);
    assert_eq!(content_length(&head(&[])), None);
}

#[test]
fn content_range_forms() {
    assert_eq!(
        parse_content_range("bytes 0-99/1000"),
        Some(ContentRange {
            first: 0,
            last: 99,
            total: Some(1000)
        })
    );
    assert_eq!(
        parse_content_range("bytes 5-9/*"),
        Some(ContentRange {
            first: 5,
            last: 9,
            total: None
        })
    );
    assert_eq!(parse_content_range("bytes 9-5/100"), None);
    assert_eq!(parse_content_range("bytes 0-100/100"), None);
    assert_eq!(parse_content_range("items 0-1/2"), None);
    assert_eq!(parse_content_range("bytes */100"), None);
}
