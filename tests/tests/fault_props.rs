//! Randomized properties of the parsers that face the outside, in the normal suite (the same properties run longer
//! under cargo-fuzz in `fuzz/`): requests survive a JSON round trip and bad frames never panic, `Content-Range`
//! parses exactly what is valid, sanitized names are single harmless components and sanitizing is stable.
//!
//! Generated with the suite's seeded [`Rng`] (the seed is printed), so a failure can be replayed.

use std::collections::BTreeMap;

use bytes::BytesMut;
use protocol::{AddRequest, Command, PageRequest, Request, SettingsPatch, parse_request};
use sdm::engine::filename::{from_content_disposition, sanitize, validate_user_name};
use sdm::engine::probe::parse_content_range;
use tokio_util::codec::Decoder;

use crate::fault_support::Rng;

const CASES: usize = 5000;

/// Characters that make parsers and file systems trip, mixed with plain ones.
const NASTY: &[&str] = &[
    "a",
    "Z",
    "0",
    ".",
    "..",
    "/",
    "\\",
    "\0",
    "\r",
    "\n",
    "\t",
    " ",
    "\"",
    "'",
    ";",
    "=",
    "*",
    "%",
    "%2F",
    "%00",
    "%E2%82%AC",
    "é",
    "€",
    "\u{202e}",
    "\u{feff}",
    "𝄞",
    "CON",
    "nul",
    "LPT1",
    ":",
    "<",
    ">",
    "|",
    "?",
    "UTF-8''",
    "filename=",
    "filename*=",
    "attachment",
    "\u{7f}",
    "\u{85}",
];

fn nasty_string(rng: &mut Rng, max_parts: u64) -> String {
    (0..rng.range(0, max_parts))
        .map(|_| NASTY[rng.range(0, NASTY.len() as u64) as usize])
        .collect()
}

fn maybe<T>(rng: &mut Rng, value: impl FnOnce(&mut Rng) -> T) -> Option<T> {
    (rng.range(0, 2) == 0).then(|| value(rng))
}

fn number(rng: &mut Rng) -> u64 {
    match rng.range(0, 4) {
        0 => rng.range(0, 40),
        1 => u64::from(u32::MAX),
        2 => rng.next(),
        _ => rng.next() >> 33,
    }
}

fn random_command(rng: &mut Rng) -> Command {
    let id = number(rng);
    let page = PageRequest {
        offset: rng.range(0, 5000) as usize,
        limit: maybe(rng, |rng| rng.range(0, 5000) as usize),
    };
    match rng.range(0, 14) {
        0 => Command::Ping,
        1 => {
            let mut headers = BTreeMap::new();
            for _ in 0..rng.range(0, 4) {
                headers.insert(nasty_string(rng, 4), nasty_string(rng, 6));
            }
            Command::Add(AddRequest {
                url: nasty_string(rng, 10),
                filename: maybe(rng, |rng| nasty_string(rng, 6)),
                threads: maybe(rng, |rng| number(rng) as u32),
                retries: maybe(rng, |rng| number(rng) as u32),
                bandwidth_limit: maybe(rng, number),
                headers,
                referrer: maybe(rng, |rng| nasty_string(rng, 5)),
                client_key: maybe(rng, |rng| nasty_string(rng, 3)),
                expect: maybe(rng, |rng| protocol::Expect {
                    size: maybe(rng, number),
                    mime: maybe(rng, |rng| nasty_string(rng, 2)),
                }),
            })
        }
        2 => Command::List(page),
        3 => Command::Pause { download_id: id },
        4 => Command::Resume { download_id: id },
        5 => Command::Cancel { download_id: id },
        6 => Command::Remove {
            download_id: id,
            delete_file: rng.range(0, 2) == 0,
        },
        7 => Command::Open {
            download_id: id,
            folder: rng.range(0, 2) == 0,
        },
        8 => Command::History(page),
        9 => Command::ClearHistory,
        10 => Command::GetSettings,
        11 => Command::SetSettings {
            settings: SettingsPatch {
                max_concurrent: maybe(rng, |rng| number(rng) as u32),
                bandwidth_limit: maybe(rng, number),
                download_dir: maybe(rng, |rng| nasty_string(rng, 6)),
                default_threads: maybe(rng, |rng| number(rng) as u32),
                default_retries: maybe(rng, |rng| number(rng) as u32),
                stall_timeout_secs: maybe(rng, number),
                capture_enabled: maybe(rng, |rng| rng.range(0, 2) == 0),
                capture_min_size: maybe(rng, number),
                capture_exclude: maybe(rng, |rng| {
                    (0..rng.range(0, 3)).map(|_| nasty_string(rng, 3)).collect()
                }),
            },
        },
        12 => Command::Find {
            client_key: nasty_string(rng, 3),
        },
        _ => Command::Subscribe,
    }
}

#[test]
fn requests_survive_a_round_trip_and_damaged_frames_never_panic() {
    let mut rng = Rng::from_env("requests round trip");
    for _ in 0..CASES {
        let request = Request {
            id: number(&mut rng),
            command: random_command(&mut rng),
        };
        let frame = serde_json::to_vec(&request).unwrap();
        assert_eq!(parse_request(&frame).unwrap(), request);

        // Damage it: cut it, flip a byte, or splice in a nasty fragment.
        let mut bad = frame.clone();
        match rng.range(0, 3) {
            0 => bad.truncate(rng.range(0, bad.len() as u64) as usize),
            1 => {
                let i = rng.range(0, bad.len() as u64) as usize;
                bad[i] ^= 1 << rng.range(0, 8);
            }
            _ => {
                let i = rng.range(0, bad.len() as u64) as usize;
                let piece = nasty_string(&mut rng, 3);
                bad.splice(i..i, piece.bytes());
            }
        }
        match parse_request(&bad) {
            Ok(parsed) => assert_eq!(
                parse_request(&serde_json::to_vec(&parsed).unwrap()).unwrap(),
                parsed
            ),
            Err(reply) => {
                assert!(!reply.ok);
                let error = reply.error.expect("an error body");
                assert!(!error.message.is_empty());
                if let Some(id) = reply.id {
                    let v: serde_json::Value = serde_json::from_slice(&bad).unwrap();
                    assert_eq!(v["id"].as_u64(), Some(id));
                }
            }
        }
    }
}

#[test]
fn decoded_frames_re_encode_to_the_bytes_consumed() {
    let mut rng = Rng::from_env("frames re-encode");
    for _ in 0..CASES {
        let mut wire = Vec::new();
        for _ in 0..rng.range(0, 5) {
            let body: Vec<u8> = (0..rng.range(0, 64)).map(|_| rng.next() as u8).collect();
            wire.extend(protocol::codec::encode(&body));
        }
        // Sometimes trailing garbage or a lying length.
        for _ in 0..rng.range(0, 6) {
            wire.push(rng.next() as u8);
        }
        let mut codec = protocol::codec::codec(128);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in wire.chunks(rng.range(1, 20) as usize) {
            buf.extend_from_slice(chunk);
            while let Ok(Some(frame)) = codec.decode(&mut buf) {
                assert!(frame.len() <= 128);
                frames.push(frame);
            }
        }
        let again: Vec<u8> = frames
            .iter()
            .flat_map(|f| protocol::codec::encode(f))
            .collect();
        assert_eq!(&wire[..again.len()], &again[..]);
    }
}

#[test]
fn content_range_parses_exactly_the_valid_ranges() {
    let mut rng = Rng::from_env("content-range");
    for _ in 0..CASES * 4 {
        let first = number(&mut rng);
        let last = if rng.range(0, 4) == 0 {
            number(&mut rng)
        } else {
            first.saturating_add(rng.range(0, 1 << 20))
        };
        let total = match rng.range(0, 3) {
            0 => None,
            1 => Some(last.saturating_add(rng.range(0, 3))),
            _ => Some(number(&mut rng)),
        };
        let text = format!(
            "bytes {first}-{last}/{}",
            total.map_or("*".into(), |t| t.to_string())
        );
        let valid = first <= last && total.is_none_or(|t| last < t);
        match parse_content_range(&text) {
            Some(r) => {
                assert!(valid, "accepted {text:?}");
                assert_eq!((r.first, r.last, r.total), (first, last, total), "{text:?}");
            }
            None => assert!(!valid, "refused the valid {text:?}"),
        }
        // Junk around it never panics, and whatever is accepted is still sane.
        let junk = format!(
            "{}{}{}",
            nasty_string(&mut rng, 2),
            text,
            nasty_string(&mut rng, 2)
        );
        if let Some(r) = parse_content_range(&junk) {
            assert!(
                r.first <= r.last && r.total.is_none_or(|t| r.last < t),
                "{junk:?}"
            );
        }
    }
}

#[test]
fn sanitized_names_are_single_harmless_components() {
    let mut rng = Rng::from_env("sanitized names");
    for _ in 0..CASES * 4 {
        let raw = nasty_string(&mut rng, 12);
        let header = match rng.range(0, 3) {
            0 => format!("attachment; filename=\"{raw}\""),
            1 => format!("attachment; filename*=UTF-8''{raw}"),
            _ => raw.clone(),
        };
        for name in [from_content_disposition(&header).unwrap_or_default(), raw] {
            let safe = sanitize(&name);
            assert!(!safe.is_empty());
            assert!(!safe.contains(['/', '\\', '\0']), "{name:?} -> {safe:?}");
            assert!(!safe.chars().any(char::is_control), "{name:?} -> {safe:?}");
            assert!(safe != "." && safe != "..", "{name:?} -> {safe:?}");
            assert!(validate_user_name(&safe).is_ok(), "{name:?} -> {safe:?}");
        }
    }
}

/// A name the user will see and type: no whitespace at either end, and sanitizing it again changes nothing.
#[test]
fn sanitize_is_idempotent_and_trimmed() {
    // Found by fuzz/content_disposition: a last component `. <NUL>` became ` _`.
    let found = sanitize(". \0");
    assert_eq!(found.trim(), found, "{found:?}");
    let mut rng = Rng::from_env("sanitize idempotent");
    for _ in 0..CASES * 4 {
        let name = nasty_string(&mut rng, 12);
        let safe = sanitize(&name);
        assert_eq!(safe.trim(), safe, "{name:?} -> {safe:?}");
        assert_eq!(sanitize(&safe), safe, "{name:?} -> {safe:?}");
    }
}
