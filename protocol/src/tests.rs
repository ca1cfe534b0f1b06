//! Unit tests of the frame types, beside `lib.rs` so the product source stays short.

use super::*;
use serde_json::json;

#[test]
fn request_round_trips_with_flattened_command() {
    let req = Request {
        id: 7,
        command: Command::Pause { download_id: 3 },
    };
    let text = serde_json::to_value(&req).unwrap();
    assert_eq!(text, json!({"id": 7, "cmd": "pause", "download_id": 3}));
    assert_eq!(parse_request(text.to_string().as_bytes()).unwrap(), req);
}

#[test]
fn add_request_reads_the_seed_fields() {
    let frame = br#"{"id":1,"cmd":"add","url":"http://x/a","threads":4,"headers":{"Cookie":"a=b"},"referrer":"http://x/"}"#;
    let req = parse_request(frame).unwrap();
    let Command::Add(add) = req.command else {
        panic!("not add")
    };
    assert_eq!(add.threads, Some(4));
    assert_eq!(add.headers.get("Cookie").map(String::as_str), Some("a=b"));
}

#[test]
fn invalid_json_gets_a_null_id() {
    let err = parse_request(b"{nope").unwrap_err();
    assert_eq!(err.id, None);
    assert_eq!(err.error.unwrap().code, ErrorCode::BadRequest);
}

#[test]
fn unknown_command_keeps_the_request_id() {
    let err = parse_request(br#"{"id":5,"cmd":"explode"}"#).unwrap_err();
    assert_eq!(err.id, Some(5));
    assert!(!err.ok);
}

#[test]
fn unknown_fields_are_refused() {
    assert!(parse_request(br#"{"id":5,"cmd":"pause","download_id":1,"x":2}"#).is_err());
}

#[test]
fn events_and_replies_are_told_apart() {
    let ev: Incoming = serde_json::from_str(r#"{"event":"removed","id":4}"#).unwrap();
    assert_eq!(ev, Incoming::Event(Event::Removed { id: 4 }));
    let rep: Incoming = serde_json::from_str(r#"{"id":4,"ok":true,"result":{}}"#).unwrap();
    assert!(matches!(rep, Incoming::Reply(Reply { ok: true, .. })));
}

#[test]
fn to_frame_refuses_oversize() {
    let big = "x".repeat(100);
    assert!(to_frame(&big, 50).is_err());
    assert!(to_frame(&big, 200).is_ok());
}

#[test]
fn to_frame_tells_an_unencodable_value_from_an_oversize_one() {
    let big = "x".repeat(100);
    assert!(matches!(
        to_frame(&big, 50),
        Err(FrameError::TooLarge {
            len: 102,
            limit: 50
        })
    ));
    let no_json: BTreeMap<(u8, u8), u8> = BTreeMap::from([((1, 2), 3)]);
    let err = to_frame(&no_json, MAX_OUTGOING_FRAME).unwrap_err();
    assert!(matches!(err, FrameError::Encode(_)), "{err}");
    assert!(err.to_string().contains("JSON"), "{err}");
}

#[test]
fn a_verified_add_round_trips_and_leaves_out_what_is_absent() {
    let req = Request {
        id: 3,
        command: Command::Add(AddRequest {
            url: "http://x/a.bin".into(),
            client_key: Some("k-1".into()),
            expect: Some(Expect {
                size: Some(1234),
                mime: Some("application/pdf".into()),
            }),
            ..AddRequest::default()
        }),
    };
    let text = serde_json::to_value(&req).unwrap();
    assert_eq!(
        text,
        json!({"id": 3, "cmd": "add", "url": "http://x/a.bin", "client_key": "k-1",
               "expect": {"size": 1234, "mime": "application/pdf"}})
    );
    assert_eq!(parse_request(text.to_string().as_bytes()).unwrap(), req);

    let plain = Request {
        id: 4,
        command: Command::Add(AddRequest {
            url: "http://x/b".into(),
            expect: Some(Expect::default()),
            ..AddRequest::default()
        }),
    };
    let text = serde_json::to_value(&plain).unwrap();
    assert_eq!(
        text,
        json!({"id": 4, "cmd": "add", "url": "http://x/b", "expect": {}})
    );
    assert_eq!(parse_request(text.to_string().as_bytes()).unwrap(), plain);
    assert!(
        parse_request(br#"{"id":5,"cmd":"add","url":"http://x/","expect":{"bytes":1}}"#).is_err(),
        "unknown fields of expect are refused"
    );
}

#[test]
fn add_result_says_existing_only_when_true() {
    let new = AddResult {
        id: 7,
        existing: false,
    };
    assert_eq!(serde_json::to_value(&new).unwrap(), json!({"id": 7}));
    assert_eq!(
        serde_json::from_value::<AddResult>(json!({"id": 7})).unwrap(),
        new
    );
    let joined = AddResult {
        id: 7,
        existing: true,
    };
    let text = serde_json::to_value(&joined).unwrap();
    assert_eq!(text, json!({"id": 7, "existing": true}));
    assert_eq!(serde_json::from_value::<AddResult>(text).unwrap(), joined);
}

#[test]
fn find_round_trips_with_a_download_or_null() {
    let req = Request {
        id: 9,
        command: Command::Find {
            client_key: "k".into(),
        },
    };
    let text = serde_json::to_value(&req).unwrap();
    assert_eq!(text, json!({"id": 9, "cmd": "find", "client_key": "k"}));
    assert_eq!(parse_request(text.to_string().as_bytes()).unwrap(), req);

    let none = FindResult { download: None };
    assert_eq!(
        serde_json::to_value(&none).unwrap(),
        json!({"download": null})
    );
    let download = DownloadInfo {
        id: 2,
        url: "http://x/a".into(),
        filename: "a".into(),
        path: "/d/a".into(),
        status: Status::Queued,
        total: None,
        downloaded: 0,
        speed: 0,
        eta: None,
        threads: 8,
        connections: 0,
        retries: 5,
        bandwidth_limit: 0,
        error: None,
        created_at: 1,
        finished_at: None,
    };
    let some = FindResult {
        download: Some(download),
    };
    let text = serde_json::to_value(&some).unwrap();
    assert_eq!(text["download"]["id"], 2);
    assert_eq!(serde_json::from_value::<FindResult>(text).unwrap(), some);
}

#[test]
fn fetch_failed_is_snake_case_on_the_wire() {
    let reply = Reply::err(
        Some(1),
        ErrorCode::FetchFailed,
        "the server answered 410 Gone",
    );
    let text = serde_json::to_value(&reply).unwrap();
    assert_eq!(text["error"]["code"], "fetch_failed");
    assert_eq!(serde_json::from_value::<Reply>(text).unwrap(), reply);
}

#[test]
fn settings_fill_missing_fields_with_defaults() {
    let s: Settings = serde_json::from_str(r#"{"max_concurrent":5}"#).unwrap();
    assert_eq!(s.max_concurrent, 5);
    assert_eq!(s.default_threads, DEFAULT_THREADS);
}
