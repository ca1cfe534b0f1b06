//! Content-Disposition parsing and name sanitizing on any header value: never a panic, and every name that comes out
//! is a single harmless path component that the user-name validator accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sdm::engine::filename::{from_content_disposition, sanitize, validate_user_name};

fuzz_target!(|data: &[u8]| {
    let value = String::from_utf8_lossy(data);
    let raw = from_content_disposition(&value);
    for name in [raw.as_deref().unwrap_or(""), &value] {
        let safe = sanitize(name);
        assert!(!safe.is_empty());
        assert!(!safe.contains(['/', '\\', '\0']), "{safe:?}");
        assert!(safe != "." && safe != "..");
        assert!(!safe.chars().any(char::is_control), "{safe:?}");
        assert!(safe.len() <= 255, "{} bytes", safe.len());
        assert!(
            validate_user_name(&safe).is_ok(),
            "{safe:?}: {:?}",
            validate_user_name(&safe)
        );
        assert_eq!(sanitize(&safe), safe, "sanitizing is idempotent");
    }
});
