//! `protocol::parse_request` on any frame body: it never panics; a request it accepts survives a round trip through
//! JSON unchanged; an error reply carries the request's id whenever the body had a numeric one.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match protocol::parse_request(data) {
        Ok(request) => {
            let again = serde_json::to_vec(&request).expect("a request serializes");
            assert_eq!(
                protocol::parse_request(&again).expect("its own encoding parses"),
                request
            );
        }
        Err(reply) => {
            assert!(!reply.ok);
            let error = reply.error.expect("an error reply has an error");
            assert!(!error.message.is_empty());
            if let Some(id) = reply.id {
                let v: serde_json::Value =
                    serde_json::from_slice(data).expect("an id came from valid JSON");
                assert_eq!(v["id"].as_u64(), Some(id));
            }
        }
    }
});
