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

#[test]
fn status_and_stop_are_bare_commands_and_status_counts_every_status() {
    assert_eq!(
        parse_request(br#"{"id":2,"cmd":"status"}"#)
            .unwrap()
            .command,
        Command::Status
    );
    assert_eq!(
        parse_request(br#"{"id":3,"cmd":"stop"}"#).unwrap().command,
        Command::Stop
    );
    let mut counts = StatusCounts::default();
    for status in [Status::Downloading, Status::Downloading, Status::Failed] {
        counts.add(status);
    }
    let result = StatusResult {
        version: "0.1.0".into(),
        pid: 42,
        data_dir: "/d".into(),
        counts,
    };
    let value = serde_json::to_value(&result).unwrap();
    assert_eq!(value["counts"]["downloading"], 2);
    assert_eq!(value["counts"]["failed"], 1);
    assert_eq!(value["counts"]["queued"], 0);
    assert_eq!(counts.total(), 3);
    let back: StatusResult = serde_json::from_value(value).unwrap();
    assert_eq!(back, result);
}

#[test]
fn queue_operations_have_their_wire_shape() {
    let cases = [
        (
            json!({"id": 1, "cmd": "update", "download_id": 3, "bandwidth_limit": 1024}),
            Command::Update {
                download_id: 3,
                bandwidth_limit: Some(1024),
                threads: None,
            },
        ),
        (
            json!({"id": 1, "cmd": "update", "download_id": 3, "threads": 4}),
            Command::Update {
                download_id: 3,
                bandwidth_limit: None,
                threads: Some(4),
            },
        ),
        (
            json!({"id": 1, "cmd": "set_url", "download_id": 3, "url": "http://x/a"}),
            Command::SetUrl {
                download_id: 3,
                url: "http://x/a".into(),
                restart: false,
                headers: None,
                referrer: None,
            },
        ),
        (
            json!({"id": 1, "cmd": "set_url", "download_id": 3, "url": "http://x/a", "restart": true}),
            Command::SetUrl {
                download_id: 3,
                url: "http://x/a".into(),
                restart: true,
                headers: None,
                referrer: None,
            },
        ),
        (
            json!({"id": 1, "cmd": "set_url", "download_id": 3, "url": "http://x/a",
                   "headers": {"Cookie": "k=v"}, "referrer": "http://x/"}),
            Command::SetUrl {
                download_id: 3,
                url: "http://x/a".into(),
                restart: false,
                headers: Some(BTreeMap::from([("Cookie".into(), "k=v".into())])),
                referrer: Some("http://x/".into()),
            },
        ),
        (
            json!({"id": 1, "cmd": "move", "download_id": 3, "to": "top"}),
            Command::Move {
                download_id: 3,
                to: MoveTo::Top,
            },
        ),
        (json!({"id": 1, "cmd": "pause_all"}), Command::PauseAll),
        (json!({"id": 1, "cmd": "resume_all"}), Command::ResumeAll),
        (
            json!({"id": 1, "cmd": "clear_finished"}),
            Command::ClearFinished,
        ),
    ];
    for (text, command) in cases {
        let req = Request { id: 1, command };
        assert_eq!(serde_json::to_value(&req).unwrap(), text);
        assert_eq!(parse_request(text.to_string().as_bytes()).unwrap(), req);
    }
    for to in ["up", "down", "bottom"] {
        let frame = json!({"id": 1, "cmd": "move", "download_id": 3, "to": to}).to_string();
        assert!(parse_request(frame.as_bytes()).is_ok(), "{to}");
    }
    let bad = br#"{"id":9,"cmd":"move","download_id":3,"to":"sideways"}"#;
    assert_eq!(parse_request(bad).unwrap_err().id, Some(9));
    let count = serde_json::to_value(CountResult { count: 2 }).unwrap();
    assert_eq!(count, json!({"count": 2}));
    let conflict = Reply::err(Some(1), ErrorCode::Conflict, "another file");
    assert_eq!(
        serde_json::to_value(&conflict).unwrap()["error"]["code"],
        "conflict"
    );
}

#[test]
fn add_many_round_trips_and_its_results_keep_their_order() {
    let req = Request {
        id: 4,
        command: Command::AddMany {
            items: vec![
                AddRequest {
                    url: "http://x/a".into(),
                    threads: Some(2),
                    ..AddRequest::default()
                },
                AddRequest {
                    url: "http://x/b".into(),
                    ..AddRequest::default()
                },
            ],
        },
    };
    let text = json!({"id": 4, "cmd": "add_many", "items": [
        {"url": "http://x/a", "threads": 2},
        {"url": "http://x/b"},
    ]});
    assert_eq!(serde_json::to_value(&req).unwrap(), text);
    assert_eq!(parse_request(text.to_string().as_bytes()).unwrap(), req);
    let unknown = br#"{"id":5,"cmd":"add_many","items":[{"url":"http://x/a","colour":"red"}]}"#;
    assert_eq!(parse_request(unknown).unwrap_err().id, Some(5));

    let result = AddManyResult {
        results: vec![
            AddOutcome::Added(AddResult {
                id: 7,
                existing: false,
            }),
            AddOutcome::failed(ErrorCode::InvalidArgument, "not a valid URL"),
            AddOutcome::Added(AddResult {
                id: 3,
                existing: true,
            }),
        ],
    };
    let wire = json!({"results": [
        {"id": 7},
        {"error": {"code": "invalid_argument", "message": "not a valid URL"}},
        {"id": 3, "existing": true},
    ]});
    assert_eq!(serde_json::to_value(&result).unwrap(), wire);
    let reply: Reply =
        serde_json::from_value(json!({"id": 4, "ok": true, "result": wire})).unwrap();
    assert_eq!(reply.into_result::<AddManyResult>().unwrap(), result);
}

#[test]
fn a_full_add_many_reply_of_long_errors_fits_in_a_frame() {
    // Cut at a character boundary: 2-byte characters.
    let wide = "é".repeat(MAX_OUTGOING_FRAME);
    let AddOutcome::Failed { error } = AddOutcome::failed(ErrorCode::InvalidArgument, &wide) else {
        panic!("a failure");
    };
    assert!(
        error.message.len() <= MAX_OUTCOME_MESSAGE,
        "{}",
        error.message.len()
    );
    assert!(error.message.ends_with('…'));
    let short = AddOutcome::failed(ErrorCode::Io, "disk full");
    assert_eq!(
        serde_json::to_value(&short).unwrap(),
        json!({"error": {"code": "io", "message": "disk full"}})
    );
    // The worst case: every byte a control character, escaped as 6.
    let long = "\u{1}".repeat(MAX_OUTGOING_FRAME);
    let reply = Reply::ok(
        u64::MAX,
        AddManyResult {
            results: (0..MAX_ADD_MANY)
                .map(|_| AddOutcome::failed(ErrorCode::InvalidArgument, &long))
                .collect(),
        },
    );
    to_frame(&reply, MAX_OUTGOING_FRAME).expect("the reply fits");
}
