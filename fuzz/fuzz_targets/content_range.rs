//! `Content-Range` parsing on any header value: never a panic, and whatever it accepts is a sane range that prints
//! back to a value parsing to the same range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sdm::engine::response::parse_content_range;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(r) = parse_content_range(value) {
        assert!(r.first <= r.last);
        if let Some(total) = r.total {
            assert!(r.last < total);
        }
        let total = r.total.map_or("*".to_string(), |t| t.to_string());
        let again = format!("bytes {}-{}/{total}", r.first, r.last);
        assert_eq!(parse_content_range(&again), Some(r));
    }
});
